"""Report checker benchmark: ``pixl_core.text.checker.check_report`` throughput, in reports/s.

Input: 10,000 synthetic UK chest X-ray reports from ``stack.synthetic.reports.generate``
(seed 7: 30% with one to three of the patient's identifiers planted, 10% with someone else's,
the rest clean; about 470-1,180 characters, mean ~780, laid out as EMAP's narrative, impression
and addenda joined as the report worker joins them), each with its patient's identifiers. They are
generated in memory (about half a second), not stored.

Candidates, each over the same 10,000 texts:

- **floor**: ``text.lower()`` and a full ``re.finditer(r"\\w+")`` tokenisation pass with a
  precompiled pattern: the least any word-level checker must do to read every report once.
- **checker**: ``check_report(text, identifiers)`` with every identifier the report's patient has
  (patient-specific search, generic patterns, merging).

Goals: at least 2,000 reports/s on one core (the target set for the checker: one hospital's
daily reports in seconds, a backlog of a million in minutes), and the checker no more than 15x
the floor (it looks for eleven kinds of identifier in many variants, each of which costs about
one tokenisation pass).

Timing: ``common.measure_interleaved`` (median of interleaved rounds, one warm-up round).

Standalone: ``python -m benchmarks.checker_bench [BUDGET_S] [--markdown]``.
"""

from __future__ import annotations

import re
import sys

from benchmarks.common import Result, measure_interleaved, render_table
from pixl_core.text.checker import check_report
from stack.synthetic.reports import SyntheticReport, generate

TITLE = "Report checker"
N_REPORTS = 10_000
SEED = 7
THROUGHPUT_GOAL = 2_000.0  # reports/s
FLOOR_RATIO_GOAL = 15.0

_WORDS = re.compile(r"\w+")


def _floor(reports: list[SyntheticReport]) -> None:
    finditer = _WORDS.finditer
    for report in reports:
        for _ in finditer(report.text.lower()):
            pass


def _checker(reports: list[SyntheticReport]) -> None:
    for report in reports:
        check_report(report.text, report.identifiers)


def run(budget_s: float) -> list[Result]:
    """Time the floor and the checker over the same reports; return the figures."""
    reports = generate(N_REPORTS, seed=SEED)
    case = f"{N_REPORTS:,} synthetic reports"
    samples = measure_interleaved(
        {"floor": lambda: _floor(reports), "checker": lambda: _checker(reports)},
        budget_s,
        warmup=1,
        minimum=3,
    )
    floor_s = samples["floor"].median_ms / 1000.0
    checker_s = samples["checker"].median_ms / 1000.0
    throughput = N_REPORTS / checker_s
    ratio = checker_s / floor_s
    flagged = sum(1 for r in reports if check_report(r.text, r.identifiers).flagged)
    return [
        Result(
            TITLE,
            case,
            "floor (lower + \\w+ tokenisation)",
            round(N_REPORTS / floor_s),
            "reports/s",
        ),
        Result(
            TITLE,
            case,
            "checker throughput",
            round(throughput),
            "reports/s",
            goal=f"≥ {THROUGHPUT_GOAL:,.0f} reports/s",
            passed=throughput >= THROUGHPUT_GOAL,
        ),
        Result(
            TITLE,
            case,
            "checker time per report",
            checker_s * 1000.0 / N_REPORTS,
            "ms",
            digits=3,
        ),
        Result(
            TITLE,
            case,
            "checker ÷ floor",
            ratio,
            "x",
            goal=f"≤ {FLOOR_RATIO_GOAL:.0f}x",
            passed=ratio <= FLOOR_RATIO_GOAL,
            note=f"{flagged:,} flagged",
        ),
    ]


if __name__ == "__main__":
    budgets = [float(arg) for arg in sys.argv[1:] if not arg.startswith("-")]
    print(render_table(run(budgets[0] if budgets else 20.0), markdown="--markdown" in sys.argv))
