"""PIXL benchmarks: ``make bench`` (``.venv/bin/python -m benchmarks``).

Every figure is a **ratio against a floor measured in the same run** on the same machine, because
absolute times depend on the machine; ratios are what we compare between runs and report in
``benchmarks/README.md``.

Convention for adding a benchmark (e.g. ``benchmarks/pipeline_bench.py``):

- Name the module ``benchmarks/<something>_bench.py``. ``python -m benchmarks`` imports every
  such module in name order; nothing needs registering.
- Give it ``TITLE = "Pipeline"`` (the section heading in the results table and in the README)
  and a function ``run(budget_s: float) -> list[Result]``. ``budget_s`` is the module's share of
  the total wall-clock budget (``--budget``, 55 s by default, split evenly between modules); use
  it to choose how many repetitions to take (see ``common.repetitions``).
- Return one ``Result`` per reported figure: absolute figures (``unit="ms"``) for context,
  ratios (``unit="x"``) with a ``goal`` and ``passed`` for what is judged. ``passed=None`` means
  "informational, no goal".
- Generated inputs go in ``benchmarks/.work/`` (git-ignored; ``common.WORK_DIR``); generate them
  once and reuse them.
- Time with ``common.measure_interleaved`` (perf_counter, warm-up, median, candidates run in
  rotating order within each round so that background load hits them alike).

``python -m benchmarks --only deid`` runs one module; ``--markdown`` prints the tables in the
form pasted into ``benchmarks/README.md``; ``--strict`` exits 1 when a goal is missed.
"""

from benchmarks.common import Result

__all__ = ["Result"]
