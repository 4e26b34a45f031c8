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
