"""``pixl anonymise``: de-identify DICOM files offline with exactly the code orthanc-anon runs.

Output files are named ``<study>/<series>/<instance>.dcm`` from pseudonymised UIDs only, never
from input names, which often carry MRNs or accession numbers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pixl_cli.output import EXIT_DATA_ERROR, EXIT_OK, console, err_console, operator_errors
from pixl_core.config.projects import load_project
from pixl_core.errors import PixlConfigError
from pixl_core.hashing import ProjectHasher

REFUSED_INTERNAL = "internal_error"
REFUSED_DUPLICATE = "duplicate_instance"


def iter_inputs(paths: list[Path]) -> Iterator[Path]:
    """Files given directly, and every file under folders given (recursively, sorted)."""
    for path in paths:
        try:
            is_dir, is_file = path.is_dir(), path.is_file()
        except OSError as exc:  # e.g. a name too long for the file system: not echoed
            raise PixlConfigError(
                f"an input cannot be read ({exc.strerror}): give existing files or folders"
            ) from None
        if is_dir:
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        elif is_file:
            yield path
        else:
            raise PixlConfigError(f"input not found: {path}; give existing files or folders")


def anonymise(
    paths: list[Path] = typer.Argument(..., help="DICOM files or folders (searched recursively)."),
    project: str = typer.Option(
        ..., "--project", "-p", help="Project slug (projects/<slug>.yaml)."
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for de-identified files."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="List refused input paths."),
) -> None:
    """De-identify DICOM files with the project's allow-list, as orthanc-anon would.

    Exit 0 when every input was de-identified or refused by policy, 1 when an input could not
    be read (the others are still done), 2 for bad usage or configuration.
    """
    from pixl_core.dicom.deid import REFUSED_UNREADABLE, Refused, deidentify_bytes

    with operator_errors():
        config = load_project(project)
        hasher = ProjectHasher.for_project(config.slug)
        files = list(iter_inputs(paths))
    done = 0
    refused: Counter[str] = Counter()
    refused_paths: list[tuple[Path, str]] = []
    written: set[str] = set()
    descriptors: Counter[str] = Counter()  # kept descriptions cleaned, by kind of finding
    with Progress(
        TextColumn("de-identifying"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task("files", total=len(files))
        for path in files:
            try:
                result = deidentify_bytes(path.read_bytes(), config, hasher)
            except OSError:
                refused[REFUSED_UNREADABLE] += 1
                refused_paths.append((path, REFUSED_UNREADABLE))
            except Refused as refusal:
                refused[refusal.reason] += 1
                refused_paths.append((path, refusal.reason))
            except Exception:  # an engine error on one file must not stop the others
                refused[REFUSED_INTERNAL] += 1
                refused_paths.append((path, REFUSED_INTERNAL))
            else:
                if result.sop_instance_uid in written:
                    # Two inputs of the same instance (e.g. two transfer syntaxes of one file):
                    # the first is kept, the second is not written over it.
                    refused[REFUSED_DUPLICATE] += 1
                    refused_paths.append((path, REFUSED_DUPLICATE))
                else:
                    target = output / result.study_uid / result.series_uid
                    target.mkdir(parents=True, exist_ok=True)
                    (target / f"{result.sop_instance_uid}.dcm").write_bytes(result.data)
                    written.add(result.sop_instance_uid)
                    done += 1
                    descriptors["cleaned"] += result.descriptors.cleaned
                    descriptors.update(result.descriptors.by_kind)
            progress.advance(task)
    reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(refused.items()))
    cleaned = descriptors.pop("cleaned", 0)
    kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(descriptors.items()))
    console.print(
        f"de-identified {done}, refused {sum(refused.values())}"
        + (f" ({reasons})" if reasons else "")
        + (f", descriptions cleaned {cleaned} ({kinds})" if cleaned else ""),
        highlight=False,
    )
    if verbose:
        for path, reason in refused_paths:
            err_console.print(f"refused {reason}: {path}", highlight=False, soft_wrap=True)
    failed = refused[REFUSED_UNREADABLE] + refused[REFUSED_INTERNAL]
    raise typer.Exit(EXIT_DATA_ERROR if failed else EXIT_OK)
