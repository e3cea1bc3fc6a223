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

from pixl_core.db.fetch_control import ALL, Control, Gate
from pixl_core.db.work_queue import FetchRate

LABEL_WIDTH = 16  # "  images refused" and the like, padded to one column


def _items(counts: Mapping[str, int], *, zeros: bool = True) -> list[str]:
    return [f"{name} {count}" for name, count in counts.items() if zeros or count]


def _wrapped(label: str, items: list[str], width: int) -> list[str]:
    """``label`` then the items joined by commas, wrapped at ``width`` under the first item."""
    text = ", ".join(items) if items else "-"
    first = f"  {label}".ljust(LABEL_WIDTH) + " "
    return textwrap.wrap(
        text,
        width=max(width, len(first) + 20),
        initial_indent=first,
        subsequent_indent=" " * len(first),
        break_long_words=False,
        break_on_hyphens=False,
    )


def _fetch_line(
    scope: str, rate: FetchRate | None, control: Control | None, gate_hold: Any, width: int
) -> list[str]:
    parts = []
    if gate_hold is not None:
        parts.append(gate_hold.describe())
    else:
        parts.append("asking the VNA")
    if rate is not None:
        parts.append(f"{rate.studies_per_second:g} studies/s, {rate.max_in_flight} in flight")
    if control is not None and control.hours is not None:
        parts.append(f"VNA hours {control.hours.describe()}")
    elif scope == ALL:
        parts.append("VNA hours: any time")
    name = "all projects" if scope == ALL else scope
    return textwrap.wrap(
        f"{name}: " + "; ".join(parts),
        width=width,
        subsequent_indent="  ",
        break_long_words=False,
        break_on_hyphens=False,
    )


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
    for project, info in overview.items():
        lines.append("")
        own_rate = rates.get(project)
        hold = gate.projects.get(project)
        header = _fetch_line(project, own_rate, controls.get(project), hold, width)
        lines += header
        lines += _wrapped("images", _items(info["studies"]), width)
        reasons = info["reasons"]
        for category, label in (
            ("refused", "images refused"),
            ("failed", "images failed"),
            ("backing_off", "images waiting"),
        ):
            codes = reasons["studies"].get(category, {})
            if codes:
                lines += _wrapped(label, _items(codes), width)
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
                [f"{flagged} flagged awaiting review (`pixl reports flagged {project}`)", *decided],
                width,
            )
    return lines
