"""Export throughput by destination: DICOMweb (STOW-RS) vs FTPS on the same cohort, and PIXL's
DICOMweb export against a bare STOW-RS of the same files.

One run starts a fresh local stack (no EHR module) with two projects that differ only in their
destination: ``bench-ftps`` (a copy of chest-xray.yaml: zips to the FTPS DSH) and
``bench-dicomweb`` (a copy of chest-xray-research.yaml: STOW-RS to the stack's DICOMweb Orthanc
through its TLS proxy, ``batch_size`` 20). The same synthetic cohort is populated for both.

What is timed is the **export stage alone**: both destinations are stopped while the studies
are fetched and de-identified, so every study waits in ``anonymising``; then one destination at
a time is started and its project exported (orthanc-anon's exporter threads, default 2). The
exporter finds the destination back within its probe interval (10 s), which is not counted: the
time is from the first study's ``exported_at`` to the last's, scaled by N/(N-1) (the first
study's own export is the interval not seen). Throughput is studies per minute.

**Floor**: the instances PIXL stored at the DICOMweb server are read back from it, deleted
there, and stored again with ``pixl_core.transport.dicomweb.DicomwebClient.stow_batched`` (same
batch size, same TLS proxy, as many studies at once as the exporter has threads), timed on the
wall clock: a bare STOW-RS of the same files. Ratio = PIXL DICOMweb time / bare time.

No goal is set yet: the figures are informational until the lead takes them.

Standalone: ``python -m benchmarks.destination_bench [--studies 20] [--image-size 1024]``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from benchmarks.common import Result

if TYPE_CHECKING:
    from stack.driver import Stack

TITLE = "Destinations"
BUDGET_S = 420.0
N_STUDIES = 20
IMAGE_SIZE = 1024
FTPS_PROJECT = "bench-ftps"
DICOMWEB_PROJECT = "bench-dicomweb"
EXPORT_THREADS = 2  # orthanc-anon's default PIXL_EXPORT_THREADS


def _wait(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _export_seconds(stack: Stack, project: str) -> tuple[float, int]:
    """(seconds the export of all the project's studies took, studies exported)."""
    ((first, last, count),) = stack.query(
        "SELECT min(exported_at), max(exported_at), count(*) FROM study "
        "WHERE project = %s AND state = 'exported'",
        project,
    )
    if count < 2:
        raise RuntimeError(f"{project}: {count} studies exported; need at least 2")
    return (last - first).total_seconds() * count / (count - 1), count


def _read_back(stack: Stack) -> list[list[tuple[str, bytes]]]:
    """Every instance the DICOMweb server holds, per study, read from the Orthanc behind the
    proxy; then deleted there so the bare run stores them anew."""
    base = f"http://127.0.0.1:{stack.settings.ports['dicomweb_http']}"
    session = requests.Session()
    session.auth = ("pixl", stack.settings.secrets["PIXL_DICOMWEB_PASSWORD"])
    studies = []
    for study in session.get(base + "/studies", timeout=30).json():
        instances = session.get(f"{base}/studies/{study}/instances", timeout=30).json()
        studies.append(
            [
                (
                    i["MainDicomTags"]["SOPInstanceUID"],
                    session.get(f"{base}/instances/{i['ID']}/file", timeout=60).content,
                )
                for i in instances
            ]
        )
        session.delete(f"{base}/studies/{study}", timeout=30).raise_for_status()
    return studies


def _bare_stow(stack: Stack, studies: list[list[tuple[str, bytes]]]) -> float:
    def send(study: list[tuple[str, bytes]]) -> int:
        files = dict(study)
        with stack.dicomweb() as client:
            return client.stow_batched(sorted(files), files.__getitem__, lambda uids: None)

    start = time.perf_counter()
    with ThreadPoolExecutor(EXPORT_THREADS) as pool:
        stored = sum(pool.map(send, studies))
    elapsed = time.perf_counter() - start
    if stored != sum(len(s) for s in studies):
        raise RuntimeError("the bare STOW-RS stored fewer instances than it sent")
    return elapsed


def measure(n_studies: int, image_size: int, keep: bool = False) -> list[Result]:
    from stack.driver import Stack
    from stack.settings import StackSettings
    from stack.synthetic.cohort import generate_cohort, load_into_vna

    root = Path(tempfile.mkdtemp(prefix="pixl-bench-dest-"))
    root.chmod(0o755)
    settings = StackSettings.for_tests(root)
    settings.with_reports = False
    settings.test_projects = (FTPS_PROJECT,)
    settings.test_dicomweb_projects = (DICOMWEB_PROJECT,)
    settings.extra_env = {"PIXL_EXPORT_BACKOFF_SECONDS": "1", "PIXL_FETCH_BACKOFF_SECONDS": "1"}
    stack = Stack(settings)
    case = f"{n_studies} studies, {image_size}² px"
    try:
        stack.up(timeout=120)
        cohort = generate_cohort(root / "cohort", n_studies=n_studies, image_size=image_size)
        load_into_vna(cohort, settings.url("vna"))
        studies = [s for s in cohort.studies_for("chest-xray") if s.expected_outcome == "exported"]
        stack.pixl("rate", "50", "--in-flight", "4")
        stack.supervisor("stop", "dsh", "dicomweb-tls")
        for project in (FTPS_PROJECT, DICOMWEB_PROJECT):
            csv = root / f"{project}.csv"
            csv.write_text(
                "mrn,accession_number,study_datetime\n"
                + "".join(f"{s.mrn},{s.accession_number},\n" for s in studies)
            )
            stack.pixl("populate", str(csv), "--project", project)
        projects = (FTPS_PROJECT, DICOMWEB_PROJECT)
        _wait(
            lambda: all(stack.status()[p]["anonymising"] == len(studies) for p in projects),
            BUDGET_S / 2,
            "every study to wait in anonymising",
        )
        seconds = {}
        for project, program in ((FTPS_PROJECT, "dsh"), (DICOMWEB_PROJECT, "dicomweb-tls")):
            stack.supervisor("start", program)
            stack.wait_until_settled([project], timeout=BUDGET_S / 2)
            seconds[project], count = _export_seconds(stack, project)
            if count != len(studies):
                raise RuntimeError(f"{project}: {count} of {len(studies)} studies exported")
        bare = _bare_stow(stack, _read_back(stack))
    finally:
        stack.down()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    n = len(studies)
    per_min = {project: 60 * n / s for project, s in seconds.items()}
    return [
        Result(TITLE, case, "FTPS export", per_min[FTPS_PROJECT], "studies/min", digits=1),
        Result(TITLE, case, "DICOMweb export", per_min[DICOMWEB_PROJECT], "studies/min"),
        Result(
            TITLE,
            case,
            "DICOMweb / FTPS throughput",
            per_min[DICOMWEB_PROJECT] / per_min[FTPS_PROJECT],
            "x",
        ),
        Result(TITLE, case, "bare STOW-RS", 60 * n / bare, "studies/min"),
        Result(
            TITLE,
            case,
            "PIXL DICOMweb time / bare STOW-RS time",
            seconds[DICOMWEB_PROJECT] / bare,
            "x",
            note=f"{EXPORT_THREADS} at once on both sides",
        ),
    ]


def run(budget_s: float) -> list[Result]:
    """Entry point for ``python -m benchmarks``: never raises, always tears down."""
    del budget_s  # fixed cost: BUDGET_S
    try:
        return measure(N_STUDIES, IMAGE_SIZE)
    except Exception as exc:
        message = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
        return [Result(TITLE, f"{N_STUDIES} studies", message, 0, passed=False)]


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import render_table

    parser = argparse.ArgumentParser(prog="python -m benchmarks.destination_bench")
    parser.add_argument("--studies", type=int, default=N_STUDIES)
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    parser.add_argument("--keep", action="store_true", help="keep the stack's temporary folder")
    args = parser.parse_args(argv)
    print(render_table(measure(args.studies, args.image_size, args.keep)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
