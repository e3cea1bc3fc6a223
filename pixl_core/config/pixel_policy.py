"""A project's policy for text burned into the pixels, and the reviewed list of benign markers.

``pixel_text:`` in ``projects/<slug>.yaml`` says what happens to text found in an image:

- ``mask`` (the default, and chest-xray's): every text region is filled with the background
  value, except a region whose text is made only of words on the benign list. Text that cannot be
  read, or is read with low confidence, is masked: fail closed.
- ``refuse``: any text that is not benign refuses the instance (``burned_in_text``).
- ``off``: pixels are not checked. Allowed only with ``pixel_text_justification:``, which
  ``pixl allowlist check`` shows to the reviewer like the justification of a kept tag.

The benign list is ``tag_allowlists/benign_markers.yaml`` (or the file ``pixel_text_benign:``
names): reviewed data, not code, so a change to it is reviewed like an allow-list.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixl_core.config.yaml_file import read_mapping
from pixl_core.errors import InvalidProjectError

DEFAULT_BENIGN_FILE = "benign_markers.yaml"
BENIGN_KEYS = frozenset({"description", "words", "symbols"})


class PixelText(enum.StrEnum):
    MASK = "mask"
    REFUSE = "refuse"
    OFF = "off"


@dataclass(frozen=True)
class BenignMarkers:
    """Words (upper case) and symbols that may stay burned in."""

    source: str
    words: frozenset[str]
    symbols: frozenset[str]

    def allows(self, token: str) -> bool:
        """Whether one token read from the image (already stripped of punctuation) is benign."""
        return token.upper() in self.words or token in self.symbols


def parse_pixel_text(value: Any, name: str) -> PixelText:
    """``pixel_text:`` as written. YAML 1.1 reads a bare ``off`` as false, so false means off."""
    if value is None:
        return PixelText.MASK
    if value is False:
        return PixelText.OFF
    try:
        return PixelText(str(value).strip().lower())
    except ValueError:
        raise InvalidProjectError(
            f"{name}: 'pixel_text:' must be one of mask, refuse, off (got an unknown value)"
        ) from None


def parse_justification(policy: PixelText, value: Any, name: str) -> str | None:
    if policy is PixelText.OFF:
        if not isinstance(value, str) or not value.strip():
            raise InvalidProjectError(
                f"{name}: 'pixel_text: off' needs 'pixel_text_justification:' (why this "
                "project's images carry no burned-in text) for the reviewer"
            )
        return value.strip()
    if value is not None:
        raise InvalidProjectError(
            f"{name}: 'pixel_text_justification:' is only for 'pixel_text: off'; remove it"
        )
    return None


def load_benign_markers(path: Path, name: str) -> BenignMarkers:
    raw = read_mapping(
        path,
        name,
        BENIGN_KEYS,
        expected="with 'words:' and 'symbols:'",
        error=InvalidProjectError,
        named_in="the project's 'pixel_text_benign:'",
    )
    words = raw.get("words") or []
    symbols = raw.get("symbols") or []
    if not isinstance(words, list) or not isinstance(symbols, list):
        raise InvalidProjectError(f"{name}: 'words:' and 'symbols:' must be lists")
    for word in words:
        text = str(word)
        if not text.replace("-", "").isalpha():
            raise InvalidProjectError(
                f"{name}: benign word #{words.index(word) + 1} is not letters only; only "
                "words without digits may be listed (a digit could spell an identifier)"
            )
    for symbol in symbols:
        if any(ch.isalnum() for ch in str(symbol)):
            raise InvalidProjectError(
                f"{name}: benign symbol #{symbols.index(symbol) + 1} has letters or digits; "
                "list words under 'words:'"
            )
    return BenignMarkers(
        source=name,
        words=frozenset(str(w).upper() for w in words),
        symbols=frozenset(str(s) for s in symbols),
    )
