"""Mask every finding of a flagged report: what ``pixl reports redact`` releases.

Each finding's span becomes ``[KIND]`` (the checker's kind in capitals, e.g. ``[NAME]``,
``[NHS_NUMBER]``): the same ``[TAG]`` style as the de-identifier's own placeholders, so
researchers read one convention, and the kind says what was there without saying what it was.
Overlapping or touching spans are merged first (the kind of the longest part names it), so an
identifier is never left half-visible between two placeholders. A pure function: the caller
checks the masked text again before anything is released.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def _spans(findings: Iterable[Mapping[str, Any]], length: int) -> list[tuple[int, int, str]]:
    """Findings as sorted, merged ``(start, end, kind)``; raise ValueError if one lies outside
    the text (findings of another text: masking by them would mask the wrong words)."""
    spans = []
    for finding in findings:
        start, end, kind = int(finding["start"]), int(finding["end"]), str(finding["kind"])
        if not 0 <= start < end <= length:
            raise ValueError("a finding lies outside the report's text")
        spans.append((start, end, kind))
    spans.sort()
    merged: list[tuple[int, int, str]] = []
    longest: list[int] = []
    for start, end, kind in spans:
        if merged and start <= merged[-1][1]:
            m_start, m_end, m_kind = merged[-1]
            if end - start > longest[-1]:
                m_kind, longest[-1] = kind, end - start
            merged[-1] = (m_start, max(m_end, end), m_kind)
        else:
            merged.append((start, end, kind))
            longest.append(end - start)
    return merged


def placeholder(kind: str) -> str:
    """``[KIND]`` for a checker kind (``date_of_birth`` → ``[DATE_OF_BIRTH]``)."""
    return f"[{kind.upper()}]"


def mask(text: str, findings: Iterable[Mapping[str, Any]]) -> str:
    """``text`` with each finding's span (offsets into ``text``) replaced by its placeholder."""
    pieces: list[str] = []
    position = 0
    for start, end, kind in _spans(findings, len(text)):
        pieces.append(text[position:start])
        pieces.append(placeholder(kind))
        position = end
    pieces.append(text[position:])
    return "".join(pieces)
