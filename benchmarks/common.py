"""Shared pieces for the benchmark modules: the ``Result`` row, timing and table rendering."""

from __future__ import annotations

import gc
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

WORK_DIR = Path(__file__).resolve().parent / ".work"


@dataclass(frozen=True)
class Result:
    """One reported figure.

    ``suite`` is the section (a module's ``TITLE``), ``case`` the input, ``metric`` what was
    measured. ``goal`` is a human-readable target (e.g. ``"≤ 1.20"``) and ``passed`` whether it
    was met; both are ``None`` for informational figures.
    """

    suite: str
    case: str
    metric: str
    value: float
    unit: str = ""
    goal: str | None = None
    passed: bool | None = None
    note: str = ""
    digits: int = 2

    @property
    def status(self) -> str:
        """``PASS``, ``FAIL`` or an empty string when there is no goal."""
        if self.passed is None:
            return ""
        return "PASS" if self.passed else "FAIL"

    def formatted_value(self) -> str:
        """The value with its unit, at a precision suited to the unit."""
        if self.unit == "ms":
            return f"{self.value:.{self.digits}f} ms"
        if self.unit == "x":
            return f"{self.value:.{self.digits}f}x"
        if self.unit == "MB":
            return f"{self.value:.1f} MB"
        return f"{self.value:g} {self.unit}".strip()


def repetitions(
    round_s: float, budget_s: float, *, target: int = 15, minimum: int = 5, maximum: int = 15
) -> int:
    """How many rounds of ``round_s`` seconds fit in ``budget_s`` (clamped to min/max).

    ``target`` is what we take when time allows; below ``minimum`` a median means little, so
    the budget is exceeded rather than going lower.
    """
    if round_s <= 0:
        return min(target, maximum)
    fitting = int(budget_s / round_s)
    return max(minimum, min(target, maximum, fitting))


@dataclass
class Samples:
    """Per-call wall-clock seconds and minor page faults of one candidate."""

    seconds: list[float]
    minor_faults: list[int]

    @property
    def median_ms(self) -> float:
        """Median per-call time in milliseconds."""
        return statistics.median(self.seconds) * 1000.0

    @property
    def median_faults(self) -> int:
        """Median minor page faults per call (fresh memory the kernel had to map)."""
        return int(statistics.median(self.minor_faults))


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure_interleaved(
    candidates: dict[str, Callable[[], object]],
    budget_s: float,
    *,
    warmup: int = 2,
    target: int = 15,
    minimum: int = 5,
) -> dict[str, Samples]:
    """Time each candidate with ``time.perf_counter``; return its per-call samples.

    After ``warmup`` untimed calls of each (imports, caches, first-touch page faults), the
    number of rounds is chosen from the cost of the last warm-up round and ``budget_s``. Each
    round calls every candidate once, rotating the order, so that load from other processes
    (this machine is shared) falls on all candidates alike; ``gc.collect()`` runs before every
    call so that one candidate's garbage is not collected on another's clock.
    """
    names = list(candidates)
    round_s = 0.0
    for _ in range(warmup):
        round_start = time.perf_counter()
        for name in names:
            candidates[name]()
        round_s = time.perf_counter() - round_start
    rounds = repetitions(round_s, budget_s, target=target, minimum=minimum)
    samples = {name: Samples([], []) for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            function = candidates[name]
            gc.collect()
            faults = _minor_faults()
            start = time.perf_counter()
            function()
            elapsed = time.perf_counter() - start
            samples[name].minor_faults.append(_minor_faults() - faults)
            samples[name].seconds.append(elapsed)
    return samples


def render_table(results: Sequence[Result], *, markdown: bool = False) -> str:
    """The results as an aligned text table (or a Markdown table), one section per suite."""
    headers = ("Case", "Metric", "Value", "Goal", "Status")
    sections: dict[str, list[tuple[str, ...]]] = {}
    for result in results:
        row = (
            result.case,
            result.metric + (f" ({result.note})" if result.note else ""),
            result.formatted_value(),
            result.goal or "",
            result.status,
        )
        sections.setdefault(result.suite, []).append(row)
    lines: list[str] = []
    for suite, rows in sections.items():
        if markdown:
            lines.append(f"**{suite}**")
            lines.append("")
            lines.append(f"| {' | '.join(headers)} |")
            lines.append("|" + "|".join("---" for _ in headers) + "|")
            lines.extend(f"| {' | '.join(row)} |" for row in rows)
        else:
            widths = [max(len(r[i]) for r in (headers, *rows)) for i in range(len(headers))]
            rule = "  ".join("-" * w for w in widths)
            lines.append(f"== {suite} ==")
            lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
            lines.append(rule)
            lines.extend(
                "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                for row in rows
            )
        lines.append("")
    return "\n".join(lines)
