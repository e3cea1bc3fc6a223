"""``pixl reports``: radiology report tools.

``pixl reports check --input IN.jsonl --output OUT.jsonl`` runs the second-method checker
(``pixl_core.text.checker``) on its own, exactly as the report worker runs it: one JSON line per report
in, one line of kinds and offsets out (never the matched text). See ``pixl_ehr.checker_io`` for
the line formats and validation rules.

Exit codes: 0 when every report was checked (flagged or not: a flag is a result, not a failure),
1 at the first malformed input line (no output is written), 2 when a file cannot be read or
written or the command is misused.

This sub-app is shared: the review commands for flagged reports (``flagged``, ``show``,
``approve``, ``redact``, ``reject``, ``history``, in ``pixl_cli.review_cmds``) are registered on ``reports_app`` by their owner, next
to ``check``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from pixl_cli.output import console, err_console, operator_errors
from pixl_cli.review_cmds import approve, flagged, history, redact, reject, show

if TYPE_CHECKING:
    from pixl_ehr.checker_io import CheckSummary

reports_app = typer.Typer(
    name="reports",
    help="Radiology reports: run the second-method identifier check (and review flagged ones).",
    no_args_is_help=True,
    add_completion=False,
)

# Below this size the check takes well under a second: a progress bar would only flicker.
PROGRESS_MIN_BYTES = 1_000_000


@reports_app.callback()
def reports() -> None:
    """Radiology reports: run the second-method identifier check (and review flagged ones)."""


@reports_app.command("check")
def check(
    input_path: Path = typer.Option(
        ..., "--input", "-i", help="JSONL: one {id, text, identifiers} object a line."
    ),
    output_path: Path = typer.Option(
        ..., "--output", "-o", help="JSONL written: one {id, flagged, findings} object a line."
    ),
) -> None:
    """Check de-identified reports for the patient's identifiers and identifier patterns.

    Findings are kinds and character offsets only. Exit 0 when all were checked, 1 at the first
    malformed line (nothing written), 2 when a file cannot be read or written.
    """
    with operator_errors():
        summary = _run(input_path, output_path)
    console.print(summary.line(), highlight=False, soft_wrap=True)


def _run(input_path: Path, output_path: Path) -> CheckSummary:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from pixl_ehr.checker_io import check_file  # the checker's patterns: only when it runs

    try:
        size = input_path.stat().st_size
    except OSError:
        size = 0  # check_file reports the unreadable input with its own message
    if size < PROGRESS_MIN_BYTES:
        return check_file(input_path, output_path)
    with Progress(
        TextColumn("checking reports"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,  # keep logs and pipes clean
    ) as progress:
        task = progress.add_task("reports", total=size)
        return check_file(input_path, output_path, progress=lambda n: progress.advance(task, n))


# The review of flagged reports (pixl_cli.review_cmds, on pixl_ehr.review).
reports_app.command("flagged")(flagged)
reports_app.command("approve")(approve)
reports_app.command("redact")(redact)
reports_app.command("reject")(reject)
reports_app.command("show")(show)
reports_app.command("history")(history)
