"""Linear over-parameterisation: expand any model's Linear/Conv2d (and Hugging Face
Conv1D) layers into products of linear maps, train, then collapse exactly.

:mod:`rankbias.overparam.layers` holds the expanded layers, :mod:`rankbias.overparam.factorize`
the exact factorisations (init="preserve"),
:mod:`rankbias.overparam.model` the model-level functions and the cases they refuse,
:mod:`rankbias.overparam._computed` the read-only tensor an expanded layer's ``weight`` is.
See docs/overparam.md.
"""

from rankbias.overparam.layers import OverparamConv1D, OverparamConv2d, OverparamLinear
from rankbias.overparam.model import collapse, expanded_modules, overparameterize, set_forward_mode

__all__ = [
    "OverparamConv1D",
    "OverparamConv2d",
    "OverparamLinear",
    "collapse",
    "expanded_modules",
    "overparameterize",
    "set_forward_mode",
]
