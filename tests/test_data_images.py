import pytest
import torch

from rankbias.data.images import (
    ImageData,
    background_pixel_noise,
    load_image_dataset,
    stratified_sample,
)


def _sorted_by_class(n_per_class=50, k=10):
    labels = torch.arange(k).repeat_interleave(n_per_class)
    images = torch.rand(len(labels), 1, 4, 4)
    return ImageData(images, labels, [str(i) for i in range(k)], "toy")


@pytest.mark.parametrize("limit", [100, 101, 137, 250, 499])
def test_subset_is_stratified_even_on_class_sorted_data(limit):
    data = _sorted_by_class()
    sub = data.subset(limit=limit, seed=3)
    counts = torch.bincount(sub.labels, minlength=10)
    assert len(sub) == limit
    assert bool((counts > 0).all())
    assert int(counts.max() - counts.min()) <= 1


def test_subset_is_seeded_and_shuffled():
    data = _sorted_by_class()
    a, b, c = (data.subset(limit=100, seed=s) for s in (0, 0, 1))
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    # not grouped by class: the first ten hold more than one class
    assert len(set(a.labels[:10].tolist())) > 1


def test_subset_gives_a_small_class_all_it_has():
    labels = torch.tensor([0] * 5 + [1] * 100 + [2] * 100)
    idx = stratified_sample(labels, 105, seed=0)
    counts = torch.bincount(labels[idx], minlength=3)
    assert counts.tolist() == [5, 50, 50]
    assert len(set(idx.tolist())) == 105


def test_subset_with_classes_relabels_then_samples():
    data = _sorted_by_class()
    sub = data.subset(classes=[7, 2], limit=40, seed=0)
    assert sub.classes == ["7", "2"]
    assert torch.bincount(sub.labels).tolist() == [20, 20]
    with pytest.raises(ValueError, match="distinct"):
        data.subset(classes=[1, 1])
    with pytest.raises(ValueError, match="limit"):
        data.subset(limit=0)


def test_digits_limit_holds_every_class():
    d = load_image_dataset("digits", train=True).subset(limit=100, seed=0)
    counts = torch.bincount(d.labels, minlength=10)
    assert bool((counts >= 9).all()) and int(counts.max() - counts.min()) <= 1


def test_background_pixel_noise_touches_only_background():
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(3, 1, 6, 6)
    images[:, :, 2:4, 2:4] = 0.8
    noisy, clean = background_pixel_noise(images, [0.0, 1.0, 2.0], generator=g)
    assert noisy.shape == (3, 3, 1, 6, 6) and torch.equal(clean, images)
    assert torch.equal(noisy[0], images)
    obj = images > 0
    assert torch.equal(noisy[1][obj], images[obj]) and torch.equal(noisy[2][obj], images[obj])
    # common random numbers: the sigma=2 noise is twice the sigma=1 noise
    torch.testing.assert_close(noisy[2] - images, 2 * (noisy[1] - images))
    assert float((noisy[1] - images)[~obj].std()) == pytest.approx(1.0, abs=0.2)


def test_background_pixel_noise_refuses_images_without_background():
    with pytest.raises(ValueError, match="canvas"):
        background_pixel_noise(torch.rand(2, 3, 4, 4) + 0.1, [1.0])


def test_stratified_sample_and_subset_refuse_bad_arguments():
    with pytest.raises(ValueError, match="limit"):
        stratified_sample(torch.tensor([0, 1, 1]), -1)
    with pytest.raises(ValueError, match="non-empty"):
        _sorted_by_class().subset(classes=[])


def test_cifar_tar_is_extracted_once_per_tar_and_cached_per_root(tmp_path, monkeypatch, capsys):
    import tarfile

    from torchvision.io import encode_jpeg

    monkeypatch.setenv("RANKBIAS_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "src" / "cifar10-jpeg"
    for split in ("train", "test"):
        for c, cls in enumerate(("airplane", "automobile")):
            d = src / split / cls
            d.mkdir(parents=True)
            img = torch.full((3, 8, 8), 40 * (c + 1), dtype=torch.uint8)
            (d / "0000.jpg").write_bytes(bytes(encode_jpeg(img).numpy()))
    roots = []
    for name in ("a", "b"):
        root = tmp_path / name
        root.mkdir()
        with tarfile.open(root / "cifar10-jpeg.tar", "w") as tf:
            tf.add(src, arcname="cifar10-jpeg")
        roots.append(root)
    a = load_image_dataset("cifar10", train=True, root=roots[0])
    assert "extracting" in capsys.readouterr().err
    assert a.classes == ["airplane", "automobile"] and a.labels.tolist() == [0, 1]
    again = load_image_dataset("cifar10", train=True, root=roots[0])
    assert "extracting" not in capsys.readouterr().err and torch.equal(again.images, a.images)
    load_image_dataset("cifar10", train=True, root=roots[1])  # another tar: its own extraction
    assert "extracting" in capsys.readouterr().err
    assert not list((tmp_path / "cache").glob(".extract-*"))  # no half-extracted folder left


# ---------------------------------------------- dataset="auto": MNIST, downloaded, or digits


def _fake_mnist(raw, n_train=40, n_test=20, gz=False) -> dict[str, str]:
    """MNIST-shaped idx files (torchvision reads them for real) in ``raw``; name -> md5."""
    import gzip
    import hashlib
    import struct

    raw.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    md5 = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        imgs = torch.zeros(n, 28, 28, dtype=torch.uint8)
        imgs[:, 8:20, 8:20] = torch.randint(1, 256, (n, 12, 12), generator=g, dtype=torch.uint8)
        labels = (torch.arange(n) % 3).to(torch.uint8)
        for kind, arr, dims in (("images-idx3", imgs, 3), ("labels-idx1", labels, 1)):
            blob = struct.pack(">BBBB", 0, 0, 8, dims) + struct.pack(f">{arr.dim()}I", *arr.shape)
            blob += arr.numpy().tobytes()
            name = f"{split}-{kind}-ubyte" + (".gz" if gz else "")
            data = gzip.compress(blob) if gz else blob
            (raw / name).write_bytes(data)
            md5[name] = hashlib.md5(data).hexdigest()
    return md5


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on exit: connecting is refused at once


def test_auto_falls_back_to_digits_when_no_mirror_answers(tmp_path, monkeypatch):
    import socket

    from torchvision import datasets

    from rankbias.data import images
    from rankbias.data.images import choose_mnist_or_digits

    monkeypatch.delenv("RANKBIAS_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # the default data root ./data: absent
    monkeypatch.setattr(datasets.MNIST, "mirrors", [f"http://127.0.0.1:{_closed_port()}/"])
    c = choose_mnist_or_digits(download=True)
    assert c.name == "digits" and c.fallback
    assert "no download mirror reachable" in c.reason and str(tmp_path / "data") in c.reason
    assert c.fix.startswith("`RANKBIAS_DATA=/path/to/datasets make demo`") and "internet" in c.fix
    assert not (tmp_path / "data").exists()  # nothing written where nothing was fetched
    # a server that accepts and never answers: the probe gives up after PROBE_TIMEOUT_S, no hang
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        monkeypatch.setattr(datasets.MNIST, "mirrors", [f"http://127.0.0.1:{silent.getsockname()[1]}/"])
        monkeypatch.setattr(images, "PROBE_TIMEOUT_S", 0.2)
        c = choose_mnist_or_digits(tmp_path / "root", download=True)
    assert c.name == "digits" and "within 0.2 s" in c.reason and "timed out" in c.reason
    # download off: no network at all, and the fix says how to turn it on
    off = choose_mnist_or_digits(tmp_path / "root", download=False)
    assert off.name == "digits" and "download is off" in off.reason and "--set download=true" in off.fix
    with pytest.raises(images.DatasetNotFoundError, match="not downloaded: no download mirror"):
        load_image_dataset("mnist", root=tmp_path / "root", download=True)


def test_auto_downloads_mnist_with_torchvision_from_a_mirror(tmp_path, monkeypatch):
    import functools
    import http.server
    import threading

    from torchvision import datasets

    from rankbias.data.images import choose_mnist_or_digits

    served = tmp_path / "mirror"
    md5 = _fake_mnist(served, gz=True)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # the first mirror refuses, the second serves: torchvision's own mirror loop, for real
        monkeypatch.setattr(datasets.MNIST, "mirrors", [f"http://127.0.0.1:{_closed_port()}/",
                                                        f"http://127.0.0.1:{server.server_address[1]}/"])
        monkeypatch.setattr(datasets.MNIST, "resources", list(md5.items()))
        c = choose_mnist_or_digits(tmp_path / "root", download=True)
    finally:
        server.shutdown()
        server.server_close()
    assert c.name == "mnist" and not c.fallback and "downloaded into" in c.reason
    test = load_image_dataset("mnist", train=False, root=tmp_path / "root")
    assert test.images.shape == (20, 1, 28, 28) and test.labels.tolist()[:4] == [0, 1, 2, 0]
    # present now: found, no network needed
    assert "found under" in choose_mnist_or_digits(tmp_path / "root", download=True).reason


def test_auto_takes_mnist_from_the_data_root_of_the_environment(tmp_path, monkeypatch):
    from rankbias.data.images import choose_mnist_or_digits

    _fake_mnist(tmp_path / "MNIST" / "raw")
    monkeypatch.setenv("RANKBIAS_DATA", str(tmp_path))
    c = choose_mnist_or_digits(download=False)
    assert (c.name, c.fallback, c.fix) == ("mnist", False, "")
    assert c.reason == f"dataset=auto: MNIST found under {tmp_path.resolve()}"


def test_fallback_run_leads_its_reports_with_the_fix_and_is_redone_once_mnist_is_there(tmp_path, monkeypatch):
    from torchvision import datasets

    import rankbias
    from rankbias.run_reports import write_reproduce_report

    monkeypatch.setattr(datasets.MNIST, "mirrors", [f"http://127.0.0.1:{_closed_port()}/"])
    root = tmp_path / "root"
    cfg = {"data_root": str(root), "download": True, "sigmas": [0.0, 0.5], "seeds": [0], "steps": 4,
           "log_every": 2, "n_train": 20, "n_test": 10}
    run = tmp_path / "run"
    s = rankbias.run_experiment("noise-robustness-images", cfg, out_dir=run)
    assert s["data"]["dataset"] == "digits" and s["data"]["dataset_fallback"] is True
    (notice,) = s["notices"]
    assert "instead of MNIST" in notice and "`RANKBIAS_DATA=/path/to/datasets make demo`" in notice
    md = (run / "report.md").read_text()
    assert md.index("**Notice.**") < md.index("**Claim.**") and "RANKBIAS_DATA=/path/to/datasets" in md
    entry = {"name": "noise-robustness-images", "status": "done", "summary": s, "claim": "c", "verdict": "x",
             "run_dir": str(run), "description": ""}
    write_reproduce_report(tmp_path / "rep", [entry], {"preset": "quick"})
    top = (tmp_path / "rep" / "report.md").read_text().split("## noise-robustness-images")[0]
    assert "> **Notice (noise-robustness-images).**" in top and "RANKBIAS_DATA=/path/to/datasets make demo" in top
    page = (tmp_path / "rep" / "report" / "index.html").read_text()
    assert page.count("class='notice'") == 2 and "<code>RANKBIAS_DATA=/path/to/datasets make demo</code>" in page
    # the fix works: the same config, rerun once MNIST is at the data root, is not the cached digits run
    _fake_mnist(root / "MNIST" / "raw")
    again = rankbias.run_experiment("noise-robustness-images", cfg, out_dir=run)
    assert again["data"]["dataset"] == "mnist" and "notices" not in again
    assert rankbias.run_experiment("noise-robustness-images", cfg, out_dir=run) == again  # cached now
