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

- **checker, CPU time**: the same loop timed with ``time.process_time`` (median of three), which
  other engineers' load on this shared machine disturbs less than wall-clock time.
- **variant corpus** (issue 9): 4,000 texts from ``stack.synthetic.checker_variants`` (seed 3):
  identifiers as real reports, descriptors and OCR write them (misspelt and misread surnames,
  broken names, nicknames, accents, numbers in other groupings, a birthday with an age...) and
  clean texts whose patient's surname is an eponym or a common word. Recall over planted spans,
  false-positive rate over clean texts, and throughput (CPU time).

Goals: at least 2,000 reports/s on one core (the target set for the checker: one hospital's
daily reports in seconds, a backlog of a million in minutes), and the checker no more than 15x
the floor (it looks for eleven kinds of identifier in many variants, each of which costs about
one tokenisation pass).

Timing: ``common.measure_interleaved`` (median of interleaved rounds, one warm-up round).

Standalone: ``python -m benchmarks.checker_bench [BUDGET_S] [--markdown]``.
"""

from __future__ import annotations

import gc
import re
import statistics
import sys
import time
from collections.abc import Callable

from benchmarks.common import Result, measure_interleaved, render_table
from pixl_core.text.checker import check_report
from stack.synthetic.checker_variants import generate as generate_variants
from stack.synthetic.checker_variants import score
from stack.synthetic.reports import SyntheticReport, generate

TITLE = "Report checker"
N_REPORTS = 10_000
SEED = 7
THROUGHPUT_GOAL = 2_000.0  # reports/s
FLOOR_RATIO_GOAL = 15.0
N_VARIANTS = 4_000
VARIANT_SEED = 3
RECALL_GOAL = 0.98
FPR_GOAL = 0.05

_WORDS = re.compile(r"\w+")


def _floor(reports: list[SyntheticReport]) -> None:
    finditer = _WORDS.finditer
    for report in reports:
        for _ in finditer(report.text.lower()):
            pass


def _checker(reports: list[SyntheticReport]) -> None:
    for report in reports:
        check_report(report.text, report.identifiers)


def _cpu_seconds(function: Callable[[], object], rounds: int = 3) -> float:
    """Median CPU time (``time.process_time``) of ``rounds`` calls, after one warm-up call."""
    function()
    samples = []
    for _ in range(rounds):
        gc.collect()
        start = time.process_time()
        function()
        samples.append(time.process_time() - start)
    return statistics.median(samples)


def _variant_results(reports: list[SyntheticReport]) -> list[Result]:
    """CPU-time throughput on the reports and the variant corpus; recall and FPR on the latter."""
    docs = generate_variants(N_VARIANTS, seed=VARIANT_SEED)
    cpu = _cpu_seconds(lambda: _checker(reports))
    cpu_variants = _cpu_seconds(lambda: [check_report(d.text, d.identifiers) for d in docs])
    result = score(docs, check_report)
    case = f"{N_VARIANTS:,} variant texts"
    return [
        Result(
            TITLE,
            f"{N_REPORTS:,} synthetic reports",
            "checker throughput, CPU time",
            round(N_REPORTS / cpu),
            "reports/s",
            goal=f"≥ {THROUGHPUT_GOAL:,.0f} reports/s",
            passed=N_REPORTS / cpu >= THROUGHPUT_GOAL,
        ),
        Result(
            TITLE,
            case,
            "checker throughput, CPU time",
            round(N_VARIANTS / cpu_variants),
            "texts/s",
            goal=f"≥ {THROUGHPUT_GOAL:,.0f} texts/s",
            passed=N_VARIANTS / cpu_variants >= THROUGHPUT_GOAL,
        ),
        Result(
            TITLE,
            case,
            "recall (planted spans covered)",
            round(result.recall, 4),
            goal=f"≥ {RECALL_GOAL}",
            passed=result.recall >= RECALL_GOAL,
            note=f"{result.found:,} of {result.planted:,}",
        ),
        Result(
            TITLE,
            case,
            "false-positive rate (clean texts flagged)",
            round(result.false_positive_rate, 4),
            goal=f"≤ {FPR_GOAL}",
            passed=result.false_positive_rate <= FPR_GOAL,
            note=f"{result.clean_flagged:,} of {result.clean:,}",
        ),
    ]


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
        *_variant_results(reports),
    ]


if __name__ == "__main__":
    budgets = [float(arg) for arg in sys.argv[1:] if not arg.startswith("-")]
    print(render_table(run(budgets[0] if budgets else 20.0), markdown="--markdown" in sys.argv))
