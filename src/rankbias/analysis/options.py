"""The options of :func:`rankbias.analysis.rank_report`, grouped and declared once.

Three small frozen dataclasses: which weight rows and how they are read
(:class:`WeightOptions`), which embeddings and how they are read
(:class:`EmbeddingOptions`), how data is batched (:class:`DataOptions`). Each
checks its values when built. ``rankbias analyze`` and ``rankbias measure``
generate their options from the fields made with
:func:`rankbias.framework.arguments.cli_field`, whose help is the docstring
under the field.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_args

from rankbias.analysis.layers import ConvReading, EmbeddingReading, LayerSelector
from rankbias.analysis.weights import check_conv_reading
from rankbias.framework.arguments import add_arguments, arguments_of, cli_field
from rankbias.framework.config import ConfigError
from rankbias.measures import _check_measure_names

__all__ = [
    "REPORT_OPTIONS",
    "DataOptions",
    "EmbeddingOptions",
    "WeightOptions",
    "add_report_arguments",
    "report_arguments",
]


def _check_positive(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{name} must be a positive int{' or None' if allow_none else ''}, got {value!r}"
        )


@dataclass(frozen=True)
class WeightOptions:
    """Which weight rows, and how a weight is read as a matrix."""

    layers: LayerSelector = cli_field(None, nargs="*", empty_is_none=True)
    """layer names or glob patterns (default all)"""
    measures: Sequence[str] | None = cli_field(None, nargs="*", empty_is_none=True)
    """measures (default all)"""
    conv_reading: ConvReading = cli_field("flatten")
    """a conv weight as out x in*kh*kw (flatten), per tap (mean over taps), or pooled (WeightWatcher's:
    one spectrum of all taps)"""
    attention_heads: bool = cli_field(False)
    """one Q, K, V row per attention head"""

    def __post_init__(self) -> None:
        object.__setattr__(self, "measures", _check_measure_names(self.measures))
        check_conv_reading(self.conv_reading)


@dataclass(frozen=True)
class EmbeddingOptions:
    """Which module inputs/outputs are measured on data, and how they are read."""

    embeddings: str | Sequence[str] | None = cli_field(
        None, nargs="*", metavar="MODULE[:input|:output]"
    )
    """also measure these modules' inputs or outputs (names or globs, e.g. fc:input)"""
    token_index: int | None = cli_field(None)
    """keep only this token of (N, T, d) outputs (0: the CLS token)"""
    embedding_reading: EmbeddingReading = cli_field("position")
    """conv outputs per position ((N*H*W) x C) or per sample (N x C*H*W)"""
    centered: bool = cli_field(False)
    """remove the mean embedding before the kernel (default: raw K = Z Z^T)"""
    embedding_measures: Sequence[str] | None = None
    """measures of the embedding kernels (default: the weights')"""
    max_embedding_dim: int = 4096
    """embeddings wider than this get an error note instead of a spectrum"""
    include_data: bool = True
    """add a row with the rank of the flattened inputs"""

    def __post_init__(self) -> None:
        if self.embedding_measures is not None:
            object.__setattr__(
                self, "embedding_measures", _check_measure_names(self.embedding_measures)
            )
        if self.embedding_reading not in get_args(EmbeddingReading):
            raise ConfigError(
                f"embedding_reading must be 'position' or 'sample', got {self.embedding_reading!r}"
            )
        if self.token_index is not None and (
            isinstance(self.token_index, bool) or not isinstance(self.token_index, int)
        ):
            raise ConfigError(f"token_index must be an int or None, got {self.token_index!r}")


@dataclass(frozen=True)
class DataOptions:
    """How inputs are batched."""

    batch_size: int = cli_field(256)
    """inputs per forward pass"""
    max_samples: int | None = None
    """use only the first max_samples inputs"""

    def __post_init__(self) -> None:
        _check_positive("batch_size", self.batch_size)
        _check_positive("max_samples", self.max_samples, allow_none=True)


#: The option groups of :func:`rank_report`, in the order their options are listed.
REPORT_OPTIONS = (DataOptions, WeightOptions, EmbeddingOptions)


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the command-line options of every group of :data:`REPORT_OPTIONS` to ``parser``."""
    for cls in REPORT_OPTIONS:
        add_arguments(parser, cls)


def report_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`rank_report` that :func:`add_report_arguments` added."""
    return {k: v for cls in REPORT_OPTIONS for k, v in arguments_of(args, cls).items()}
