"""``pixl allowlist diff BASE [HEAD]``: what a change to the allow-lists changes in what leaves.

The reviewer of an allow-list pull request needs the effect, not the YAML diff: which attributes
start or stop leaving, for which project and which devices, with the PS3.15 verdict and the
justification of each (``pixl_core/config/allowlist_diff.py`` says how it is computed). The
same report prints for a terminal, as a markdown table for a pull-request comment or a job
summary (``--markdown``), or as JSON for tools (``--json``).

Exit codes: 0 nothing newly let out beyond PS3.15 without a justification, 1 something is,
2 bad usage (not a repository, unknown revision, a broken allow-list on the head side).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from pixl_cli.anonymise_cmd import iter_inputs
from pixl_cli.git_revision import repository_root, work_tree, write_out
from pixl_cli.output import EXIT_DATA_ERROR, EXIT_OK, console, err_console, operator_errors
from pixl_core.errors import PixlConfigError

if TYPE_CHECKING:  # the diff and the sample need pydicom: imported by the command (main.py)
    from pixl_core.config.allowlist_diff import DiffReport
    from pixl_core.dicom.change_sample import Sample


def diff_cmd(
    base: str = typer.Argument(..., help="The revision to compare with (e.g. origin/main)."),
    head: str | None = typer.Argument(
        None, help="The changed revision (default: the work tree, committed or not)."
    ),
    repo: Path = typer.Option(
        Path("."), "--repo", help="A folder inside the git clone (default: here)."
    ),
    markdown: bool = typer.Option(False, "--markdown", help="A markdown table (PR comment)."),
    as_json_output: bool = typer.Option(False, "--json", help="One JSON object, for tools."),
    sample: Path | None = typer.Option(
        None,
        "--sample",
        help="DICOM files (a folder): per changed attribute, the files it applies to and one "
        "before (VR, length) → after (de-identified) pair.",
    ),
) -> None:
    """Show what leaves differently between BASE and HEAD, project by project.

    Every project whose effective allow-list changes (base and modality lists, manufacturer
    overrides, ps315_options, pixel_text, benign markers): attributes that newly leave, stop
    leaving or change action, with the PS3.15 verdict and the justification. Exit 1 when
    something newly leaves that PS3.15 and the claimed options do not allow and no
    justification covers.
    """
    from pixl_core.config.allowlist_diff import as_json, compare_trees
    from pixl_core.dicom.change_sample import SampleSet, sample_change

    with operator_errors():
        if markdown and as_json_output:
            raise PixlConfigError("choose one of --markdown and --json")
        root = repository_root(repo.resolve())
        sample_files = list(iter_inputs([sample])) if sample is not None else None
        with tempfile.TemporaryDirectory(prefix="pixl-allowlist-diff-") as folder:
            base_tree = write_out(root, base, Path(folder) / "base")
            head_tree = write_out(root, head, Path(folder) / "head") if head else work_tree(root)
            report = compare_trees(base_tree, head_tree)
    samples: list[Sample | None] | None = None
    sample_note = ""
    if sample_files is not None:
        sample_set = SampleSet.read(sample_files)
        samples = [
            sample_change(change, report.head_projects.get(change.project), sample_set)
            for change in report.changes
        ]
        sample_note = (
            f"sample: DICOM files read {len(sample_set.files)}, unreadable {sample_set.unreadable}"
        )
    if as_json_output:
        document = as_json(report)
        if samples is not None:
            document["sample"] = {
                "files": len(sample_set.files),
                "unreadable": sample_set.unreadable,
            }
            for row, found in zip(document["changes"], samples, strict=True):
                row["sample"] = None if found is None else dataclasses.asdict(found)
        print(json.dumps(document, indent=2, ensure_ascii=False))
    elif markdown:
        print(to_markdown(report, samples, sample_note))
    else:
        _print_terminal(report, samples, sample_note)
    if not report.passed:
        err_console.print(
            f"[red]allow-list diff failed:[/red] {len(report.failing)} newly let out beyond "
            "PS3.15 without a justification; add a 'justification:', claim the option that "
            "allows it, or change its action",
            highlight=False,
            soft_wrap=True,
        )
    raise typer.Exit(EXIT_OK if report.passed else EXIT_DATA_ERROR)


def _summary(report: DiffReport) -> str:
    if not report.changes:
        return f"No difference in what leaves between {report.base} and {report.head}."
    projects = report.projects()
    failing = len(report.failing)
    verdict = (
        "nothing let out beyond PS3.15 without a justification"
        if failing == 0
        else f"{failing} NOT allowed by PS3.15 nor justified"
    )
    return (
        f"{len(report.changes)} change{'s' if len(report.changes) != 1 else ''} in "
        f"{len(projects)} project{'s' if len(projects) != 1 else ''} "
        f"({', '.join(projects)}): {verdict}."
    )


def _print_terminal(
    report: DiffReport, samples: list[Sample | None] | None, sample_note: str = ""
) -> None:
    from pixl_core.config.allowlist_diff import Status

    styles = {Status.UNJUSTIFIED: "red", Status.JUSTIFIED: "yellow", Status.NOTHING: "dim"}
    console.print(Text(f"What leaves: {report.base} → {report.head}", style="bold"), soft_wrap=True)
    if sample_note:
        console.print(sample_note, highlight=False, soft_wrap=True)
    for note in report.notes:
        console.print(Text(f"note: {note}", style="yellow"), soft_wrap=True)
    indexed = list(enumerate(report.changes))
    for project in report.projects():
        table = Table(title=project, title_justify="left", show_lines=True)
        table.add_column("change · attribute · applies to", overflow="fold", ratio=3)
        table.add_column("before → after", overflow="fold", ratio=2)
        table.add_column("PS3.15 · verdict", overflow="fold", ratio=4)
        table.add_column("justification", overflow="fold", ratio=3)
        if samples is not None:
            table.add_column("sample", overflow="fold", ratio=3)
        for index, change in indexed:
            if change.project != project:
                continue
            cells = [
                f"{change.kind.value}\n[bold]{escape(change.attribute)}[/bold]\n"
                f"{escape(change.scope)}",
                escape(f"{change.before} → {change.after}"),
                escape(f"{change.profile}\n{change.verdict}".strip()),
                escape(change.justification) if change.justification else "",
            ]
            if samples is not None:
                cells.append(escape(_sample_text(samples[index])))
            table.add_row(*cells, style=styles.get(change.status))
        console.print(table)
    style = "green" if report.passed else "red"
    console.print(Text(_summary(report), style=style), soft_wrap=True)


def _sample_text(found: Sample | None) -> str:
    if found is None:
        return ""
    if found.files == 0:
        return "0 files"
    text = f"{found.files} file{'s' if found.files != 1 else ''}"
    if found.before is not None:
        text += f": {found.before} → {found.after}"
    elif found.after is not None:
        text += f": {found.after}"
    return text


def _cell(text: str | None) -> str:
    """Text safe inside one markdown table cell."""
    if not text:
        return ""
    return " ".join(text.split()).replace("\\", "\\\\").replace("|", "\\|")


def to_markdown(
    report: DiffReport, samples: list[Sample | None] | None = None, sample_note: str = ""
) -> str:
    """Headed tables, one per project, for a pull-request comment or ``$GITHUB_STEP_SUMMARY``."""
    lines = [f"## What leaves: `{report.base}` → `{report.head}`", ""]
    if sample_note:
        lines += [sample_note, ""]
    lines.extend(f"> note: {_cell(note)}" for note in report.notes)
    if report.notes:
        lines.append("")
    mark = "✅" if report.passed else "❌"
    lines += [f"{mark} {_summary(report)}", ""]
    columns = ["", "change", "attribute", "applies to", "before → after", "PS3.15", "verdict"]
    columns.append("justification")
    if samples is not None:
        columns.append("sample")
    for project in report.projects():
        lines += [f"### {project}", "", "| " + " | ".join(columns) + " |"]
        lines.append("|" + "---|" * len(columns))
        for index, change in enumerate(report.changes):
            if change.project != project:
                continue
            cells = [
                "❌" if change.fails else "",
                change.kind.value,
                f"`{_cell(change.attribute)}`",
                _cell(change.scope),
                _cell(f"{change.before} → {change.after}"),
                _cell(change.profile),
                _cell(change.verdict),
                _cell(change.justification),
            ]
            if samples is not None:
                cells.append(_cell(_sample_text(samples[index])))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
