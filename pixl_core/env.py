"""Numbers read from the environment, with the one-line error an operator can act on."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TypeVar

from pixl_core.errors import PixlConfigError

Number = TypeVar("Number", int, float)


def env_number(
    name: str,
    default: Number,
    kind: type[Number],
    *,
    environ: Mapping[str, str] | None = None,
    positive: bool = False,
) -> Number:
    """``kind(os.environ[name])``, or ``default`` when unset or blank.

    A value that is not a number (or, with ``positive``, not above zero) stops with a
    ``PixlConfigError`` naming the variable and an example, instead of a traceback later.
    """
    value = (os.environ if environ is None else environ).get(name, "").strip()
    if not value:
        return default
    noun = "a whole number" if kind is int else "a number"
    try:
        number = kind(value)
    except ValueError:
        raise PixlConfigError(f"{name} must be {noun}, e.g. {default}") from None
    if positive and number <= 0:
        raise PixlConfigError(f"{name} must be greater than 0, e.g. {default}")
    return number
