"""The one error type for values a user chose badly (a config field, a data directory).

The command line turns a :class:`ConfigError` into a short message and exit code 2, with no
traceback; every other exception is a bug or a runtime failure and keeps its traceback.
"""

from __future__ import annotations

from typing import Collection, Iterable, Optional


class ConfigError(ValueError):
    """A user-chosen value is invalid.

    Args:
        field: the dotted config field, e.g. ``"model.activation"`` or ``"data.root"``.
        message: what is wrong, e.g. ``"'foo' is not a known activation"``.
        allowed: the allowed values, listed after the message when given.
    """

    def __init__(self, field: str, message: str, allowed: Optional[Iterable[object]] = None):
        self.field = field
        self.allowed = None if allowed is None else tuple(allowed)
        text = f"{field}: {message}"
        if self.allowed is not None:
            text += f" (allowed: {', '.join(str(a) for a in self.allowed)})"
        super().__init__(text)


def check_choice(field: str, value: object, allowed: Collection[object]) -> None:
    """Raise a ConfigError listing ``allowed`` unless ``value`` is one of them."""
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(field, f"unknown value {value!r}", allowed=allowed)


MAX_SEED = 2 ** 62 - 1
"""The largest seed: every seed (the network's ``seed``, ``data.seed``) is an integer in [0, MAX_SEED],
so it and the offsets derived from it fit torch's and NumPy's 64-bit generators."""


def check_seed(field: str, value: object) -> int:
    """The one rule for seeds: an integer (not a bool) in [0, :data:`MAX_SEED`]; a ConfigError otherwise."""
    import numbers

    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not 0 <= value <= MAX_SEED:
        raise ConfigError(field, f"must be an integer in [0, 2**62 - 1], got {value!r}")
    return int(value)
