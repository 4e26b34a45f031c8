"""The project's own error types. The CLI turns exactly these (and OS errors) into one
``rankbias: ...`` line and exit status 2; any other exception is a bug and keeps its traceback."""

from __future__ import annotations

__all__ = ["InvalidParameterError", "LoadError", "RankbiasError", "UnsupportedError"]


class RankbiasError(Exception):
    """Base class of every error rankbias raises on purpose."""


class InvalidParameterError(RankbiasError, ValueError, TypeError):
    """An argument whose value or type is not accepted (a measure name, a device, a config
    value, a list where a model was expected): the one type for every bad argument, as
    scikit-learn's ``InvalidParameterError`` (also a ``ValueError`` and a ``TypeError``, so
    ``except ValueError`` and ``except TypeError`` written for either still catch it). The
    message names the argument, the value and what is accepted. ``ConfigError`` (a config
    key or value) is a subclass."""


class LoadError(RankbiasError, ValueError):
    """A file, model or input could not be read as asked (corrupt, empty, wrong kind, untrusted)."""


class UnsupportedError(RankbiasError, ValueError):
    """A case rankbias refuses rather than answer wrongly (says what is accepted instead)."""


class MissingDependency(RankbiasError, ImportError):
    """An optional dependency a chosen feature needs is not installed."""


def optional_import(module: str, *, feature: str, extra: str, package: str | None = None):
    """``importlib.import_module(module)``, or a :class:`MissingDependency` that names the
    feature that needs it and the one command that installs it (the extra of rankbias,
    or the package itself). The one place every optional dependency is imported."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        package = package or module.partition(".")[0]
        raise MissingDependency(
            f"{feature} needs the {package} package, an optional dependency: "
            f"pip install 'rankbias[{extra}]' (or pip install {package})"
        ) from e

