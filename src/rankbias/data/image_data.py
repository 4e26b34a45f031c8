"""A labelled image set (:class:`ImageData`) and its seeded stratified subsets: the type
:mod:`rankbias.data.images` and :mod:`rankbias.data.packed` both return, kept in a leaf
module so that neither imports the other."""

from __future__ import annotations

import dataclasses

import torch

from rankbias.errors import InvalidParameterError

__all__ = ["ImageData", "stratified_sample"]


@dataclasses.dataclass
class ImageData:
    images: torch.Tensor
    """(N, C, H, W) float32 in [0, 1]."""
    labels: torch.Tensor
    """(N,) int64."""
    classes: list[str]
    """Class names, indexed by label."""
    name: str
    """Dataset name."""

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(
        self, classes: list[int] | None = None, limit: int | None = None, seed: int = 0
    ) -> ImageData:
        """Keep only ``classes`` (relabelled 0..k-1 in the given order), then a sample of ``limit``.

        The sample is random (``seed``) and stratified: every class gets ``limit // k`` or
        one more image (a class with fewer images gives all it has, the rest is spread over
        the others), in a shuffled order. Never the first ``limit``: dataset files are often
        sorted by class (the CIFAR-10 JPEG folders are), and those would be one class.
        """
        images, labels, names = self.images, self.labels, self.classes
        if classes is not None:
            bad = [c for c in classes if not 0 <= c < len(self.classes)]
            if bad:
                raise InvalidParameterError(
                    f"classes {bad} not in {self.name} (0..{len(self.classes) - 1})"
                )
            if len(set(classes)) != len(classes):
                raise InvalidParameterError(f"classes must be distinct, got {classes}")
            if not classes:
                raise InvalidParameterError(
                    f"classes must be a non-empty list of class indices of {self.name}"
                )
            wanted = torch.tensor(classes, dtype=torch.long)
            keep = torch.isin(labels, wanted)
            images, old = images[keep], labels[keep]
            remap = torch.full((len(self.classes),), -1, dtype=torch.long)
            remap[wanted] = torch.arange(len(classes))
            labels = remap[old]
            names = [self.classes[c] for c in classes]
        if limit is not None:
            if limit < 1:
                raise InvalidParameterError(f"limit must be an int >= 1 or None, got {limit}")
            idx = stratified_sample(labels, limit, seed)
            images, labels = images[idx], labels[idx]
        return ImageData(images, labels, names, self.name)


def stratified_sample(labels: torch.Tensor, limit: int, seed: int = 0) -> torch.Tensor:
    """Indices of a seeded random sample of ``min(limit, N)`` labels, as balanced over the
    classes present as their sizes allow (counts differ by at most one otherwise), shuffled."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise InvalidParameterError(f"limit must be an int >= 0, got {limit!r}")
    g = torch.Generator().manual_seed(seed)
    present = torch.unique(labels)
    pools = [torch.nonzero(labels == c).flatten() for c in present.tolist()]
    pools = [p[torch.randperm(len(p), generator=g)] for p in pools]
    want = min(limit, len(labels))
    take = [0] * len(pools)
    # water-filling: hand out one image per class in turn (random class order), skipping
    # the classes that have run out
    order = torch.randperm(len(pools), generator=g).tolist()
    left = want
    while left:
        for i in order:
            if left and take[i] < len(pools[i]):
                take[i] += 1
                left -= 1
    idx = torch.cat([p[:t] for p, t in zip(pools, take, strict=True)])
    return idx[torch.randperm(len(idx), generator=g)]
