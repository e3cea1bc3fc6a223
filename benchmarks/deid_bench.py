"""De-identification engine benchmark: ``pixl_core.dicom.deid.deidentify_bytes`` per instance.

Three candidates, each from the bytes of a DICOM Part 10 file to the bytes of the output file:

- **floor**: ``dcmread(BytesIO(data))`` then ``dcmwrite`` to a ``BytesIO`` and ``getvalue()``,
  i.e. the cheapest way to read and re-write the same instance with pydicom. Nothing is
  de-identified; this is what "close to the cost of reading and writing the file" means.
- **PIXL**: ``deidentify_bytes(data, project, hasher)`` with the ``chest-xray`` project and a
  hasher built from a fixed benchmark secret (passed explicitly, never read from the env), with
  ``pixel_text`` off: the header engine. What the burned-in text check adds is measured by
  ``benchmarks/pixels_bench.py``.
- **dicom-anonymizer**: ``dcmread`` + ``anonymize_dataset(ds)`` + write + ``getvalue()``.

Inputs: (a) the real chest CR ``RG1_UNCI.dcm`` from pydicom-data (1955x1841, 16-bit, 7.2 MB),
(b) a synthetic 3000x2500 16-bit DX (15 MB), (c) for memory only, a synthetic 5000x5000 16-bit
DX (50 MB). Synthetic files are uncompressed Explicit VR Little Endian, built on
``stack.synthetic.dicom_builder`` with a realistic header (patient, study, series, equipment,
exposure, code sequences, a private block), and are generated once into ``benchmarks/.work/``.

Goals: PIXL ≤ 1.2x floor and faster than dicom-anonymizer (median per-instance time), and total
peak memory ≤ 3x the file size.

Timing: median of N interleaved rounds (N=15 unless the budget is short, minimum 5) after two
warm-up rounds, ``time.perf_counter``. Each timing run is a fresh interpreter with glibc malloc
pinned to one of two regimes (see ``REGIMES``), because multi-megabyte copies cost several times
more when the kernel must fault in fresh pages than when the heap reuses mapped ones, and an
unpinned process lands in either regime depending on its history. The goal must hold in both.

Memory is measured in a fresh subprocess per candidate (so that nothing left over from the timing
runs counts), after reading the input and after a warm-up call on a tiny instance (so that
imports, the project's allow-list cache and pydicom's dictionaries do not count). Two methods:

- ``tracemalloc`` (the reported figure): the peak of Python-tracked allocations during the call,
  started after the input was read, so it is exactly the *additional* memory of the call;
  bytes objects, the output buffer and numpy/pydicom allocations all go through it.
- peak RSS (cross-check): ``/proc/self/clear_refs`` resets the high-water mark, then
  ``VmHWM - VmRSS(before)``; page-granular and includes allocator slack, but sees everything.

"additional peak ÷ size" excludes the input the caller already holds; "total peak ÷ size" is
``(input size + additional peak) ÷ size``, i.e. the most the process holds for this instance at
once. The output alone is ~1x size, so an engine that keeps input and output can do no better
than ~2x total.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import secrets
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from io import BytesIO
from pathlib import Path
from typing import Any

from dicomanonymizer import anonymize_dataset
from pydicom import dcmread, dcmwrite
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from benchmarks.common import WORK_DIR, Result, measure_interleaved
from pixl_core.config.pixel_policy import PixelText
from pixl_core.config.projects import Project, load_project
from pixl_core.dicom.deid import deidentify_bytes
from pixl_core.hashing import ProjectHasher
from stack.synthetic.dicom_builder import base_dataset, code_item, to_bytes

TITLE = "De-identification engine"
PROJECT_SLUG = "chest-xray"
# Drawn per run (no key in the repository); never PIXL_HASH_KEY, which benchmarks must not touch.
BENCH_SECRET = secrets.token_hex(32).encode()
FLOOR_RATIO_GOAL = 1.2
MEMORY_RATIO_GOAL = 3.0
# Bump when the synthetic header changes, so stale files in .work/ are not reused.
SYNTHETIC_VERSION = 2
CR_FILE = "RG1_UNCI.dcm"
DX_SHAPE = (3000, 2500)
MEMORY_SHAPE = (5000, 5000)
MB = 1_000_000
REPO_ROOT = Path(__file__).resolve().parent.parent

Candidate = Callable[[bytes], bytes]


# --- inputs -----------------------------------------------------------------------------------


def synthetic_dx(rows: int, columns: int, seed: int = 20240601) -> Dataset:
    """A DX "for presentation" chest PA with a realistic identifiable header and 12-bit pixels.

    The shared ``base_dataset`` plus what a DX room and the RIS add: exposure, detector, codes,
    request attributes and a vendor's private block that leaks a name.
    """
    uid_root = "1.2.826.0.1.3680043.10.1234."  # an example root; the values are made up
    ds = base_dataset(
        modality="DX",
        sop_uid=f"{uid_root}3.{seed}.{rows}.{columns}",
        study_uid=f"{uid_root}1.{seed}",
        series_uid=f"{uid_root}2.{seed}",
        patient_name="Doe^John^Michael",
        patient_id="MRN0012345",
        birth_date="19640229",
        sex="M",
        age="060Y",
        accession="RRK12345678",
        study_id="UCH2024031501",
        study_datetime=datetime(2024, 3, 15, 10, 12, 4),
        series_datetime=datetime(2024, 3, 15, 10, 15, 29),
        manufacturer="ACME Medical",
        model="DigiRad 5000",
        pixel_spacing=0.139,
        rows=rows,
        columns=columns,
        pixel_seed=seed,
    )
    ds.InstanceCreationDate = "20240315"
    ds.InstanceCreationTime = "101530"
    ds.AcquisitionDate = "20240315"
    ds.AcquisitionTime = "101529.123000"
    ds.AcquisitionDateTime = "20240315101529.123000"
    ds.InstitutionName = "University College Hospital"
    ds.InstitutionAddress = "235 Euston Road, London NW1 2BU"
    ds.ReferringPhysicianName = "Smith^Jane^^Dr"
    ds.StationName = "UCH-XR-ROOM3"
    ds.InstitutionalDepartmentName = "Radiology"
    ds.OperatorsName = "Jones^Sam"
    ds.ProcedureCodeSequence = Sequence([code_item("XCHES", "99UCLH", "XR Chest")])
    ds.IssuerOfPatientID = "UCLH"
    ds.OtherPatientIDs = "9434765919"
    ds.PatientSize = "1.78"
    ds.PatientWeight = "82"
    ds.PatientAddress = "1 Example Street, London"
    ds.DeviceSerialNumber = "SN-00042-XR"
    ds.SoftwareVersions = ["DR 4.2.1", "IP 2.0"]
    ds.ProtocolName = "Chest PA"
    ds.DistanceSourceToDetector = "1800"
    ds.DistanceSourceToPatient = "1650"
    ds.KVP = "125"
    ds.ExposureTime = "8"
    ds.XRayTubeCurrent = "320"
    ds.Exposure = "3"
    ds.ExposureInuAs = 2560
    ds.ImageAndFluoroscopyAreaDoseProduct = "0.0123"
    ds.Grid = ["IN", "FOCUSED"]
    ds.FilterType = "NONE"
    ds.FocalSpots = "1.2"
    ds.ExposureIndex = "412"
    ds.TargetExposureIndex = "400"
    ds.DeviationIndex = "0.1"
    ds.DetectorID = "DET-7781"
    ds.DetectorElementPhysicalSize = ["0.139", "0.139"]
    ds.DetectorElementSpacing = ["0.139", "0.139"]
    ds.PositionerType = "NONE"
    ds.AcquisitionNumber = 1
    ds.ViewCodeSequence = Sequence([code_item("R-10214", "SRT", "postero-anterior")])
    ds.AnatomicRegionSequence = Sequence([code_item("T-D3000", "SRT", "Chest")])
    request = Dataset()
    request.RequestedProcedureID = "RP0099812"
    request.ScheduledProcedureStepID = "SPS0099812"
    request.RequestedProcedureDescription = "XR CHEST ?infection, pt. John Doe ward 7"
    ds.RequestAttributesSequence = Sequence([request])
    ds.PerformedProcedureStepStartDate = "20240315"
    ds.PerformedProcedureStepID = "PPS0099812"
    private = ds.private_block(0x0019, "ACME DX 1.0", create=True)
    private.add_new(0x10, "LO", "Chest PA adult")
    private.add_new(0x11, "DS", "2.5")
    private.add_new(0x12, "LO", "Doe^John")  # vendors do leak identifiers here
    return ds


def synthetic_file(rows: int, columns: int) -> Path:
    """Path of the synthetic DX of this shape in ``benchmarks/.work/``, generated if missing."""
    path = WORK_DIR / f"synthetic_dx_{rows}x{columns}_v{SYNTHETIC_VERSION}.dcm"
    if not path.is_file():
        WORK_DIR.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_bytes(to_bytes(synthetic_dx(rows, columns)))
        partial.replace(path)
    return path


def cr_file() -> Path:
    """Path of the real chest CR shipped with pydicom-data."""
    return Path(get_testdata_file(CR_FILE))


# --- candidates -------------------------------------------------------------------------------


def header_only(project: Project) -> Project:
    """The project with the burned-in text check off: this module times the header engine;
    ``pixels_bench`` times what the pixel check adds on top of it."""
    return dataclasses.replace(
        project, pixel_text=PixelText.OFF, pixel_text_justification="benchmark: header engine"
    )


def pixl_candidate(project: Project | None = None) -> Candidate:
    """``deidentify_bytes`` bound to the chest-xray project (header engine only, see
    ``header_only``) and the benchmark hasher."""
    project = project or header_only(load_project(PROJECT_SLUG))
    hasher = ProjectHasher.for_project(project.slug, secret=BENCH_SECRET)

    def pixl(data: bytes) -> bytes:
        return deidentify_bytes(data, project, hasher).data

    return pixl


def floor(data: bytes) -> bytes:
    """Read and re-write the instance with pydicom, changing nothing."""
    ds = dcmread(BytesIO(data))
    out = BytesIO()
    dcmwrite(out, ds)
    return out.getvalue()


def dicom_anonymizer(data: bytes) -> bytes:
    """dicom-anonymizer's default (PS3.15 basic profile) rules on the same bytes."""
    ds = dcmread(BytesIO(data))
    anonymize_dataset(ds)
    out = BytesIO()
    dcmwrite(out, ds)
    return out.getvalue()


def candidates() -> dict[str, Candidate]:
    """The three candidates, floor first."""
    return {"floor": floor, "PIXL": pixl_candidate(), "dicom-anonymizer": dicom_anonymizer}


def check_outputs(data: bytes, outputs: dict[str, bytes]) -> None:
    """Fail loudly if a candidate did not really do its job (e.g. PIXL refused or dropped pixels).

    Timing a path that silently skipped work would make the figures meaningless.
    """
    source = dcmread(BytesIO(data))
    for name, output in outputs.items():
        ds = dcmread(BytesIO(output))
        if ds.PixelData != source.PixelData:
            raise AssertionError(f"{name}: Pixel Data differs from the input")
        if name != "floor" and ds.get("PatientName") == source.get("PatientName"):
            raise AssertionError(f"{name}: PatientName was not removed")


# --- timing -----------------------------------------------------------------------------------

# Both floor and PIXL copy multi-megabyte buffers, so their times depend heavily on whether glibc
# malloc hands back pages already mapped or fresh ones the kernel must fault in (~1.5 µs per 4 KiB
# page on a VM: ~3 ms per 7 MB buffer, more than the copy itself). Which one happens depends on
# glibc's dynamic mmap threshold, i.e. on the process's history, so an unpinned run can land in
# either regime by accident. Each regime is therefore pinned and measured in its own fresh
# interpreter, and the goal must hold in both:
# - "fresh pages": every large buffer is mmap'ed and page-faulted (what a clean process showed);
# - "pages reused": large buffers come from a heap that is never trimmed, so only CPU work counts.
REGIMES: dict[str, dict[str, str]] = {
    "fresh pages": {"MALLOC_MMAP_THRESHOLD_": "131072"},
    "pages reused": {
        "MALLOC_MMAP_THRESHOLD_": str(1 << 30),
        "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    },
}


def time_case(label: str, path: Path, budget_s: float, target: int) -> list[Result]:
    """Median per-instance times and the two ratios for one input file (in this process)."""
    data = path.read_bytes()
    funcs = candidates()
    check_outputs(data, {name: f(data) for name, f in funcs.items()})
    samples = measure_interleaved(
        {name: (lambda f=f: f(data)) for name, f in funcs.items()}, budget_s, target=target
    )
    ms = {name: s.median_ms for name, s in samples.items()}
    vs_floor = ms["PIXL"] / ms["floor"]
    vs_anon = ms["PIXL"] / ms["dicom-anonymizer"]
    return [
        *(
            Result(
                TITLE,
                label,
                f"{name} median",
                s.median_ms,
                "ms",
                note=f"n={len(s.seconds)}, {s.median_faults} page faults/call",
            )
            for name, s in samples.items()
        ),
        Result(
            TITLE,
            label,
            "PIXL / floor",
            vs_floor,
            "x",
            goal=f"≤ {FLOOR_RATIO_GOAL:.2f}x",
            passed=vs_floor <= FLOOR_RATIO_GOAL,
        ),
        Result(
            TITLE,
            label,
            "PIXL / dicom-anonymizer",
            vs_anon,
            "x",
            goal="< 1.00x",
            passed=vs_anon < 1.0,
        ),
    ]


def timing_child(regime: str, budget_s: float) -> list[Result]:
    """Runs in a fresh interpreter with the regime's malloc settings: both timing cases."""
    cr, dx = cr_file(), synthetic_file(*DX_SHAPE)
    cr_label = f"CR {CR_FILE} 1955x1841 ({cr.stat().st_size / MB:.1f} MB), {regime}"
    dx_label = f"DX {DX_SHAPE[0]}x{DX_SHAPE[1]} ({dx.stat().st_size / MB:.1f} MB), {regime}"
    return time_case(cr_label, cr, budget_s * 0.4, target=15) + time_case(
        dx_label, dx, budget_s * 0.6, target=15
    )


def _child_env(regime: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(REGIMES[regime] if regime else {})
    return env


def _run_child(arguments: list[str], regime: str | None) -> Any:
    """Run ``python -m benchmarks.deid_bench <arguments>`` in a fresh interpreter; its JSON."""
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.deid_bench", *arguments],
        capture_output=True,
        text=True,
        env=_child_env(regime),
        cwd=REPO_ROOT,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"benchmark child {arguments} failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def timing_results(budget_s: float) -> list[Result]:
    """Both timing cases in each malloc regime, each regime in its own subprocess."""
    results: list[Result] = []
    for regime in REGIMES:
        rows = _run_child(["--timing-child", regime, str(budget_s / len(REGIMES))], regime)
        results.extend(Result(**row) for row in rows)
    return results


# --- memory (child process) -------------------------------------------------------------------


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def memory_child(method: str, mode: str, path: str) -> dict[str, Any]:
    """Runs in a fresh interpreter: peak additional bytes of one call of ``method``."""
    funcs = candidates()
    function = funcs[method]
    data = Path(path).read_bytes()
    function(to_bytes(synthetic_dx(64, 64)))  # warm-up: imports, caches, dictionaries
    gc.collect()
    if mode == "tracemalloc":
        tracemalloc.start()
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        output = function(data)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        additional = peak - before
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            reset = True
        except OSError:
            reset = False
        before_kb = _status_kb("VmRSS")
        output = function(data)
        additional = (_status_kb("VmHWM") - before_kb) * 1024
        if not reset:
            additional = -1  # stale high-water mark: not reportable
    return {"size": len(data), "output": len(output), "additional": additional}


def measure_memory(method: str, mode: str, path: Path) -> dict[str, Any]:
    """Run ``memory_child`` in a fresh subprocess and return its figures.

    The RSS cross-check pins the "fresh pages" regime so that freed buffers really leave the
    process and the high-water mark is not blurred by heap reuse.
    """
    regime = "fresh pages" if mode == "rss" else None
    return _run_child(["--memory-child", method, mode, str(path)], regime)


def memory_results(path: Path) -> list[Result]:
    """Peak memory of each candidate on the 50 MB instance, as ratios to the file size."""
    results: list[Result] = []
    size = path.stat().st_size
    case = f"DX {MEMORY_SHAPE[0]}x{MEMORY_SHAPE[1]} ({size / MB:.1f} MB)"
    for method in ("floor", "PIXL", "dicom-anonymizer"):
        traced = measure_memory(method, "tracemalloc", path)
        rss = measure_memory(method, "rss", path)
        additional = traced["additional"] / size
        total = (size + traced["additional"]) / size
        is_pixl = method == "PIXL"
        results.append(
            Result(TITLE, case, f"{method} additional peak ÷ size", additional, "x", digits=3)
        )
        results.append(
            Result(
                TITLE,
                case,
                f"{method} total peak ÷ size",
                total,
                "x",
                goal=f"≤ {MEMORY_RATIO_GOAL:.1f}x" if is_pixl else None,
                passed=total <= MEMORY_RATIO_GOAL if is_pixl else None,
                digits=3,
            )
        )
        if rss["additional"] >= 0:
            results.append(
                Result(
                    TITLE,
                    case,
                    f"{method} total peak ÷ size",
                    (size + rss["additional"]) / size,
                    "x",
                    note="RSS cross-check",
                    digits=3,
                )
            )
    return results


# --- entry points -----------------------------------------------------------------------------


def run(budget_s: float = 55.0) -> list[Result]:
    """Timing (CR and 15 MB DX, two malloc regimes), then memory on the 50 MB DX.

    About 15 s of the budget is kept for interpreter start-ups and the six memory children; the
    rest is the timing budget, from which the number of repetitions is chosen.
    """
    synthetic_file(*DX_SHAPE)  # generate once, before the children race to it
    big = synthetic_file(*MEMORY_SHAPE)
    return timing_results(max(budget_s - 15.0, 10.0)) + memory_results(big)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.deid_bench``: this module alone (or a memory child)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-child", nargs=3, metavar=("METHOD", "MODE", "PATH"))
    parser.add_argument("--timing-child", nargs=2, metavar=("REGIME", "BUDGET_S"))
    parser.add_argument("--budget", type=float, default=55.0)
    args = parser.parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(*args.memory_child)))
        return 0
    if args.timing_child:
        regime, budget = args.timing_child
        print(json.dumps([asdict(r) for r in timing_child(regime, float(budget))]))
        return 0
    from benchmarks.common import render_table

    print(render_table(run(args.budget)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
