"""``make demo``: the whole flow on this machine, from a synthetic cohort to the local DSH.

Starts the local stack under supervisord (``.demo/``), generates a synthetic chest X-ray cohort
as an OMOP ES extract (``.demo/extract/``), loads its images into the VNA stand-in and its
reports into the EMAP schema, runs ``pixl populate``, waits for every study to settle, exports
the reports and public parquet (``pixl export-patient-data``), and checks that everything
expected arrived in ``.demo/dsh/`` and nothing that should not. Exits 0 only then. The stack
stays up for exploring; ``make down`` stops it. ``.demo/env`` (mode 600) holds every variable
the ``pixl`` CLI needs for it (``set -a; . .demo/env; set +a``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from stack.driver import Counts, NotSettledError, Stack
from stack.local_stack import StackError
from stack.settings import REPO_DIR, StackSettings

DEMO_DIR = REPO_DIR / ".demo"
console = Console(width=None if sys.stdout.isatty() else 120)


def wait_for_studies(stack: Stack, projects: list[str], timeout: float) -> Counts:
    """Wait, with a progress bar, until no study of ``projects`` is queued or in progress."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        tasks = {p: progress.add_task(f"studies of {p}", total=None) for p in projects}

        def show(counts: Counts) -> None:
            for project in projects:
                total = counts.total(project)
                progress.update(tasks[project], total=total, completed=total - counts.busy(project))

        try:
            return stack.wait_until_settled(projects, timeout, on_poll=show)
        except NotSettledError as exc:
            console.print("[red]timed out waiting for studies to settle[/red]")
            return exc.counts


def wait_for_reports(stack: Stack, projects: list[str], timeout: float) -> None:
    """Wait until the EHR module has no report of ``projects`` queued or in progress."""
    with console.status("waiting for reports (EMAP → Cogstack → check)…"):
        try:
            stack.wait_until_settled(projects, timeout, reports=True)
        except NotSettledError:
            console.print("[red]timed out waiting for reports[/red]")


def run(stack: Stack, n_studies: int, timeout: float) -> int:
    from stack.standins.emap_load import load_cohort_reports
    from stack.synthetic.cohort import generate_cohort, load_into_vna

    console.rule("[bold]PIXL demo")
    settings = stack.settings
    console.print("starting the local stack (Postgres, VNA, orthanc-raw, orthanc-anon, DSH)…")
    stack.up()
    console.print(f"generating a synthetic cohort of {n_studies} studies…")
    cohort = generate_cohort(settings.root, n_studies=n_studies)
    loaded = load_into_vna(cohort, settings.url("vna"))
    console.print(f"loaded {loaded} instances into the VNA")
    load_cohort_reports(settings.db_url, cohort)
    stack.pixl("rate", "5", "--in-flight", "4")
    projects = []
    started = time.monotonic()
    for extract in sorted(settings.root.glob("extract*")):
        console.print(stack.pixl("populate", str(extract)).stdout.strip(), highlight=False)
        projects.append(_project_of(extract))
    counts = wait_for_studies(stack, projects, timeout)
    images_done = time.monotonic() - started
    timing = f"images settled {images_done:.1f} s after populate"
    wait_for_reports(stack, projects, timeout)
    reports_done = time.monotonic() - started
    for project in projects:
        console.print(stack.pixl("export-patient-data", project).stdout.strip(), highlight=False)
    exported = time.monotonic() - started
    # The report path runs beside the images; what it adds to the demo is the wait after
    # the images settled plus the parquet export.
    timing += (
        f"; reports settled at {reports_done:.1f} s; parquet export done at {exported:.1f} s "
        f"(the report path added {exported - images_done:.1f} s)"
    )
    console.print(timing, highlight=False)
    ok = summarise(stack, cohort, counts, projects)
    explore(settings)
    return 0 if ok else 1


def _project_of(extract: Path) -> str:
    summary = json.loads((extract / "extract_summary.json").read_text())
    from pixl_cli.extract_reader import project_slug

    return project_slug(summary.get("project_name") or summary["settings"]["cdm_source_name"])


def summarise(stack: Stack, cohort: Any, counts: Counts, projects: list[str]) -> bool:
    """Compare what arrived in the DSH with what the cohort says should arrive."""
    settings = stack.settings
    table = Table(title="PIXL demo: what reached the DSH")
    columns = ["project", "studies expected", "exported", "zips in DSH", "not_found", "refused"]
    columns += ["failed", "reports in parquet", "awaiting review", "public parquet"]
    for column in columns:
        if column == "project":
            table.add_column(column, no_wrap=True)
        else:
            table.add_column(column, justify="right")
    report_states = stack.report_status()
    ok = True
    reports_out = 0
    for project in projects:
        expected = cohort.expected_counts(project)
        states = counts.studies.get(project, {})
        zips = len(list((settings.dsh_dir / project / "dicom").glob("*.zip")))
        row_ok = (
            states.get("exported", 0) == expected["exported"] == zips
            and states.get("not_found", 0) == expected["not_found"]
            and states.get("refused", 0) == expected["refused"]
            and states.get("failed", 0) == 0
        )
        row = [
            str(expected["exported"]),
            str(states.get("exported", 0)),
            str(zips),
            f"{states.get('not_found', 0)}/{expected['not_found']}",
            f"{states.get('refused', 0)}/{expected['refused']}",
            str(states.get("failed", 0)),
        ]
        in_parquet, public = _parquet_contents(settings, project)
        report = report_states.get(project, {})
        # Every report that passed the check is in the parquet; flagged ones wait (a small
        # project may have all its reports flagged: the synthetic redactor misses some names).
        busy = sum(report.get(state, 0) for state in ("queued", "fetching", "deidentifying"))
        row_ok = row_ok and public and in_parquet == report.get("exported", 0) and busy == 0
        reports_out += in_parquet
        row += [str(in_parquet), str(report.get("flagged", 0)), "yes" if public else "NO"]
        ok = ok and row_ok
        colour = "green" if row_ok else "red"
        table.add_row(f"[{colour}]{project}[/{colour}]", *row)
    console.print(table)
    if reports_out == 0:
        console.print("[red]no report reached any radiology parquet[/red]")
        ok = False
    console.print("[green]demo passed[/green]" if ok else "[red]demo failed[/red]")
    return ok


def _parquet_contents(settings: StackSettings, project: str) -> tuple[int, bool]:
    """Rows of the radiology parquet and whether the public parquet arrived."""
    import pandas as pd

    folder = settings.dsh_dir / project
    radiology = list(folder.glob("*/parquet/radiology/radiology.parquet"))
    public = list(folder.glob("*/parquet/public/PROCEDURE_OCCURRENCE.parquet"))
    rows = len(pd.read_parquet(radiology[0])) if radiology else 0
    return rows, bool(public)


def explore(settings: StackSettings) -> None:
    secrets = settings.root / "secrets.env"
    console.print("\nThe stack stays up for exploring (`make down` stops it):")
    console.print(f"  VNA            {settings.url('vna')}/app/explorer.html")
    console.print(f"  secondary      {settings.url('secondary')}/app/explorer.html (AE title PACS)")
    console.print(
        f"  orthanc-raw    {settings.url('raw')}/app/explorer.html  "
        "(user pixl: PIXL_ORTHANC_RAW_PASSWORD; read-only user operator)"
    )
    console.print(
        f"  orthanc-anon   {settings.url('anon')}/app/explorer.html  "
        "(user pixl: PIXL_ORTHANC_PASSWORD; read-only user operator)"
    )
    console.print(
        f"  passwords      {secrets} (mode 600; operator: PIXL_ORTHANC_OPERATOR_PASSWORD)"
    )
    console.print(f"  DSH folder     {settings.dsh_dir}")
    console.print(f"  logs           {settings.logs_dir}")
    console.print(f"  CLI            set -a; . {_shown(settings.cli_env_file)}; set +a")
    console.print("                 .venv/bin/pixl status")
    console.print(
        f"  operator page  {settings.url('raw')}/pixl/ui/ and {settings.url('anon')}/pixl/ui/ "
        "(or the PIXL button in Orthanc Explorer)"
    )


def _shown(path: Path) -> str:
    """``path`` relative to the working folder when it is under it (``.demo/env``): short
    enough that the printed set-up line never wraps."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.demo", description=__doc__)
    parser.add_argument("--down", action="store_true", help="stop the demo stack")
    parser.add_argument("--studies", type=int, default=12, help="studies in the cohort")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for studies")
    args = parser.parse_args(argv)
    # Everything the demo writes (extract with its link files, secrets, staged parquet) is
    # private to the user running it; the stack opens up only what its services must read.
    os.umask(0o077)
    stack = Stack(StackSettings.for_demo(DEMO_DIR), pixl_timeout_s=600.0)
    if args.down:
        stack.down()
        console.print("demo stack stopped")
        return 0
    try:
        return run(stack, args.studies, args.timeout)
    except StackError as exc:
        console.print(f"[red]demo: {exc}[/red]")
        return 1


if __name__ == "__main__":
    sys.exit(main())
