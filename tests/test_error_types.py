"""One error type per kind of mistake: a bad argument anywhere in the library is an
InvalidParameterError (also a ValueError and a TypeError, as scikit-learn's), and the CLI
shows it as one line with exit status 2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from rankbias import cli
from rankbias.errors import InvalidParameterError, RankbiasError, UnsupportedError
from rankbias.framework.config import ConfigError


def _calls():
    from rankbias.analysis.layers import weight_entries
    from rankbias.data.matrix_tasks import make_task
    from rankbias.intrinsic import intrinsic_dimension
    from rankbias.measures import KernelSpectrum, rank_measures
    from rankbias.models.deep_linear import DeepLinear
    from rankbias.models.mlp import MLP
    from rankbias.models.two_layer_cnn import TwoLayerCNN, huberized_relu
    from rankbias.overparam import overparameterize
    from rankbias.verdicts import binomial_lower_bound, t_interval, verdict

    return {
        "huberized_relu q": lambda: huberized_relu(torch.zeros(2), q=0.5),
        "TwoLayerCNN dim": lambda: TwoLayerCNN(dim=0, filters=1),
        "MLP widths": lambda: MLP(0),
        "DeepLinear depths": lambda: DeepLinear([], 3),
        "make_task kind": lambda: make_task(4, "bogus", n_train=2, n_test=2),
        "overparameterize depth": lambda: overparameterize(nn.Linear(2, 2), depth=0),
        "overparameterize model (a type)": lambda: overparameterize("a string"),
        "rank_measures input (a type)": lambda: rank_measures("a string"),
        "KernelSpectrum dim": lambda: KernelSpectrum(dim=-1),
        "weight_entries model (a type)": lambda: weight_entries([1, 2]),
        "intrinsic_dimension n_neighbors": lambda: intrinsic_dimension(np.eye(5), n_neighbors=1),
        "t_interval confidence": lambda: t_interval([1.0, 2.0], confidence=1.5),
        "verdict status": lambda: verdict("maybe", "", ""),
        "binomial_lower_bound counts": lambda: binomial_lower_bound(11, 10),
    }


@pytest.mark.parametrize("case", sorted(_calls()))
def test_a_bad_argument_is_an_invalid_parameter_error(case):
    with pytest.raises(InvalidParameterError) as info:
        _calls()[case]()
    # still what callers wrote `except ValueError` / `except TypeError` for
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)
    assert str(info.value)


def test_the_error_types_nest():
    assert issubclass(ConfigError, InvalidParameterError) and issubclass(
        InvalidParameterError, RankbiasError
    )
    assert not issubclass(UnsupportedError, InvalidParameterError)


def test_an_empty_kernel_spectrum_is_refused_as_unsupported():
    from rankbias.measures import KernelSpectrum

    with pytest.raises(UnsupportedError, match="empty"):
        KernelSpectrum().measures()


def test_a_bad_argument_found_during_a_run_is_one_cli_line(tmp_path, capsys):
    # the ViT's patches must tile the canvas: known only once the data is loaded, so the
    # config cannot refuse it; it was a plain ValueError and a traceback
    rc = cli.main(
        [
            "run",
            "noise-robustness-deep",
            "--set",
            "models=vit",
            "--set",
            "canvas=18",
            "--set",
            "patch_size=4",
            "--set",
            "train_limit=40",
            "--set",
            "test_limit=20",
            "--set",
            "seeds=0",
            "--set",
            "noise_models=canvas",
            "--set",
            "sigmas=0,1",
            "--set",
            "intrinsic_dimension=false",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0] == (
        "rankbias: error: vit: image side 18 is not a multiple of patch_size 4; "
        "accepted: a patch_size that divides the side"
    )
