"""Run every ``benchmarks/*_bench.py`` module and print one results table.

See the package docstring (``benchmarks/__init__.py``) for the convention a module follows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import pkgutil
import platform
import sys
import time
from pathlib import Path
from types import ModuleType

from benchmarks.common import Result, render_table

PACKAGE_DIR = Path(__file__).resolve().parent
SUFFIX = "_bench"


def discover(only: list[str] | None = None) -> list[ModuleType]:
    """Import the ``*_bench`` modules (all, or those whose name starts with one of ``only``)."""
    names = sorted(
        info.name for info in pkgutil.iter_modules([str(PACKAGE_DIR)]) if info.name.endswith(SUFFIX)
    )
    if only:
        names = [n for n in names if any(n.startswith(prefix) for prefix in only)]
    return [importlib.import_module(f"benchmarks.{name}") for name in names]


def machine() -> str:
    """One line describing where the figures were taken."""
    return (
        f"{platform.node() or 'unknown host'}: {platform.machine()}, nproc {os.cpu_count()}, "
        f"Python {platform.python_version()}, {platform.platform(terse=True)}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; the exit status is 1 only with ``--strict`` and a missed goal."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--only", action="append", help="run modules starting with this name")
    parser.add_argument(
        "--budget", type=float, default=55.0, help="total seconds, split between modules"
    )
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any goal is missed")
    args = parser.parse_args(argv)

    modules = discover(args.only)
    if not modules:
        print("no benchmark modules found", file=sys.stderr)
        return 2
    # A module with a fixed cost may set BUDGET_S (seconds) to take a budget of its own; the
    # others share --budget evenly, as before.
    sharing = [m for m in modules if getattr(m, "BUDGET_S", None) is None]
    share = args.budget / len(sharing) if sharing else args.budget
    print(f"{dt.date.today().isoformat()}  {machine()}")
    results: list[Result] = []
    for module in modules:
        title = getattr(module, "TITLE", module.__name__)
        budget = getattr(module, "BUDGET_S", None) or share
        print(f"running {title} ({module.__name__}, budget {budget:.0f} s)...", flush=True)
        start = time.perf_counter()
        results.extend(module.run(budget))
        print(f"  done in {time.perf_counter() - start:.1f} s", flush=True)
    print()
    print(render_table(results, markdown=args.markdown))
    failed = [r for r in results if r.passed is False]
    verdict = "all goals met" if not failed else f"{len(failed)} goal(s) missed"
    print(verdict)
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
