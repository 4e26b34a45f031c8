"""The two papers' own models, data and trainers, in one namespace.

What a reader of the papers reproduces by hand, kept apart from the toolkit's
public face (``rankbias``: the measures, ``rank_report``, ``RankTracker``,
``overparameterize``, running experiments):

- paper 1 (noise robustness of two-layer CNNs): :class:`PatchData` and
  :func:`make_patch_data` (the patch data model), :class:`TwoLayerCNN` with the
  :class:`HuberizedReLU` activation, :func:`fit_two_layer_cnn`, and the image
  noise models :func:`noisy_canvas`, :func:`background_pixel_noise`,
  :func:`extract_patches`, :func:`load_image_dataset`;
- paper 2 (depth and rank): :class:`DeepLinear`, :func:`fit_deep_linear` and the
  gradient-free :func:`fit_random_search`.

Every name is loaded on first use, so ``import rankbias.papers`` costs nothing.

Examples
--------
>>> from rankbias.papers import make_patch_data, fit_two_layer_cnn  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rankbias._lazy import lazy_getattr

# public name -> module that defines it
_WHERE = {
    "PatchData": "rankbias.data.patches",
    "make_patch_data": "rankbias.data.patches",
    "HuberizedReLU": "rankbias.models.two_layer_cnn",
    "huberized_relu": "rankbias.models.two_layer_cnn",
    "TwoLayerCNN": "rankbias.models.two_layer_cnn",
    "fit_two_layer_cnn": "rankbias.fit.two_layer_cnn",
    "background_pixel_noise": "rankbias.data.images",
    "extract_patches": "rankbias.data.images",
    "load_image_dataset": "rankbias.data.images",
    "noisy_canvas": "rankbias.data.images",
    "DeepLinear": "rankbias.models.deep_linear",
    "fit_deep_linear": "rankbias.fit.deep_linear",
    "fit_random_search": "rankbias.fit.random_search",
}

if TYPE_CHECKING:  # pragma: no cover
    from rankbias.data.images import (
        background_pixel_noise,
        extract_patches,
        load_image_dataset,
        noisy_canvas,
    )
    from rankbias.data.patches import PatchData, make_patch_data
    from rankbias.fit.deep_linear import fit_deep_linear
    from rankbias.fit.random_search import fit_random_search
    from rankbias.fit.two_layer_cnn import fit_two_layer_cnn
    from rankbias.models.deep_linear import DeepLinear
    from rankbias.models.two_layer_cnn import HuberizedReLU, TwoLayerCNN, huberized_relu

__all__ = [
    "DeepLinear",
    "HuberizedReLU",
    "PatchData",
    "TwoLayerCNN",
    "background_pixel_noise",
    "extract_patches",
    "fit_deep_linear",
    "fit_random_search",
    "fit_two_layer_cnn",
    "huberized_relu",
    "load_image_dataset",
    "make_patch_data",
    "noisy_canvas",
]


__getattr__ = lazy_getattr(__name__, globals(), _WHERE)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
