"""Experiment configs: frozen dataclasses, a docstring under every field
(CleanRL style), validated on construction.

Type checking and coercion follow the field annotations (int, float, bool, str,
Literal[...], list[...] / tuple[...], X | None), so a config built from a JSON
file or from CLI strings (``--set sigmas=0,0.5,1``) is checked the same way as
one built in Python. Errors name the field, the bad value and what is accepted.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import json
import textwrap
import types
import typing
from typing import Any, Literal, get_args, get_origin

from rankbias.errors import InvalidParameterError

if typing.TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "Config",
    "ConfigError",
    "DeviceField",
    "ThreadsField",
    "check_device_available",
    "did_you_mean",
    "field_docs",
    "parse_device",
    "parse_value",
]


class ConfigError(InvalidParameterError):
    """A config key or value that is not accepted (an :class:`InvalidParameterError`, so
    ``except InvalidParameterError`` catches every bad argument, config or not)."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) if isinstance(tp, type) else str(tp).replace("typing.", "")


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    """`` (did you mean 'depths'?)`` for a near miss of ``choices`` (difflib), else ``""``."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The string literal under each dataclass field, by field name (inherited too)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            src = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(src).body[0].body
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def parse_value(text: str) -> Any:
    """A CLI value: JSON if it parses (``[1,2]``, ``0.5``, ``true``, ``null``),
    a comma list (``0,0.5,1`` -> [0, 0.5, 1]), else the string itself."""
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    if "," in text:
        return [parse_value(t) for t in text.split(",") if t.strip()]
    return text


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (list, tuple, typing.Sequence):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"a list of {_describe(args[0]) if args else 'values'}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    if _is_config(tp):
        return f"a mapping of {tp.__name__}'s keys"
    return getattr(tp, "__name__", str(tp))


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Config)


def _coerce_config(value: Any, tp: type[Config], name: str, bad: ConfigError) -> Config:
    """A nested config field: an instance of ``tp``, or a mapping (or its JSON text) of its
    keys; errors name the field by its dotted path (``train.lr``)."""
    if isinstance(value, tp):
        return value
    if isinstance(value, str):
        value = parse_value(value)
    if not isinstance(value, typing.Mapping):
        raise bad
    values = tp.merged(value)
    tp.check_keys(values, prefix=f"{name}.")
    try:
        return tp(**values)
    except ConfigError as e:
        raise ConfigError(f"{name}.{e}") from None


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Check ``value`` against annotation ``tp``; return it in canonical form."""
    origin = get_origin(tp)
    bad = ConfigError(f"{name}: got {value!r} ({type(value).__name__}); expected {_describe(tp)}")
    if tp is Any:
        return value
    if _is_config(tp):
        return _coerce_config(value, tp, name, bad)
    if origin in (typing.Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _coerce(value, arg, name)
            except ConfigError:
                continue
        raise bad
    if tp is type(None):
        if value is None:
            return None
        raise bad
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise bad
    if origin in (list, tuple):
        if isinstance(value, str) and origin is not None:
            value = parse_value(value)
            if not isinstance(value, list):
                value = [value]
        if not isinstance(value, list | tuple):
            value = [value]  # a single value for a list field
        args = [a for a in get_args(tp) if a is not Ellipsis] or [Any]
        return tuple(_coerce(v, args[0], f"{name}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        raise bad
    if tp is int or tp is float:
        # a bool is an int to Python, never a number to a config; an int field takes an
        # integral float (2.0 from JSON), not 2.5
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int) or (isinstance(value, float) and (tp is float or value.is_integer())):
            return tp(value)
        if isinstance(value, str):
            try:
                return tp(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    return value


# Field names the framework itself reads, with the one type each must have. A config
# that declares one opts into that behaviour; the registry refuses another type
# (Config.contract_problems), so a misspelt or mistyped field is never silently ignored.
RESERVED_FIELDS: dict[str, tuple[tuple[Any, ...], str]] = {
    "device": ((str,), "the torch device the run computes on, checked to exist before it starts"),
    "num_threads": ((int | None,), "torch's thread count, set by the runner for the run"),
    "seed": ((int,), "where a sweep's --seeds go: one run per seed"),
    "seeds": ((list[int], tuple[int, ...]), "where a sweep's --seeds go: one run per seed, or all in one"),
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of every experiment config.

    Subclasses are ``@dataclass(frozen=True)`` with a docstring under each
    field and override :meth:`validate` for checks beyond the types (ranges,
    relations between fields), raising :class:`ConfigError`.
    """

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _coerce(getattr(self, f.name), hints[f.name], f.name)
            object.__setattr__(self, f.name, value)
        self._check_device_syntax()
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for values the types allow but the experiment does not."""

    @classmethod
    def contract_problems(cls) -> list[str]:
        """What this config breaks of the registry's contract (empty: nothing): a field
        without a docstring, a :data:`RESERVED_FIELDS` name of another type, or both
        ``seed`` and ``seeds``."""
        docs = field_docs(cls)
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        try:
            inspect.getsource(cls)
        except (OSError, TypeError):
            return [f"the source of {cls.__qualname__} cannot be read (made by exec?), so neither can "
                    "its fields' docstrings; accepted: a config class defined in a file or a notebook cell"]
        problems = [f"field {n!r} has no docstring (accepted: a string literal under the field)"
                    for n in names if not docs.get(n)]
        for n in names:
            if n in RESERVED_FIELDS and hints[n] not in RESERVED_FIELDS[n][0]:
                accepted = " or ".join(_type_name(tp) for tp in RESERVED_FIELDS[n][0][:1])
                problems.append(f"field {n!r} is {_type_name(hints[n])}; the framework reads it as "
                                f"{RESERVED_FIELDS[n][1]} (accepted type: {accepted})")
        if "seed" in names and "seeds" in names:
            problems.append("fields 'seed' and 'seeds' both exist (accepted: one of them)")
        return problems

    def framework_value(self, name: str) -> Any:
        """The value of the :data:`RESERVED_FIELDS` field ``name``; None where this config
        has no such field."""
        if name not in RESERVED_FIELDS:
            raise InvalidParameterError(f"{name!r} is not a framework field; accepted: {', '.join(RESERVED_FIELDS)}")
        return getattr(self, name) if name in {f.name for f in dataclasses.fields(self)} else None

    def _check_device_syntax(self) -> None:
        # Availability is checked where the run executes (run_experiment): a sweep
        # may build cuda configs on a CPU-only driver for GPU workers.
        device = self.framework_value("device")
        if isinstance(device, str):
            parse_device(device)

    # helpers for validate()
    def _require(self, cond: bool, name: str, accepted: str) -> None:
        if not cond:
            raise ConfigError(f"{name}: got {getattr(self, name)!r}; accepted: {accepted}")

    @classmethod
    def accepted(cls, prefix: str = "") -> str:
        """One line per field: name, type, default and docstring; a nested config's fields
        follow it, by their dotted names (``train.lr``)."""
        hints = typing.get_type_hints(cls)
        docs = field_docs(cls)
        lines = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else "required"
            )
            name, tp = prefix + f.name, hints[f.name]
            if _is_config(tp):
                lines += [f"  {name} ({_describe(tp)}): {docs.get(f.name, '')}", tp.accepted(f"{name}.")]
                continue
            lines.append(f"  {name} ({_describe(tp)}, default {default!r}): {docs.get(f.name, '')}")
        return "\n".join(lines)

    @classmethod
    def _nested(cls) -> dict[str, type[Config]]:
        """The fields that hold a config of their own, by name."""
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls) if _is_config(hints[f.name])}

    @classmethod
    def check_keys(cls, keys: typing.Iterable[str], label: str | None = None, prefix: str = "") -> None:
        """ConfigError naming every key that is not a field, with a "did you mean" for
        near misses and the accepted keys, on one line (``--show-config`` has their docs).
        A dotted key (``train.lr``) is checked against the nested config's fields."""
        names, nested = [f.name for f in dataclasses.fields(cls)], cls._nested()
        unknown = []
        for key in dict.fromkeys(keys):
            head, dot, rest = key.partition(".")
            if head in nested and dot:
                nested[head].check_keys([rest], label, f"{prefix}{head}.")
            elif key not in names:
                unknown.append(key)
        if unknown:
            full = [prefix + n for n in names]
            which = ", ".join(repr(prefix + k) + did_you_mean(prefix + k, full) for k in unknown)
            raise ConfigError(
                f"{label or cls.__name__}: unknown key(s) {which}; accepted keys: "
                f"{', '.join(full)} (`rankbias run NAME --show-config` describes each)"
            )

    @classmethod
    def merged(cls, *layers: typing.Mapping[str, Any]) -> dict[str, Any]:
        """The values of ``layers`` (defaults, preset, config file, ``--set``), later ones
        winning. A nested config's values merge key by key, whether given as a mapping
        (``{"train": {"lr": 0.1}}``) or as a dotted key (``train.lr``): a layer that sets one
        of its keys keeps the others of the layers below."""
        nested, out = cls._nested(), {}
        for layer in layers:
            for key, value in layer.items():
                head, dot, rest = str(key).partition(".")
                if head in nested and (dot or isinstance(value, typing.Mapping)):
                    value = {rest: value} if dot else value
                    below = out.get(head, {})
                    below = below.to_dict() if isinstance(below, Config) else below
                    if isinstance(below, typing.Mapping):  # else: a bad value, replaced
                        value = nested[head].merged(below, value)
                    key = head
                out[key] = value
        return out

    @classmethod
    def from_dict(cls, values: typing.Mapping[str, Any]):
        """Build from a mapping (dotted keys reach nested configs); an unknown key, or a
        field without a default left out, is a ConfigError listing the accepted ones."""
        values = cls.merged(values)
        cls.check_keys(values)
        missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in values
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:  # else a bare TypeError from __init__
            raise ConfigError(f"{cls.__name__}: required key(s) {', '.join(map(repr, missing))} not "
                              "given; accepted: a value for each (`--set KEY=VALUE`)")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The values as JSON-ready data: lists for sequences, a mapping for a nested config."""

        def plain(v):
            if isinstance(v, tuple | list):
                return [plain(x) for x in v]
            return v.to_dict() if isinstance(v, Config) else v

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def replace(self, **changes):
        return self.from_dict(self.merged(self.to_dict(), changes))


# The framework fields most experiments share (RESERVED_FIELDS), each declared once: a
# config opts in by subclassing, e.g. ``class MyConfig(DeviceField, ThreadsField)``.
# kw_only: a subclass may then declare fields without a default (required ones) after
# these defaulted ones; fields() order, and so to_dict and the config hash, is unchanged.
@dataclasses.dataclass(frozen=True, kw_only=True)
class DeviceField(Config):
    """A config with the framework's ``device`` field."""

    device: str = "cpu"
    """torch device, e.g. "cpu" or "cuda"."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ThreadsField(Config):
    """A config with the framework's ``num_threads`` field."""

    num_threads: int | None = None
    """CPU threads for torch during the run (null: leave torch's setting)."""


def parse_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)``, with a ConfigError naming what is accepted for a string
    torch cannot parse ('gpu0'), where torch raises a bare RuntimeError."""
    import torch

    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(
            f"device: got {device!r}; accepted: a torch device string such as 'cpu', 'cuda' or 'cuda:1'"
        ) from None


def check_device_available(device: str) -> None:
    """ConfigError unless ``device`` is a device string that can run here (not 'gpu0',
    not 'cuda' without a GPU)."""
    import torch

    kind = parse_device(device).type
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device: got {device!r}, but CUDA is not available on this machine; "
            "accepted here: 'cpu'"
        )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device: got {device!r}, but MPS is not available; accepted here: 'cpu'")
