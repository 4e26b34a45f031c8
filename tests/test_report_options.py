"""rank_report's options are declared once: the dataclasses, the function's defaults and the CLI agree."""

import dataclasses
import inspect

import pytest

from rankbias import rank_report
from rankbias.analysis.options import REPORT_OPTIONS, DataOptions, EmbeddingOptions, WeightOptions
from rankbias.cli import build_parser
from rankbias.errors import InvalidParameterError
from rankbias.framework.config import field_docs


def _analyze_actions():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {a.dest: a for a in sub.choices["analyze"]._actions}


def test_every_option_field_is_a_rank_report_argument_with_the_same_default():
    params = inspect.signature(rank_report).parameters
    for cls in REPORT_OPTIONS:
        for f in dataclasses.fields(cls):
            assert params[f.name].default == f.default, (cls.__name__, f.name)


def test_analyze_options_are_generated_from_the_fields():
    actions = _analyze_actions()
    for cls in REPORT_OPTIONS:
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            if "cli" not in f.metadata:
                assert f.name not in actions
                continue
            a = actions[f.name]
            assert a.option_strings == ["--" + f.name.replace("_", "-")]
            assert a.help == docs[f.name] and a.default == f.default
    assert actions["conv_reading"].choices == ["flatten", "taps", "pooled"]
    assert actions["embedding_reading"].choices == ["position", "sample"]


def test_analyze_command_line_becomes_rank_report_keywords():
    from rankbias.analysis.options import report_arguments

    args = build_parser().parse_args(
        [
            "analyze",
            "m.pt",
            "--layers",
            "--measures",
            "stable_rank",
            "--conv-reading",
            "taps",
            "--token-index",
            "0",
            "--centered",
            "--embeddings",
            "fc:input",
            "--batch-size",
            "8",
        ]
    )
    kw = report_arguments(args)
    assert kw == {
        "batch_size": 8,
        "layers": None,
        "measures": ["stable_rank"],
        "conv_reading": "taps",
        "attention_heads": False,
        "embeddings": ["fc:input"],
        "token_index": 0,
        "embedding_reading": "position",
        "centered": True,
    }
    assert set(kw) <= set(inspect.signature(rank_report).parameters)


def test_measure_command_shares_the_conv_reading_declaration():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    conv = next(a for a in sub.choices["measure"]._actions if a.dest == "conv_reading")
    assert conv.help == field_docs(WeightOptions)["conv_reading"]
    assert conv.choices == ["flatten", "taps", "pooled"]


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: WeightOptions(conv_reading="diagonal"), "conv_reading must be one of"),
        (lambda: WeightOptions(measures=["bogus"]), "unknown measure"),
        (
            lambda: EmbeddingOptions(embedding_reading="token"),
            "embedding_reading must be 'position' or 'sample'",
        ),
        (lambda: EmbeddingOptions(token_index=True), "token_index must be an int or None"),
        (lambda: DataOptions(batch_size=0), "batch_size must be a positive int"),
        (lambda: DataOptions(max_samples=-1), "max_samples must be a positive int or None"),
    ],
)
def test_options_refuse_bad_values_when_built(build, match):
    with pytest.raises(InvalidParameterError, match=match):
        build()
