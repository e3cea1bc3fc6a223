"""``make demo``: the whole flow on this machine, from a synthetic cohort to the local DSH.

Starts the local stack under supervisord (``.demo/``), generates a synthetic chest X-ray cohort
as an OMOP ES extract (``.demo/extract/``), loads its images into the VNA stand-in and its
reports into the EMAP schema, runs ``pixl populate``, waits for every study to settle, exports
the reports and public parquet (``pixl export-patient-data``), and checks that everything
expected arrived and nothing that should not: ``chest-xray``'s images as zips in
``.demo/dsh/``, ``chest-xray-research``'s at the DICOMweb server, counted there by QIDO-RS
(studies, and instances per study against the cohort's own count), never from PIXL's records,
and ``pixl verify`` is clean for every project (zips hashed against the manifest, or QIDO-RS
counts). Exits 0 only then. The stack stays up for exploring; ``make down`` stops it. ``.demo/env`` (mode 600) holds every variable
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

import yaml
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from stack.driver import Counts, NotSettledError, Stack
from stack.local_stack import StackError
from stack.settings import REPO_DIR, StackSettings, StackSettingsError

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
    from stack.synthetic.cohort import generate_cohort

    console.rule("[bold]PIXL demo")
    settings = stack.settings
    vna = "VNA" if settings.vna_kind == "orthanc" else f"VNA ({settings.vna_kind})"
    console.print(
        f"starting the local stack (Postgres, {vna}, orthanc-raw, orthanc-anon, DSH, DICOMweb)…"
    )
    stack.up()
    console.print(f"generating a synthetic cohort of {n_studies} studies…")
    cohort = generate_cohort(settings.root, n_studies=n_studies)
    loaded = stack.load_vna(cohort)
    console.print(f"loaded {loaded} instances into the {vna}")
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


def image_destination(settings: StackSettings, project: str) -> str:
    """``dicomweb`` or ``ftps``: where the stack's copy of the project file sends images."""
    raw = yaml.safe_load((settings.projects_dir / f"{project}.yaml").read_text())
    return "dicomweb" if "dicomweb" in (raw.get("destination") or {}) else "ftps"


def arrived(stack: Stack, cohort: Any, project: str) -> tuple[str, str, bool]:
    """What reached the project's image destination, counted on the destination's side:
    ``(destination, what arrived, whether it is all that was expected)``. FTPS: the zips in the
    DSH folder. DICOMweb: QIDO-RS per expected study, its instances against the cohort's."""
    from pixl_core.hashing import ProjectHasher
    from pixl_core.transport.dicomweb import DicomwebError, study_counts

    settings = stack.settings
    expected = [s for s in cohort.studies_for(project) if s.expected_outcome == "exported"]
    if image_destination(settings, project) == "ftps":
        zips = len(list((settings.dsh_dir / project / "dicom").glob("*.zip")))
        return "ftps", f"{zips} zips", zips == len(expected)
    secret = settings.secrets["PIXL_HASH_KEY"].encode()
    hasher = ProjectHasher.for_project(project, secret)
    uids = {hasher.uid(s.study_uid): s.expected_instances for s in expected}
    try:
        with stack.dicomweb() as client:
            held = study_counts(client, uids)
    except DicomwebError as exc:
        console.print(f"[red]{exc}[/red]")
        return "dicomweb", "unreachable", False
    studies = sum(held[uid]["studies"] for uid in uids)
    instances = sum(held[uid]["instances"] for uid in uids)
    complete = all(held[uid]["instances"] == n for uid, n in uids.items())
    what = f"{studies} st., {instances}/{sum(uids.values())} inst."
    return "dicomweb", what, studies == len(expected) and complete


def verify(stack: Stack, project: str, tries: int = 4) -> tuple[str, bool]:
    """``pixl verify PROJECT`` as an operator would run it: the destination read back (zips
    hashed against the manifest, or QIDO-RS counts). The manifest follows the last export by up
    to a few seconds (``PIXL_EXPORT_MANIFEST_SECONDS``), so a stale one is asked again."""
    for attempt in range(tries):
        result = stack.pixl("verify", project, "--json", check=False)
        if result.returncode == 0:
            return "clean", True
        if attempt + 1 < tries:
            time.sleep(3)
    try:
        report = json.loads(result.stdout)
    except ValueError:
        return "failed", False
    wrong = [f"{len(report[key])} {key}" for key in ("missing", "corrupt", "extra") if report[key]]
    if (report.get("manifest") or {}).get("problem"):
        wrong.append(f"manifest {report['manifest']['problem']}")
    return ", ".join(wrong) or "failed", False


def _table(title: str, left: list[str], right: list[str]) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for column in left:
        table.add_column(column, no_wrap=True, justify="left" if column == "project" else "right")
    for column in right:
        table.add_column(column, justify="right")
    return table


def summarise(stack: Stack, cohort: Any, counts: Counts, projects: list[str]) -> bool:
    """Compare what arrived at each project's destination with what the cohort says should."""
    settings = stack.settings
    # Two tables (images, then reports) so that each fits 100 columns without eliding a value.
    images = _table(
        "PIXL demo: images, counted where they arrived",
        ["project", "destination", "expected", "exported", "arrived there", "pixl verify"],
        ["not found", "refused", "failed"],
    )
    reports = _table(
        "PIXL demo: reports", ["project", "in radiology parquet"], ["awaiting review", "public"]
    )
    report_states = stack.report_status()
    ok = True
    reports_out = 0
    for project in projects:
        expected = cohort.expected_counts(project)
        states = counts.studies.get(project, {})
        destination, there, all_there = arrived(stack, cohort, project)
        verified, clean = verify(stack, project)
        row_ok = (
            all_there
            and clean
            and states.get("exported", 0) == expected["exported"]
            and states.get("not_found", 0) == expected["not_found"]
            and states.get("refused", 0) == expected["refused"]
            and states.get("failed", 0) == 0
        )
        row = [
            destination,
            str(expected["exported"]),
            str(states.get("exported", 0)),
            there,
            verified,
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
        ok = ok and row_ok
        colour = "green" if row_ok else "red"
        images.add_row(f"[{colour}]{project}[/{colour}]", *row)
        reports.add_row(
            f"[{colour}]{project}[/{colour}]",
            str(in_parquet),
            str(report.get("flagged", 0)),
            "yes" if public else "NO",
        )
    console.print(images)
    console.print(
        "arrived there: counted on the destination's side: zips in the DSH folder (ftps); "
        "studies and instances (of those expected) by QIDO-RS on the server (dicomweb). "
        "pixl verify: the destination read back against PIXL's records (and the manifest).",
        highlight=False,
    )
    console.print(reports)
    console.print("public: the extract's public OMOP parquet arrived at the DSH", highlight=False)
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
    if settings.vna_kind == "dcmqrscp":
        console.print(
            f"  VNA            dcmqrscp, AE title VNA at 127.0.0.1:{settings.ports['vna_dicom']} "
            f"(DICOM only; its log: {settings.logs_dir / 'vna.log'})"
        )
    else:
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
    console.print(
        f"  DICOMweb       {settings.dicomweb_url}  (user pixl: PIXL_DICOMWEB_PASSWORD; "
        f"CA file {settings.dicomweb_ca_file})"
    )
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
    try:
        settings = StackSettings.for_demo(DEMO_DIR)
    except StackSettingsError as exc:
        console.print(f"[red]demo: {exc}[/red]")
        return 2
    stack = Stack(settings, pixl_timeout_s=600.0)
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
