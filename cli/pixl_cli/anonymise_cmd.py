"""``pixl anonymise``: de-identify DICOM files offline with exactly the code orthanc-anon runs.

Output files are named ``<study>/<series>/<instance>.dcm`` from pseudonymised UIDs only, never
from input names, which often carry MRNs or accession numbers.

**Parallel jobs (``--jobs N``, default: the cores this process may use).** The engine is
CPU-bound Python, so files are spread over worker *processes*. The parent imports the engine
and loads the project first, then forks the workers, which inherit both (no re-import, no
pickled project). A worker reads its file, de-identifies it and writes the result under a
temporary name (``<instance>.dcm.<input number>.partial``, pseudonymised UID and a number
only); only its outcome (UIDs, a refusal reason, counts) travels back. The parent settles
outcomes **in input order**: it renames the first file of each instance into place and drops a
later duplicate, exactly as one job does, so the output is byte-identical whatever N (one job
runs the same two functions in-process). Nothing large crosses a pipe and memory is one file's
input and output per worker.

One file cannot cost the others: an exception in the engine is that file's
``internal_error``; a worker that dies (a crash in a C decoder) breaks the pool, and then the
files that were in flight are each run again alone in a fresh worker, so only a file that
crashes on its own is refused, and the rest carry on in a new pool.

Scaling past the cores of this machine: the work per file is independent and the parent does
little besides renaming, so speed-up is near-linear with cores until the disk (reading and
writing ~2x the data) or memory (two files' worth per worker) is the limit; several hosts
each take a part of the folder (e.g. by study folder), since output names depend only on the
project's key and the input.
"""

from __future__ import annotations

import gc
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from pixl_cli.output import EXIT_DATA_ERROR, EXIT_OK, console, err_console, operator_errors
from pixl_core.config.pixel_policy import PixelText
from pixl_core.config.projects import load_project
from pixl_core.errors import PixlConfigError
from pixl_core.hashing import ProjectHasher

if TYPE_CHECKING:
    from concurrent.futures import Future, ProcessPoolExecutor

    from pixl_core.config.projects import Project

REFUSED_INTERNAL = "internal_error"
REFUSED_DUPLICATE = "duplicate_instance"
MAX_JOBS = 256
# The progress bar is redrawn at most this often, by the parent itself: no refresh thread
# runs while worker processes are forked (a thread holding a lock at fork time, e.g. stderr's
# while it draws, would leave that lock held forever in the child).
PROGRESS_REFRESH_S = 0.1


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


def default_jobs() -> int:
    """The cores this process may run on (its CPU affinity, which containers often limit)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Outcome:
    """What one input came to: a written (partial) file, or a refusal reason. No identifier."""

    index: int
    reason: str | None = None
    sop_instance_uid: str = ""
    partial: Path | None = None
    final: Path | None = None
    cleaned: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


# Set in the parent before the workers are forked, so they inherit it (see the module).
_job: tuple[Project, ProjectHasher, Path] | None = None


def _start_job(config: Project, hasher: ProjectHasher, output: Path) -> None:
    global _job
    _job = (config, hasher, output)


def deidentify_file(index: int, path: Path) -> Outcome:
    """Read, de-identify and write one input under a temporary name (in a worker, or in the
    parent for one job). Every failure becomes a reason, so one file never stops the others."""
    from pixl_core.dicom.deid import REFUSED_UNREADABLE, Refused, deidentify_bytes

    assert _job is not None, "_start_job first"
    config, hasher, output = _job
    try:
        result = deidentify_bytes(path.read_bytes(), config, hasher)
    except OSError:
        return Outcome(index, REFUSED_UNREADABLE)
    except Refused as refusal:
        return Outcome(index, refusal.reason)
    except Exception:  # an engine error on one file must not stop the others
        return Outcome(index, REFUSED_INTERNAL)
    target = output / result.study_uid / result.series_uid
    final = target / f"{result.sop_instance_uid}.dcm"
    partial = target / f"{result.sop_instance_uid}.dcm.{index}.partial"
    try:
        target.mkdir(parents=True, exist_ok=True)
        result.write_to(partial)
    except OSError:
        partial.unlink(missing_ok=True)
        return Outcome(index, REFUSED_INTERNAL)
    return Outcome(
        index,
        None,
        result.sop_instance_uid,
        partial,
        final,
        result.descriptors.cleaned,
        dict(result.descriptors.by_kind),
    )


class Summary:
    """Outcomes settled in input order: the first file of an instance is put in place, a later
    one is refused as a duplicate (two transfer syntaxes of one file, say)."""

    def __init__(self) -> None:
        self.done = 0
        self.refused: Counter[str] = Counter()
        self.refused_indexes: list[tuple[int, str]] = []
        self.written: set[str] = set()
        self.descriptors: Counter[str] = Counter()  # kept descriptions cleaned, by kind

    def settle(self, outcome: Outcome) -> None:
        reason = outcome.reason
        if reason is None and outcome.sop_instance_uid in self.written:
            reason = REFUSED_DUPLICATE
        if reason is not None:
            if outcome.partial is not None:
                outcome.partial.unlink(missing_ok=True)
            self.refused[reason] += 1
            self.refused_indexes.append((outcome.index, reason))
            return
        assert outcome.partial is not None and outcome.final is not None
        outcome.partial.replace(outcome.final)
        self.written.add(outcome.sop_instance_uid)
        self.done += 1
        self.descriptors["cleaned"] += outcome.cleaned
        self.descriptors.update(outcome.by_kind)


@contextmanager
def collector_paused() -> Iterator[None]:
    """The garbage collector off while the engine is imported and the project loaded: that
    creates only long-lived objects (modules, classes, the allow-lists), so there is no garbage
    cycle to find, yet the collector's full passes over them cost ~20 ms of the start-up
    (``import pydicom`` and the engine; issue 12). They are then frozen (they live as long as
    the process, and later passes skip them) and the collector is back on before any file is
    read."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def keep_freed_buffers() -> None:
    """Ask glibc to keep freed multi-megabyte buffers for the next file instead of handing
    them back to the kernel: each file is read into one such buffer and written from another,
    and a fresh 7 MB buffer costs ~1,800 page faults (~3 ms on a VM) before it holds a byte
    (see "Two malloc regimes" in benchmarks/README.md). The heap then stays at about the
    largest file's input plus output, which it reaches anyway. No-op off glibc."""
    import ctypes

    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameters, <malloc.h>
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(m_mmap_threshold, 1 << 30)
        libc.mallopt(m_trim_threshold, 1 << 30)
    except (OSError, AttributeError):
        pass


def _fork_context() -> object | None:
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork") if "fork" in methods else None


def _pool(
    workers: int, config: Project, hasher: ProjectHasher, output: Path
) -> ProcessPoolExecutor:
    # Everything imported so far (pydicom, numpy, the engine: ~100 MB) is shared with the
    # forked workers copy-on-write; a worker's garbage collector would write to every object's
    # header and so copy every page. Frozen objects are left alone by the collector.
    from concurrent.futures import ProcessPoolExecutor  # multiprocessing: only when forking

    gc.freeze()
    return ProcessPoolExecutor(
        workers,
        mp_context=_fork_context(),  # type: ignore[arg-type]
        initializer=_start_job,
        initargs=(config, hasher, output),
    )


def _run_alone(
    index: int, path: Path, config: Project, hasher: ProjectHasher, output: Path
) -> Outcome:
    """One file in a fresh worker of its own: a crash then says which file it was."""
    from concurrent.futures.process import BrokenProcessPool

    with _pool(1, config, hasher, output) as pool:
        try:
            return pool.submit(deidentify_file, index, path).result()
        except BrokenProcessPool:
            return Outcome(index, REFUSED_INTERNAL)


def run_parallel(
    files: list[Path],
    jobs: int,
    config: Project,
    hasher: ProjectHasher,
    output: Path,
    settle: Callable[[Outcome], None],
) -> None:
    """De-identify ``files`` on ``jobs`` worker processes, settling outcomes in input order."""
    from concurrent.futures.process import BrokenProcessPool

    position = 0
    while position < len(files):
        pool = _pool(jobs, config, hasher, output)
        # A bounded window of submissions keeps the parent's queue small on huge folders.
        window = jobs * 4
        futures: dict[int, Future[Outcome]] = {}
        crashed_at: int | None = None
        try:
            nxt = position
            while position < len(files):
                try:  # a broken pool raises in submit() as well as in result()
                    while nxt < len(files) and nxt < position + window:
                        futures[nxt] = pool.submit(deidentify_file, nxt, files[nxt])
                        nxt += 1
                    outcome = futures[position].result()
                except BrokenProcessPool:
                    crashed_at = position
                    break
                del futures[position]
                settle(outcome)
                position += 1
        except BaseException:  # Ctrl-C, a full disk: no temporary file is left behind
            pool.shutdown(wait=True, cancel_futures=True)
            for future in futures.values():
                if not future.cancelled() and future.done() and not future.exception():
                    partial = future.result().partial
                    if partial is not None:
                        partial.unlink(missing_ok=True)
            raise
        pool.shutdown(wait=True, cancel_futures=True)
        if crashed_at is None:
            break
        # The worker that died was running one of the files in flight (at most `jobs` of
        # the window, from `position` on): run each of those alone, then go on with a new pool.
        for index in range(position, min(position + window, len(files))):
            done = futures.get(index)
            if done is not None and not done.cancelled() and done.done() and not done.exception():
                settle(done.result())
            else:
                settle(_run_alone(index, files[index], config, hasher, output))
        position = min(position + window, len(files))


def anonymise(
    paths: list[Path] = typer.Argument(..., help="DICOM files or folders (searched recursively)."),
    project: str = typer.Option(
        ..., "--project", "-p", help="Project slug (projects/<slug>.yaml)."
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for de-identified files."),
    jobs: int | None = typer.Option(
        None,
        "--jobs",
        "-j",
        help="Files de-identified at once, each in its own process (default: the number of "
        "cores). The output is the same for any number.",
        show_default=False,
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="List refused input paths."),
) -> None:
    """De-identify DICOM files with the project's allow-list, as orthanc-anon would.

    Exit 0 when every input was de-identified or refused by policy, 1 when an input could not
    be read (the others are still done), 2 for bad usage or configuration.
    """
    with collector_paused():
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        # Imported before forking, so that every worker inherits the engine already loaded.
        from pixl_core.dicom.deid import REFUSED_UNREADABLE

        with operator_errors():
            if jobs is not None and not 1 <= jobs <= MAX_JOBS:
                raise PixlConfigError(f"--jobs must be a whole number from 1 to {MAX_JOBS}")
            config = load_project(project)
            hasher = ProjectHasher.for_project(config.slug)
            files = list(iter_inputs(paths))
        if config.pixel_text is not PixelText.OFF:  # OpenCV and tesseract, imported if used
            from pixl_core.dicom.pixels import load_detector

            load_detector()
    workers = min(jobs or default_jobs(), max(len(files), 1))
    keep_freed_buffers()  # before forking: the workers inherit it
    summary = Summary()
    _start_job(config, hasher, output)
    with Progress(
        TextColumn("de-identifying"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        auto_refresh=False,
    ) as progress:
        task = progress.add_task("files", total=len(files))
        drawn = time.monotonic()

        def settle(outcome: Outcome) -> None:
            nonlocal drawn
            summary.settle(outcome)
            progress.advance(task)
            if time.monotonic() - drawn >= PROGRESS_REFRESH_S:
                progress.refresh()
                drawn = time.monotonic()

        if workers == 1:
            for index, path in enumerate(files):
                settle(deidentify_file(index, path))
        else:
            run_parallel(files, workers, config, hasher, output, settle)
    refused = summary.refused
    reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(refused.items()))
    descriptors = summary.descriptors
    cleaned = descriptors.pop("cleaned", 0)
    kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(descriptors.items()))
    console.print(
        f"de-identified {summary.done}, refused {sum(refused.values())}"
        + (f" ({reasons})" if reasons else "")
        + (f", descriptions cleaned {cleaned} ({kinds})" if cleaned else ""),
        highlight=False,
    )
    if verbose:
        for index, reason in summary.refused_indexes:
            err_console.print(f"refused {reason}: {files[index]}", highlight=False, soft_wrap=True)
    failed = refused[REFUSED_UNREADABLE] + refused[REFUSED_INTERNAL]
    raise typer.Exit(EXIT_DATA_ERROR if failed else EXIT_OK)
