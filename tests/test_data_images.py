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
