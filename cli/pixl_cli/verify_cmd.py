"""``pixl verify PROJECT`` and ``pixl manifest PROJECT``: check what reached the DSH, and
rewrite the images' manifest from PIXL's records.

The checking is ``pixl_core.dsh.verify`` (a reader per destination kind, then a pure
comparison); this module is the operator's side: arguments, a progress bar (a verify may read
thousands of zips), the report, ``--requeue`` and the exit code.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from pixl_cli.database import connection
from pixl_cli.output import EXIT_DATA_ERROR, console, err_console, operator_errors
from pixl_core.config.projects import SLUG_RULE, Project, is_valid_slug, load_project
from pixl_core.errors import PixlConfigError, PixlError

if TYPE_CHECKING:  # pixl_core.dsh reads PIXL's records (psycopg2): imported by the commands
    from pixl_core.dsh import manifest_writer
    from pixl_core.dsh.verify import DestinationKind

WRITER_ID = "pixl-cli"
LOCK_WAIT_SECONDS = 60.0


class FtpsUnreadable(PixlError):
    """The destination could not be read: exit 1 (data, not usage), one line with the fix."""


def _paragraphs(*paragraphs: str) -> str:
    """Help text as paragraphs the terminal wraps (a docstring's line breaks would stay)."""
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


VERIFY_HELP = _paragraphs(
    """Re-read the project's destination and compare it with its manifest and PIXL's
    records.""",
    """For an FTPS DSH: list <project>/dicom/, download every zip and compute its SHA-256 (a
    progress bar shows how far), read manifest.json, and report the zips that are missing,
    extra (PIXL did not export them) or corrupt (other bytes than PIXL sent), and whether the
    manifest lists exactly the exported zips with their digests and instance counts. Names
    are pseudonymised UIDs only; a file whose name PIXL never writes is counted, not
    named.""",
    """Exit 0 when all is well; 1 when anything is wrong, with one line naming the fix for
    each kind of problem (`--requeue` for missing or corrupt studies, `pixl manifest` for the
    manifest); 2 for a bad argument or configuration.""",
)
MANIFEST_HELP = _paragraphs(
    """Rewrite <project>/dicom/manifest.json on the DSH now, from PIXL's records: every
    exported zip with its SHA-256, instance count and size.""",
    """orthanc-anon keeps it current while it runs; this is for when `pixl verify` says it is
    missing or stale, or orthanc-anon is stopped.""",
)


class _Bar:
    """``pixl_core.dsh.verify.Progress`` on a rich progress bar (stderr, gone when done)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task = progress.add_task("reading", total=None)

    def start(self, total: int) -> None:
        self.progress.update(self.task, total=total)

    def advance(self, done: int = 1) -> None:
        self.progress.advance(self.task, done)


def _project(slug: str) -> tuple[Project, str]:
    """The project and its image destination kind; one-line errors for anything else."""
    from pixl_core.dsh import kinds

    if not is_valid_slug(slug):
        raise PixlConfigError(f"PROJECT must be a project slug ({SLUG_RULE})")
    project = load_project(slug)
    kind = kinds.image_destination(project)
    if kind is None:
        raise PixlConfigError(
            f"projects/{slug}.yaml has no 'destination:', so nothing was exported to check; "
            "add one naming the project's DSH"
        )
    return project, kind


def _kind(kind_name: str, slug: str) -> DestinationKind:
    from pixl_core.dsh.verify import KINDS

    factory = KINDS.get(kind_name)
    if factory is None:
        raise PixlConfigError(
            f"pixl verify cannot check {kind_name} destinations yet (project {slug}); it "
            f"checks: {', '.join(sorted(KINDS))}"
        )
    return factory()


def verify(
    project: str = typer.Argument(..., help="Project whose destination to check."),
    requeue: bool = typer.Option(
        False,
        "--requeue",
        help="Put the missing and corrupt studies back in the queue to be exported again "
        "(corrupt zips are deleted from the DSH first), and rewrite the manifest.",
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object instead of lines."),
) -> None:
    """Re-read the project's destination; compare it with its manifest and PIXL's records."""
    from pixl_core.db import exported_studies
    from pixl_core.dsh.verify import compare, expected_items
    from pixl_core.transport.dicomweb import DicomwebError
    from pixl_core.transport.ftps import FtpsError

    with operator_errors():
        target, kind_name = _project(project)
        kind = _kind(kind_name, project)
        with connection() as conn:
            snapshot = exported_studies.exported(conn, project)
            with Progress(
                TextColumn(f"{project}: reading the destination"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=err_console,
                transient=True,
            ) as progress:
                expected = expected_items(snapshot, kind)
                try:
                    holding = kind.read(target, _Bar(progress), sorted(expected))
                except (FtpsError, DicomwebError) as exc:
                    raise FtpsUnreadable(
                        f"{exc}; check that the destination answers and projects/{project}.yaml "
                        f"names it, then run `pixl verify {project}` again"
                    ) from None
            result = compare(
                project,
                kind_name,
                expected,
                holding,
                has_manifest=kind.has_manifest,
                busy=snapshot.busy,
            )
            queued = _requeue(conn, target, kind, snapshot, result) if requeue else None
    if as_json:
        document = result.as_json()
        if queued is not None:
            document["requeued"] = queued
        typer.echo(json.dumps(document, sort_keys=True))
    else:
        for line in result.lines():
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        if queued is not None:
            console.print(
                f"{project}: {queued} stud(ies) queued again: orthanc-raw fetches them again "
                "(from its cache when it still holds them) and orthanc-anon uploads fresh zips; "
                f"`pixl status {project}` shows them go, then run `pixl verify {project}`",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
    if result.problems:
        raise typer.Exit(EXIT_DATA_ERROR)


def _requeue(conn, target, kind, snapshot, result) -> int:  # type: ignore[no-untyped-def]
    """Delete the corrupt items, queue the missing and corrupt studies again, and rewrite the
    manifest (which then no longer lists them); return how many studies were queued."""
    from pixl_core.db import exported_studies

    by_key = {kind.key(z): z.pseudo_study_uid for z in snapshot.zips}
    if result.corrupt and kind.remove is not None:
        kind.remove(target, result.corrupt)
    queued = exported_studies.requeue_exported(
        conn, target.slug, [by_key[n] for n in result.missing], "dsh_missing"
    ) + exported_studies.requeue_exported(
        conn, target.slug, [by_key[n] for n in result.corrupt], "dsh_corrupt"
    )
    if kind.has_manifest:
        _write_manifest(conn, target)
    return queued


def _write_manifest(conn, target: Project) -> manifest_writer.Written:  # type: ignore[no-untyped-def]
    """Write the manifest now, waiting (a minute at most) for a writer that holds the lock."""
    from pixl_core.dsh import manifest_writer
    from pixl_core.transport.ftps import FtpsClient, FtpsSettings

    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        written = manifest_writer.write_now(
            conn, target.slug, lambda slug: FtpsClient(FtpsSettings.for_project(target)), WRITER_ID
        )
        if written is not None:
            return written
        if time.monotonic() > deadline:
            raise PixlConfigError(
                f"another writer has held project {target.slug}'s manifest for a minute; run "
                f"`pixl manifest {target.slug}` again"
            )
        time.sleep(0.5)


def write_manifest(
    project: str = typer.Argument(..., help="Project whose images' manifest to rewrite."),
) -> None:
    """Rewrite the images' manifest.json on the DSH now, from PIXL's records."""
    from pixl_core.dsh import kinds, manifest_writer

    with operator_errors():
        target, kind_name = _project(project)
        if kind_name != kinds.FTPS:
            raise PixlConfigError(
                f"project {project}'s images go to {kind_name}, which keeps no manifest"
            )
        with connection() as conn:
            written = _write_manifest(conn, target)
    console.print(
        f"{project}: {manifest_writer.manifest_path(project)} written "
        f"({written.zips} zips, {written.instances} instances)",
        highlight=False,
    )
