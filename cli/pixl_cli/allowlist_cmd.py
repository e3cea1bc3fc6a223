"""``pixl allowlist``: the review tools for allow-list pull requests.

An information-governance reviewer approves each project's allow-list as a pull request:

- ``pixl allowlist check`` validates the YAML and audits it against DICOM PS3.15 (the Basic
  Profile plus the options the project claims). It lists every attribute let out beyond the
  profile and fails (exit 1) while any of them lacks a ``justification:``. It reads no DICOM and
  needs no hash key, so it runs in CI on every pull request (``make check-allowlists``).
- ``pixl allowlist preview`` shows what the project's allow-list does to one real file, before
  and after, with the exact engine orthanc-anon runs. It needs ``PIXL_HASH_KEY`` because the
  pseudonyms are computed, and shows identifiers on the "before" side: run it inside the hospital.
- ``pixl allowlist diff BASE [HEAD]`` (``allowlist_diff_cmd.py``) shows what a pull request
  changes in what leaves, project by project, with verdicts; CI writes it to the job summary.

Exit codes: 0 pass, 1 a finding without justification, 2 a broken allow-list or bad usage.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from pixl_cli.allowlist_diff_cmd import diff_cmd
from pixl_cli.output import EXIT_DATA_ERROR, EXIT_OK, console, err_console, operator_errors
from pixl_core.config.allowlist import load_allowlist_file
from pixl_core.config.projects import list_projects, load_project, load_project_file, projects_dir
from pixl_core.errors import PixlConfigError
from pixl_core.hashing import ProjectHasher

if TYPE_CHECKING:
    from pixl_core.config.ps315_audit import AuditReport

allowlist_app = typer.Typer(
    name="allowlist",
    help="Review tools for tag allow-lists: audit against DICOM PS3.15, preview a file, "
    "diff two revisions.",
    no_args_is_help=True,
    add_completion=False,
)

_SLUG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def _is_file_argument(target: str) -> bool:
    """A target is a file if it exists as one or looks like a path; otherwise a project slug."""
    path = Path(target)
    try:
        is_file = path.is_file()
    except OSError as exc:  # e.g. a name too long for the file system: not echoed
        raise PixlConfigError(
            f"a target cannot be read ({exc.strerror}): give a project slug or the path of an "
            "allow-list file"
        ) from None
    return is_file or not _SLUG_RE.match(target) or path.suffix in (".yaml", ".yml")


def _load_report(target: str) -> AuditReport:
    """Validate one target (raises PixlConfigError) and audit it.

    A file inside the projects folder is audited as a project; any other file as a bare
    allow-list with no PS3.15 option claimed, since a bare list claims nothing.
    """
    from pixl_core.config.ps315_audit import audit, audit_allowlist_file  # pydicom

    if not _is_file_argument(target):
        return audit(load_project(target))
    path = Path(target)
    if path.is_file() and path.resolve().parent == projects_dir().resolve():
        return audit(load_project_file(path))
    return audit_allowlist_file(load_allowlist_file(path, target), target)


def _findings_table(report: AuditReport) -> Table:
    """Three columns so it stays readable in an 80-column CI log."""
    table = Table(
        title=f"{report.subject}: attributes let out beyond the Basic Profile",
        title_justify="left",
        show_lines=True,
    )
    table.add_column("attribute · source · action", overflow="fold", ratio=3)
    table.add_column("PS3.15 · finding", overflow="fold", ratio=4)
    table.add_column("justification", overflow="fold", ratio=3)
    for finding in report.findings:
        table.add_row(
            f"[bold]{escape(finding.label)}[/bold]\n{escape(finding.source)}\n{finding.action}",
            f"{escape(finding.profile)}\n{escape(finding.problem)}",
            escape(finding.justification) if finding.justification else "[bold]MISSING[/bold]",
            style="dim" if finding.justified else "red",
        )
    return table


def check(
    targets: list[str] | None = typer.Argument(
        None,
        help="Project slugs (projects/<slug>.yaml) or allow-list files (audited with no options).",
        metavar="PROJECT|FILE",
        show_default=False,
    ),
    all_projects: bool = typer.Option(
        False, "--all", help="Check every project in the projects folder."
    ),
) -> None:
    """Validate allow-lists and audit them against DICOM PS3.15.

    Exit 0 when every attribute let out beyond the Basic Profile (plus claimed options) carries
    a justification, 1 when one does not, 2 when an allow-list or project file is invalid.
    """
    with operator_errors():
        names = list(targets or [])
        if all_projects:
            names += [slug for slug in list_projects() if slug not in names]
        if not names:
            raise PixlConfigError(
                "name a project or an allow-list file to check, or use --all "
                "(e.g. `pixl allowlist check chest-xray`)"
            )
        # Validate everything before printing anything: a broken file is the one thing to fix.
        reports = [_load_report(name) for name in names]
    failed = False
    for report in reports:
        if report.findings:
            console.print(_findings_table(report))
        style = "green" if report.passed else "red"
        console.print(Text(report.summary(), style=style), soft_wrap=True)
        if report.unused_options:
            console.print(
                Text(
                    f"  note: claimed but no entry relies on: {', '.join(report.unused_options)}",
                    style="yellow",
                ),
                soft_wrap=True,
            )
        failed = failed or not report.passed
    if failed:
        err_console.print(
            "[red]allow-list check failed:[/red] add a 'justification:' to each entry marked "
            "MISSING, or change its action",
            highlight=False,
            soft_wrap=True,
        )
    raise typer.Exit(EXIT_DATA_ERROR if failed else EXIT_OK)


def preview_cmd(
    file: Path = typer.Argument(..., help="One DICOM file to de-identify (nothing is written)."),
    project: str = typer.Option(
        ..., "--project", "-p", help="Project slug (projects/<slug>.yaml)."
    ),
) -> None:
    """Show every attribute of FILE before and after the project's allow-list.

    Uses the engine orthanc-anon runs, so the "after" side is exactly what would leave. The
    "before" side shows identifiers: run it inside the hospital and do not paste it anywhere.
    """
    from pixl_core.dicom.preview import (
        ACTION_ADDED,
        ACTION_CREATOR,
        ACTION_FILE_META,
        ACTION_NOT_LISTED,
        ACTION_REFUSED,
        REMOVED,
        preview,
        refusal_reason,
    )

    action_styles = {
        ACTION_NOT_LISTED: "dim",
        ACTION_REFUSED: "red",
        ACTION_ADDED: "cyan",
        ACTION_FILE_META: "dim",
        ACTION_CREATOR: "dim",
    }
    with operator_errors():
        config = load_project(project)
        hasher = ProjectHasher.for_project(config.slug)
        try:
            data = file.read_bytes()
        except OSError:
            raise PixlConfigError(f"input not found or unreadable: {file}") from None
    rows = preview(data, config, hasher)
    reason = refusal_reason(rows)
    table = Table(title=f"{file.name} with project {config.slug}", title_justify="left")
    table.add_column("tag", no_wrap=True)
    table.add_column("attribute", overflow="fold")
    table.add_column("VR")
    table.add_column("before", overflow="fold")
    table.add_column("after", overflow="fold")
    table.add_column("action")
    for row in rows:
        if row.label == "(instance)":
            continue
        style = action_styles.get(row.action)
        if style is None and row.after == REMOVED:
            style = "dim"
        elif style is None and row.before != row.after:
            style = "yellow"
        table.add_row(
            row.tag,
            escape("  " * row.depth + row.label),
            row.vr,
            escape(row.before),
            escape(row.after),
            row.action,
            style=style,
        )
    console.print(table)
    if reason is not None:
        console.print(
            Text(f"refused: {reason}; nothing of this instance would leave", style="red"),
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_OK)
    leaving = sum(
        1
        for r in rows
        if r.after != REMOVED and r.vr and r.action not in (ACTION_FILE_META, ACTION_CREATOR)
    )
    removed = sum(1 for r in rows if r.after == REMOVED and r.vr)
    console.print(f"{leaving} attributes would leave, {removed} removed", highlight=False)
    raise typer.Exit(EXIT_OK)


allowlist_app.command("check")(check)
allowlist_app.command("preview")(preview_cmd)
allowlist_app.command("diff")(diff_cmd)
