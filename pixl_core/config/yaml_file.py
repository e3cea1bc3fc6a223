"""Reading one YAML configuration file into a mapping, with the one-line errors both kinds share.

Projects and allow-lists are edited by hand and reviewed as pull requests; a typo must stop
with the file's name, what is wrong and how to fix it, never a traceback. Both kinds are a
mapping with a closed set of keys, so an unknown key (a misspelt ``allowlist:``) is refused
rather than silently ignored.
"""

from __future__ import annotations

from collections.abc import Set
from pathlib import Path
from typing import Any

import yaml

from pixl_core.errors import PixlConfigError

# libyaml's loader when PyYAML was built with it (the wheels are): the same documents and the
# same error marks as the pure-Python SafeLoader, ~10x faster. Loading a project reads four
# files (~0.1 CPU-s in pure Python), which every `pixl anonymise` and orthanc-anon start pays.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` through libyaml when available."""
    return yaml.load(text, Loader=_LOADER)  # a safe loader, C or Python


def read_mapping(
    path: Path,
    name: str,
    allowed_keys: Set[str],
    *,
    expected: str,
    error: type[PixlConfigError],
    named_in: str = "the command line",
) -> dict[str, Any]:
    """The file's top-level mapping, or ``error`` naming ``name`` and the fix.

    ``expected`` completes "expected a mapping …" for a file that is not one; ``named_in`` says
    where the path of a missing file came from.
    """
    try:
        raw = safe_load(path.read_text())
    except FileNotFoundError:
        raise error(f"{name}: file not found; check the path in {named_in}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise error(f"{name}: not valid YAML{where}; fix the syntax") from None
    if not isinstance(raw, dict):
        raise error(f"{name}: expected a mapping {expected}")
    refuse_unknown_keys(raw, allowed_keys, name, error)
    return raw


def refuse_unknown_keys(
    mapping: dict[str, Any],
    allowed_keys: Set[str],
    where: str,
    error: type[PixlConfigError],
    what: str = "key",
) -> None:
    """Refuse the first key (in sorted order) that ``allowed_keys`` does not name."""
    unknown = set(mapping) - allowed_keys
    if unknown:
        raise error(
            f"{where}: unknown {what} '{sorted(unknown)[0]}'; allowed keys are "
            f"{', '.join(sorted(allowed_keys))}"
        )
