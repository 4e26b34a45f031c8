"""noise-robustness-deep's data: the seeded subsets, the two noise models and the data's ranks
and intrinsic dimension (the experiment: :mod:`noise_robustness_deep`).

Every function takes the experiment's ``DeepNoiseConfig``, typed here as its base
:class:`~rankbias.framework.config.Config`: the experiment module imports this one, so
naming its class here would make the two import each other."""

from __future__ import annotations

import torch

from rankbias.errors import InvalidParameterError
from rankbias.framework.config import Config

__all__ = ["add_noise", "canvas_side", "data_measures", "intrinsic", "load_split"]


def load_split(cfg: Config, train: bool, seed: int):
    """The seeded stratified subset of one split: images (N, C, h, w), labels, class names."""
    from rankbias.data.images import load_image_dataset

    data = load_image_dataset(cfg.dataset, train=train, root=cfg.data_root, download=cfg.download)
    limit = cfg.train_limit if train else cfg.test_limit
    sub = data.subset(classes=list(cfg.classes) if cfg.classes is not None else None, limit=limit,
                      seed=seed)
    return sub.images, sub.labels, sub.classes


def canvas_side(cfg: Config, image_side: int) -> int:
    side = cfg.canvas if cfg.canvas is not None else 2 * image_side
    if side < image_side:
        raise InvalidParameterError(f"canvas {side} is smaller than the {cfg.dataset} images ({image_side})")
    return side


def add_noise(cfg: Config, noise: str, images: torch.Tensor, sigma: float,
              seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy, clean) images of one noise level. The generator is seeded by ``seed``
    alone, so every sigma scales the same noise draw (common random numbers)."""
    from rankbias.data.images import background_pixel_noise, noisy_canvas

    gen = torch.Generator().manual_seed(int(seed))
    if noise == "canvas":
        noisy, clean = noisy_canvas(images, canvas_side(cfg, images.shape[-1]), [sigma], generator=gen)
    else:
        noisy, clean = background_pixel_noise(images, [sigma], generator=gen)
    return noisy[0], clean


def data_measures(cfg: Config, x: torch.Tensor, id_seed: int) -> dict[str, float]:
    """Ranks of images x (N, C, H, W): the pixel matrix (N x CHW) and the patch matrix
    (N P x C p p, non-overlapping p x p patches), and the pixel matrix's intrinsic dimension."""
    from rankbias.data.images import extract_patches
    from rankbias.measures import rank_measures

    X = x.reshape(len(x), -1)
    out = {f"pixel_{k}": float(v) for k, v in rank_measures(X, ["stable_rank", "effective_rank"]).items()}
    if x.shape[-1] >= cfg.patch_size and x.shape[-2] >= cfg.patch_size:
        P = extract_patches(x, cfg.patch_size)
        out["patch_stable_rank"] = float(rank_measures(P.reshape(-1, P.shape[-1]), ["stable_rank"])["stable_rank"])
    out.update(intrinsic(cfg, X, id_seed, "id"))
    return out


def intrinsic(cfg: Config, X: torch.Tensor, seed: int, prefix: str) -> dict[str, float]:
    """TwoNN and MLE intrinsic dimension of the rows of X, or {} when they are not wanted or
    scikit-dimension is missing (the report says which)."""
    import rankbias.intrinsic as idmod

    if not cfg.intrinsic_dimension or not idmod.available():
        return {}
    try:
        d = idmod.intrinsic_dimension(X, n_neighbors=cfg.id_neighbors, max_samples=cfg.id_samples,
                                      seed=seed)
    except ValueError:  # too few distinct points (a collapsed embedding): no estimate
        return {f"{prefix}_{k}": float("nan") for k in idmod.ESTIMATORS}
    return {f"{prefix}_{k}": v for k, v in d.items()}
