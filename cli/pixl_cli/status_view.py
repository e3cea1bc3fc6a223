"""``pixl status`` as text: per project the counts, then the reasons, fitted to the terminal.

A pure function of what ``pixl_core.db.overview`` and ``fetch_control`` give, so the layout is
tested without a database. Why lines and not a table: a table of seven state columns cut both
project names to ``chest-…`` at 80 columns; here a project's name stands on a line of its
own and every list wraps under its label, so nothing is truncated at any width from 40 up.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pixl_core.db.fetch_control import ALL, ARCHIVE_PREFIX, Control, Gate, now_local
from pixl_core.db.work_queue import FetchRate

fetch_control_now = now_local
LABEL_WIDTH = 16  # "  images refused" and the like, padded to one column


def _items(counts: Mapping[str, int], *, zeros: bool = True) -> list[str]:
    return [f"{name} {count}" for name, count in counts.items() if zeros or count]


def _pack(first: str, items: list[str], sep: str, width: int, indent: int) -> list[str]:
    """``first`` then the items joined by ``sep``, a line broken only between items (so a
    command such as `pixl resume P` is never cut), an item longer than a line wrapped alone
    (a command excepted: it may only be moved to a line of its own)."""
    lines: list[str] = []
    line = first
    for n, item in enumerate(items):
        piece = item + (sep.rstrip() if n < len(items) - 1 else "")
        gap = "" if line == first else " "
        if len(line) + len(gap) + len(piece) > width and line.strip():
            lines.append(line.rstrip())
            line = " " * indent
            gap = ""
        if "`" in piece and len(line) + len(gap) + len(piece) > width:
            # A command is never broken (pasted, a broken one runs as two): on a line of its
            # own, indented less if that makes it fit, over the width only if nothing can.
            if line.strip():
                lines.append(line)
            line = " " * (indent if indent + len(piece) <= width else 2) + piece
            continue
        if len(line) + len(gap) + len(piece) > width and len(piece) > width - indent:
            wrapped = textwrap.wrap(
                piece,
                width=width,
                initial_indent=line + gap,
                subsequent_indent=" " * indent,
                break_long_words=False,
                break_on_hyphens=False,
            )
            lines += wrapped[:-1]
            line = wrapped[-1]
        else:
            line += gap + piece
    lines.append(line)
    return lines


def _wrapped(label: str, items: list[str], width: int) -> list[str]:
    """``label`` then the items, comma-separated, wrapped at ``width`` under the first item."""
    first = f"  {label}".ljust(LABEL_WIDTH) + " "
    return _pack(first, items or ["-"], ", ", max(width, len(first) + 20), len(first))


def _fetch_line(
    scope: str, rate: FetchRate | None, control: Control | None, gate_hold: Any, width: int
) -> list[str]:
    parts: list[str] = []
    if gate_hold is not None:
        parts += gate_hold.describe().split(", ")
    else:
        parts.append("asking the VNA")
    if rate is not None:
        parts.append(f"{rate.studies_per_second:g} studies/s")
        parts.append(f"{rate.max_in_flight} in flight")
    if control is not None and control.hours is not None:
        parts.append(f"VNA hours {control.hours.describe()}")
    elif scope == ALL:
        parts.append("VNA hours: any time")
    name = "all projects" if scope == ALL else scope
    return _pack(f"{name}: ", parts, ", ", width, 2)


def _secondary_line(rate: FetchRate | None, control: Control | None, width: int) -> list[str]:
    """The secondary archive's hold, hours and rate (shown once it has a row of its own)."""
    hold = control.hold(fetch_control_now()) if control is not None else None
    if hold is None:
        parts = ["may be asked"]
    elif hold.reason == "paused":
        parts = ["PAUSED"]
    else:
        assert hold.until is not None
        parts = [f"OUTSIDE ITS HOURS until {hold.until:%a %H:%M}"]
    if control is not None and control.hours is not None:
        parts.append(f"hours {control.hours.describe()}")
    if rate is not None:
        parts.append(f"{rate.studies_per_second * 60:g} studies/min")
    return _pack("secondary archive: ", parts, ", ", width, 2)


def render(
    overview: Mapping[str, Mapping[str, Any]],
    rates: Mapping[str, FetchRate],
    controls: Mapping[str, Control],
    gate: Gate,
    width: int = 80,
    now: datetime | None = None,
) -> list[str]:
    """The lines ``pixl status`` prints: the global fetch line, then a block per project."""
    del now  # the gate was computed for it
    lines = _fetch_line(ALL, rates.get(ALL), controls.get(ALL), gate.everything, width)
    secondary = ARCHIVE_PREFIX + "secondary"
    if secondary in controls or secondary in rates:
        lines += _secondary_line(rates.get(secondary), controls.get(secondary), width)
    for project, info in overview.items():
        lines.append("")
        own_rate = rates.get(project)
        hold = gate.projects.get(project)
        header = _fetch_line(project, own_rate, controls.get(project), hold, width)
        lines += header
        lines += _wrapped("images", _items(info["studies"]), width)
        archives = info.get("archives", {})
        waiting = info.get("waiting_for_secondary", 0)
        if archives or waiting:
            items = [f"from {name} {count}" for name, count in archives.items()]
            if waiting:
                items.append(f"waiting for secondary {waiting}")
            lines += _wrapped("archives", items, width)
        reasons = info["reasons"]
        for category, label in (
            ("refused", "images refused"),
            ("failed", "images failed"),
            ("backing_off", "images waiting"),
        ):
            codes = reasons["studies"].get(category, {})
            if codes:
                lines += _wrapped(label, _items(codes), width)
        error = info.get("destination_error")
        if error:
            at = str(error["at"])[:19].replace("T", " ")
            lines += _wrapped("destination error", [f"{error['message']} (at {at})"], width)
        lines += _wrapped("reports", _items(info["reports"], zeros=False) or ["none"], width)
        for category, label in (("failed", "reports failed"), ("backing_off", "reports waiting")):
            codes = reasons["reports"].get(category, {})
            if codes:
                lines += _wrapped(label, _items(codes), width)
        flagged = info["reports"].get("flagged", 0)
        review = info.get("review", {})
        if flagged or any(review.values()):
            decided = _items(review)
            lines += _wrapped(
                "review",
                [
                    f"{flagged} flagged awaiting review",
                    f"see `pixl reports flagged {project}`",
                    *decided,
                ],
                width,
            )
    return lines
