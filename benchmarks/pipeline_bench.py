"""End-to-end imaging throughput: PIXL against the bare transfer floor, in the same run.

One run starts a fresh local stack (Postgres, VNA, orthanc-raw, orthanc-anon and the FTPS DSH
under supervisord, on free ports in a temporary folder), loads a synthetic cohort of
``N_STUDIES`` chest X-ray studies into the VNA and measures, on the same machine and the same
files:

- **PIXL**: ``pixl populate EXTRACT`` until every study has settled (none queued, fetching or
  anonymising: seen by a 10 Hz Postgres query, then confirmed by ``pixl status --json``, which
  is too heavy to poll every second without slowing what it measures). The time runs from just
  before ``pixl populate`` starts to the last study's final state change in Postgres, so no
  poll's granularity counts. Throughput is the exported studies per minute.
- **floor**: what moving the same studies costs without PIXL's processing.
  (a) a plain Orthanc (no plugin, no authentication, no storage limit) with orthanc-raw's AE
  title ``PIXLRAW`` on orthanc-raw's DICOM port, so that the VNA's existing modality entry points
  at it, asks the VNA for every exported study with the same calls PIXL makes (C-FIND by
  accession number and patient id through ``/modalities/vna/query``, then a synchronous
  ``/queries/{id}/answers/0/retrieve`` to itself), four at a time as PIXL's ``--in-flight 4``;
  (b) the same instances PIXL exports (the cohort's files, without the series the project
  filters out) are zipped per study with ``ZIP_STORED`` in memory and uploaded, one study after
  the other as PIXL's exporter does, with ``pixl_core.transport.ftps.FtpsClient`` over one connection to
  the stack's DSH. Floor time = (a) + (b).

The floor runs twice, once before and once after PIXL (orthanc-raw is stopped while it runs and
the plain Orthanc starts on a fresh storage folder each time); the ratio uses their mean, so a
drift of the machine during the run falls on both sides alike. The VNA holds the same files for
all three runs, already in the page cache since they were just loaded.

Goals (issue 12): PIXL time ≤ 1.3x floor time with the project's pixel check off, ≤ 1.5x with
it on as shipped; ``python -m benchmarks`` runs both cases.

Besides the figures, the run records when each study entered each state (a Postgres sampler
every 0.1 s) and the CPU seconds each process used, and prints where PIXL's time goes. The
stack's logs of the last run are copied to ``benchmarks/.work/pipeline-logs/``.

The EHR module's programs (reports) are left out of this stack: this is the imaging path.

Standalone: ``python -m benchmarks.pipeline_bench [--studies 50] [--image-size 2048]``, with
what-if knobs to measure a proposed change before making it (``--http-compression``,
``--poll SECONDS``, ``--in-flight N``, ``--raw-replicas N --anon-replicas M``; see ``WhatIf``).
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.common import WORK_DIR, Result

if TYPE_CHECKING:
    from stack.driver import Stack

TITLE = "Pipeline"
# This benchmark's cost is fixed (a stack, a cohort, three transfers): it takes a budget of its
# own instead of a share of ``--budget``, and uses it as its hard time limit.
BUDGET_S = 420.0

N_STUDIES = 50
IMAGE_SIZE = 2048  # rows = columns, 16-bit: 8 MB per instance, like a real CR/DX
SEED = 7
PROJECT = "chest-xray"
RATE_PER_S = 50.0  # `pixl rate`: far above what the machine can do, never the limit itself
IN_FLIGHT = 4
FLOOR_CONCURRENCY = IN_FLIGHT
# Issue 12: ≤ 1.3x the floor with the pixel check off, ≤ 1.5x with it on (as shipped).
GOAL_RATIO = 1.5
GOAL_RATIO_CHECK_OFF = 1.3
# `pixl status --json` costs ~0.7 CPU-s (interpreter, imports, migration check): polled every
# second it would take a third of a 2-core machine from the pipeline it measures. So a 10 Hz
# Postgres query tells when everything has settled and the CLI is asked then to confirm.
STATUS_CHECK_S = 1.0
SAMPLE_S = 0.1
PROCESSES = ("vna", "orthanc-raw", "orthanc-anon", "postgres", "dsh")  # and replicas' programs
LOGS_COPY = WORK_DIR / "pipeline-logs"


class Skip(Exception):
    """A prerequisite is missing: the benchmark reports why and does not run."""


class BenchTimeout(Exception):
    """The hard time limit ran out."""


@dataclass
class Deadline:
    end: float

    def left(self, what: str) -> float:
        remaining = self.end - time.monotonic()
        if remaining <= 0:
            raise BenchTimeout(f"time limit reached while {what}")
        return remaining


def prerequisites() -> None:
    """Raise Skip naming the first missing piece (and how to get it)."""
    from stack.driver import PIXL_CLI
    from stack.local_stack import ORTHANC_BINARY
    from stack.postgres import PG_BIN

    if not Path(ORTHANC_BINARY).exists():
        raise Skip("Orthanc is not installed (apt-get install orthanc orthanc-python)")
    plugin = Path("/usr/share/orthanc/plugins/libOrthancPython.so")
    if not plugin.exists():
        raise Skip("the Orthanc Python plugin is not installed (apt-get install orthanc-python)")
    if not (PG_BIN / "initdb").exists():
        raise Skip(f"PostgreSQL 15 is not installed ({PG_BIN}/initdb missing)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        raise Skip("runuser is missing: Postgres cannot be started as the postgres user")
    if not PIXL_CLI.exists():
        raise Skip("the pixl CLI is missing: run `make setup`")
    try:
        import supervisor  # noqa: F401
    except ImportError:
        raise Skip("supervisor is not installed in the venv: run `make setup`") from None


# --- the cohort -------------------------------------------------------------------------------


def cached_cohort(n_studies: int, image_size: int, seed: int) -> Any:
    """The synthetic cohort, generated once into ``benchmarks/.work/`` and reused."""
    from stack.synthetic.cohort import generate_cohort

    folder = WORK_DIR / f"pipeline-cohort-n{n_studies}-px{image_size}-s{seed}"
    saved = folder / "cohort.pickle"
    if saved.exists():
        cohort = pickle.loads(saved.read_bytes())
        files = [p for s in cohort.studies for p in s.files]
        if files and all(p.exists() for p in files):
            return cohort
    print(f"  generating {n_studies} studies of {image_size}x{image_size} px…", flush=True)
    cohort = generate_cohort(
        folder, n_studies=n_studies, seed=seed, second_project=None, image_size=image_size
    )
    saved.write_bytes(pickle.dumps(cohort))
    return cohort


def exported_studies(cohort: Any) -> list[Any]:
    from stack.synthetic.cohort import EXPORTED

    return [s for s in cohort.studies_for(cohort.project_name) if s.expected_outcome == EXPORTED]


# --- CPU accounting ---------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid → (parent pid, CPU seconds of the process and its reaped children)."""
    table: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        ticks = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
        table[int(entry.name)] = (int(fields[1]), ticks / _TICK)
    return table


def tree_cpu(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process tree."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    totals: dict[str, float] = {}
    for name, root in pids.items():
        total, stack = 0.0, [root]
        while stack:
            pid = stack.pop()
            if pid in table:
                total += table[pid][1]
                stack.extend(children.get(pid, []))
        totals[name] = total
    return totals


def own_cpu() -> float:
    """CPU seconds of this process and the children it has waited for (the pixl CLI calls)."""
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@contextmanager
def cpu_used(stack: Stack, into: dict[str, float]) -> Iterator[None]:
    """Fill ``into`` with the CPU seconds each process (and this benchmark) used in the block."""
    before, mine = tree_cpu(process_pids(stack)), own_cpu()
    yield
    after = tree_cpu(process_pids(stack))
    into.update({name: after[name] - before.get(name, 0.0) for name in after})
    into["benchmark + pixl CLI"] = own_cpu() - mine


# --- the stack --------------------------------------------------------------------------------


def raw_programs(stack: Stack) -> list[str]:
    """supervisord's names of every orthanc-raw replica (``orthanc-raw``, ``orthanc-raw-2``...)."""
    from stack.local_stack import program_name

    return [program_name(replica) for replica in stack.settings.replicas("raw")]


def process_pids(stack: Stack) -> dict[str, int]:
    """pid of each of the stack's processes that is running (for CPU accounting)."""
    from stack.local_stack import program_name

    names = list(PROCESSES)
    for role in ("raw", "anon"):
        names += [program_name(r) for r in stack.settings.replicas(role)[1:]]
    pids = {name: stack.process_pid(name) for name in names}
    return {name: pid for name, pid in pids.items() if pid}


@dataclass(frozen=True)
class WhatIf:
    """Knobs for what-if runs (standalone CLI only; ``python -m benchmarks`` measures PIXL as it
    is). Nothing in PIXL's code or configuration templates changes: the stack's *rendered*
    Orthanc configs are edited in the temporary folder, and the poll interval is a setting the
    plugins read (``PIXL_FETCH_POLL_SECONDS``, ``PIXL_EXPORT_POLL_SECONDS``), passed to every
    process of the stack through ``StackSettings.extra_env``.
    """

    http_compression: bool = (
        False  # HttpCompressionEnabled on orthanc-raw and -anon (off as shipped)
    )
    poll_s: float | None = None  # the fetch and export workers' poll (defaults 0.25 and 0.2 s)
    in_flight: int = IN_FLIGHT  # `pixl rate --in-flight` (the floor stays at FLOOR_CONCURRENCY)
    # The project's `pixel_text: off` (burned-in text not looked for): what the pixel check costs
    pixel_text_off: bool = False
    # PIXL_RAW_REPLICAS / PIXL_ANON_REPLICAS of the stack (the floor is the same either way)
    raw_replicas: int = 1
    anon_replicas: int = 1

    @property
    def goal_ratio(self) -> float:
        return GOAL_RATIO_CHECK_OFF if self.pixel_text_off else GOAL_RATIO

    def label(self) -> str:
        parts = []
        if self.http_compression:
            parts.append("HTTP compression on")
        if self.poll_s is not None:
            parts.append(f"poll {self.poll_s:g} s")
        if self.in_flight != IN_FLIGHT:
            parts.append(f"in flight {self.in_flight}")
        if self.pixel_text_off:
            parts.append("pixel check off")
        if (self.raw_replicas, self.anon_replicas) != (1, 1):
            parts.append(f"{self.raw_replicas} + {self.anon_replicas} replicas")
        return ", ".join(parts)


AS_IS = WhatIf()


@contextmanager
def imaging_stack(root: Path, raw_cache_mb: int, what_if: WhatIf = AS_IS) -> Iterator[Stack]:
    """The local stack without the EHR module's programs; always torn down."""
    from stack.driver import Stack
    from stack.local_stack import program_name
    from stack.settings import StackSettings

    settings = StackSettings.for_tests(
        root, raw_replicas=what_if.raw_replicas, anon_replicas=what_if.anon_replicas
    )
    settings.raw_cache_mb = raw_cache_mb  # the whole cohort fits: no recycling mid-run
    if what_if.poll_s is not None:
        poll = str(what_if.poll_s)
        settings.extra_env = {"PIXL_FETCH_POLL_SECONDS": poll, "PIXL_EXPORT_POLL_SECONDS": poll}
    # Only the imaging processes: the report module is not part of this measurement.
    settings.with_reports = False
    stack = Stack(settings, pixl_timeout_s=120.0)
    try:
        stack.up(timeout=120)
        if what_if.http_compression:
            for name in ("orthanc-raw", "orthanc-anon"):
                path = settings.run_dir / f"{name}.json"
                config = json.loads(path.read_text())
                config["HttpCompressionEnabled"] = True
                path.write_text(json.dumps(config, indent=2))
            stack.supervisor("restart", "orthanc-raw", "orthanc-anon")
            stack.wait_healthy(120)
        if what_if.pixel_text_off:
            _pixel_text_off(settings.projects_dir / "chest-xray.yaml")
            anon = [program_name(replica) for replica in settings.replicas("anon")]
            stack.supervisor("restart", *anon)  # projects are read once per process
            stack.wait_healthy(120)
        yield stack
    finally:
        try:
            stack.down()
        finally:
            if settings.logs_dir.exists():
                shutil.rmtree(LOGS_COPY, ignore_errors=True)
                shutil.copytree(settings.logs_dir, LOGS_COPY)


def _pixel_text_off(path: Path) -> None:
    """Turn the rendered project's pixel check off (with the justification the loader wants)."""
    import yaml

    raw = yaml.safe_load(path.read_text())
    raw["pixel_text"] = "off"
    raw["pixel_text_justification"] = "benchmark: the pipeline measured without the pixel check"
    raw["ps315_options"] = [o for o in raw.get("ps315_options", []) if o != "cleanPixelDataOpt"]
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def _http_ok(url: str, auth: tuple[str, str] | None = None) -> dict[str, Any] | None:
    import requests

    try:
        response = requests.get(url, auth=auth, timeout=2)
    except requests.RequestException:
        return None
    return response.json() if response.status_code == 200 else None


def start_orthanc_raw(stack: Stack, deadline: Deadline) -> None:
    """Start every orthanc-raw replica again and wait until each one's fetch worker runs."""
    stack.supervisor("start", *raw_programs(stack))
    for replica in stack.settings.replicas("raw"):
        url = stack.settings.url(replica) + "/pixl/status"
        while not (_http_ok(url, stack.orthanc_auth) or {}).get("running"):
            deadline.left("waiting for orthanc-raw to restart")
            time.sleep(0.2)


@dataclass
class PlainOrthanc:
    url: str
    cpu: float = 0.0  # CPU seconds it used, read just before it stopped


@contextmanager
def plain_orthanc(stack: Stack, name: str, deadline: Deadline) -> Iterator[PlainOrthanc]:
    """A plugin-less Orthanc as ``PIXLRAW`` on orthanc-raw's DICOM port (every orthanc-raw
    replica stopped, so none of them takes CPU from the floor)."""
    from stack.local_stack import ORTHANC_BINARY
    from stack.ports import free_port

    settings = stack.settings
    stack.supervisor("stop", *raw_programs(stack))
    if any(stack.process_pid(name) for name in raw_programs(stack)):
        raise RuntimeError("orthanc-raw did not stop")
    storage = settings.root / name
    storage.mkdir()
    http_port = free_port()
    config = {
        "Name": name,
        "DicomAet": "PIXLRAW",
        "DicomPort": settings.ports["raw_dicom"],
        "HttpPort": http_port,
        "HttpBindAddress": "127.0.0.1",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": True,
        "DicomAlwaysAllowStore": False,
        "DicomModalities": {
            "vna": {
                "AET": "VNA",
                "Host": "127.0.0.1",
                "Port": settings.ports["vna_dicom"],
                "AllowStore": True,
                "AllowEcho": True,
            }
        },
        # As orthanc-raw: same job concurrency and timeouts.
        "StableAge": 5,
        "ConcurrentJobs": 4,
        "HttpTimeout": 120,
        "DicomScuTimeout": 120,
    }
    config_path = settings.run_dir / f"{name}.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = (settings.logs_dir / f"{name}.log").open("wb")
    process = subprocess.Popen(
        [ORTHANC_BINARY, str(config_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    plain = PlainOrthanc(f"http://127.0.0.1:{http_port}")
    try:
        while _http_ok(plain.url + "/system") is None:
            if process.poll() is not None:
                raise RuntimeError(f"the plain Orthanc exited; see {settings.logs_dir}/{name}.log")
            deadline.left("starting the plain Orthanc")
            time.sleep(0.2)
        yield plain
    finally:
        plain.cpu = tree_cpu({"plain": process.pid}).get("plain", 0.0)
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        log.close()
        shutil.rmtree(storage, ignore_errors=True)


# --- the floor --------------------------------------------------------------------------------


@dataclass
class FloorRun:
    label: str
    fetch_s: float = 0.0
    zip_s: float = 0.0
    upload_s: float = 0.0
    instances_moved: int = 0
    bytes_uploaded: int = 0
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def total_s(self) -> float:
        return self.fetch_s + self.zip_s + self.upload_s


def floor_fetch(url: str, studies: list[Any], deadline: Deadline) -> float:
    """C-FIND then synchronous C-MOVE of each study, FLOOR_CONCURRENCY at a time; seconds."""
    from pixl_core.transport.orthanc_rest import OrthancClient

    local = threading.local()

    def client() -> OrthancClient:
        if getattr(local, "client", None) is None:
            local.client = OrthancClient(url, timeout=120)
        return local.client

    def move(study: Any) -> None:
        api = client()
        # The same query keys as pixl_imaging.vna_fetch._find_study.
        keys = {
            "StudyInstanceUID": "",
            "ModalitiesInStudy": "",
            "NumberOfStudyRelatedInstances": "",
            "AccessionNumber": study.accession_number,
            "PatientID": study.mrn,
        }
        found = api.post("/modalities/vna/query", {"Level": "Study", "Query": keys})
        if len(api.get(f"/queries/{found['ID']}/answers")) != 1:
            raise RuntimeError("the floor's C-FIND did not find exactly one study")
        api.post(
            f"/queries/{found['ID']}/answers/0/retrieve",
            {"TargetAet": "PIXLRAW", "Synchronous": True},
            timeout=min(600.0, deadline.left("moving studies for the floor")),
        )

    start = time.perf_counter()
    with ThreadPoolExecutor(FLOOR_CONCURRENCY) as pool:
        list(pool.map(move, studies))
    return time.perf_counter() - start


def floor_upload(stack: Stack, studies: list[Any], label: str, run: FloorRun) -> None:
    """Zip each study's exported instances (ZIP_STORED, in memory) and upload it over FTPS."""
    from pixl_core.config.projects import load_project_file
    from pixl_core.transport.ftps import FtpsClient, FtpsSettings

    project = load_project_file(stack.settings.projects_dir / "chest-xray.yaml")
    ftps = FtpsSettings.for_project(project, stack.settings.environment())
    with FtpsClient(ftps) as client:
        client.connect()
        for number, study in enumerate(studies, start=1):
            start = time.perf_counter()
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
                for series in study.series:
                    if series.filtered:
                        continue
                    for index, path in enumerate(series.files, start=1):
                        archive.writestr(f"{series.series_number}/{index}.dcm", path.read_bytes())
            data = buffer.getbuffer()
            zipped = time.perf_counter()
            client.upload_bytes(f"floor-{label}/{number:03d}.zip", data)
            run.zip_s += zipped - start
            run.upload_s += time.perf_counter() - zipped
            run.bytes_uploaded += len(data)


def run_floor(stack: Stack, cohort: Any, label: str, deadline: Deadline) -> FloorRun:
    studies = exported_studies(cohort)
    run = FloorRun(label)
    expected_instances = sum(len(p.files) for s in studies for p in s.series)
    with cpu_used(stack, run.cpu):
        with plain_orthanc(stack, f"floor-orthanc-{label}", deadline) as plain:
            run.fetch_s = floor_fetch(plain.url, studies, deadline)
            stats = _http_ok(plain.url + "/statistics") or {}
            run.instances_moved = int(stats.get("CountInstances", 0))
        if run.instances_moved != expected_instances:
            raise RuntimeError(
                f"the floor's Orthanc holds {run.instances_moved} instances, "
                f"expected {expected_instances}"
            )
        deadline.left("uploading for the floor")
        floor_upload(stack, studies, label, run)
    run.cpu["plain orthanc"] = plain.cpu
    start_orthanc_raw(stack, deadline)
    return run


# --- PIXL -------------------------------------------------------------------------------------


class Sampler:
    """Records when each study was first seen in each state (and claimed by the exporter)."""

    def __init__(self, db_url: str, project: str) -> None:
        self.db_url = db_url
        self.project = project
        self.seen: dict[int, dict[str, float]] = {}
        self.states: dict[int, str] = {}
        self.settled = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="pipeline-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    def last_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for state in list(self.states.values()):
            counts[state] = counts.get(state, 0) + 1
        return counts

    def _loop(self) -> None:
        import psycopg2

        from pixl_core.db.states import STUDY_SETTLED

        conn = psycopg2.connect(self.db_url)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                while not self.stop.is_set():
                    cur.execute(
                        "SELECT id, state, claimed_by LIKE 'anon:%%' FROM study WHERE project = %s",
                        (self.project,),
                    )
                    now = time.time()
                    for study_id, state, exporting in cur.fetchall():
                        states = self.seen.setdefault(study_id, {})
                        key = "exporting" if state == "anonymising" and exporting else state
                        states.setdefault(key, now)
                        self.states[study_id] = state
                    if self.states and all(s in STUDY_SETTLED for s in self.states.values()):
                        self.settled.set()
                    self.stop.wait(SAMPLE_S)
        finally:
            conn.close()


@dataclass
class StudyTimes:
    state: str
    claimed: float | None  # orthanc-raw claimed it (sampled)
    moved: float | None  # C-FIND + C-MOVE done (vna_move.finished_at)
    handed: float | None  # every instance handed to orthanc-anon (sampled)
    export_claimed: float | None  # orthanc-anon's exporter took it (sampled)
    settled: float  # final state (exported_at or updated_at)
    instances: int


@dataclass
class PixlRun:
    start: float = 0.0
    populate_s: float = 0.0
    elapsed_s: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    studies: list[StudyTimes] = field(default_factory=list)
    zip_bytes: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    probe: str = ""

    @property
    def exported(self) -> int:
        return self.counts.get("exported", 0)


def run_pixl(stack: Stack, cohort: Any, deadline: Deadline) -> PixlRun:
    from stack.driver import NotSettledError

    run = PixlRun()
    with cpu_used(stack, run.cpu), Sampler(stack.settings.db_url, PROJECT) as sampler:
        run.start = time.time()
        stack.pixl("populate", str(cohort.extract_dir))
        run.populate_s = time.time() - run.start
        try:
            # The sampler's cheap query says when to ask; `pixl status --json` confirms.
            settled = stack.wait_until_settled(
                [PROJECT],
                deadline.left("settling"),
                poll_s=STATUS_CHECK_S,
                hint=sampler.settled,
            )
        except NotSettledError:
            what = f"waiting for PIXL's studies to settle ({sampler.last_counts()})"
            raise BenchTimeout(f"time limit reached while {what}") from None
    run.counts = settled.studies[PROJECT]
    rows = stack.query(
        "SELECT s.id, s.state, extract(epoch FROM coalesce(s.exported_at, s.updated_at)), "
        "extract(epoch FROM m.finished_at), coalesce(s.instance_count, 0) "
        "FROM study s LEFT JOIN vna_move m ON m.study_id = s.id "
        "AND m.outcome = 'completed' AND m.level = 'study' "
        "WHERE s.project = %s",
        PROJECT,
    )
    for study_id, state, settled, moved, instances in rows:
        seen = sampler.seen.get(study_id, {})
        run.studies.append(
            StudyTimes(
                state=state,
                claimed=seen.get("fetching"),
                moved=float(moved) if moved is not None else None,
                handed=seen.get("anonymising", seen.get("exporting")),
                export_claimed=seen.get("exporting"),
                settled=float(settled),
                instances=instances,
            )
        )
    run.elapsed_s = max(s.settled for s in run.studies) - run.start
    zips = (stack.settings.dsh_dir / PROJECT / "dicom").glob("*.zip")
    run.zip_bytes = sum(p.stat().st_size for p in zips)
    return run


def compression_probe(stack: Stack) -> str:
    """How orthanc-raw answers PIXL's REST client for one instance's file: encoding and time.

    ``requests`` (``pixl_core.transport.orthanc_rest``) sends ``Accept-Encoding: gzip, deflate``, and
    Orthanc compresses its HTTP answers unless ``HttpCompressionEnabled`` is false.
    """
    import requests

    url = stack.settings.url("raw")
    with requests.Session() as session:
        session.auth = stack.orthanc_auth
        instances = session.get(url + "/instances", timeout=30).json()
        if not instances:
            return ""
        path = f"{url}/instances/{instances[0]}/file"
        timings = {}
        for label, headers in (("default", {}), ("identity", {"Accept-Encoding": "identity"})):
            start = time.perf_counter()
            response = session.get(path, headers=headers, timeout=60)
            response.raise_for_status()
            timings[label] = (time.perf_counter() - start, response.headers)
    (default_s, headers), (identity_s, _) = timings["default"], timings["identity"]
    encoding = headers.get("Content-Encoding", "none")
    return (
        f"GET /instances/{{id}}/file ({len(response.content) / 1e6:.1f} MB) from orthanc-raw with "
        f"requests' default headers: Content-Encoding {encoding}, {default_s * 1000:.0f} ms; "
        f"with Accept-Encoding identity: {identity_s * 1000:.0f} ms"
    )


def breakdown(run: PixlRun) -> list[tuple[str, float, str]]:
    """Where PIXL's time goes: (label, seconds or a count, how it was measured)."""
    t0 = run.start
    done = [s for s in run.studies if s.state == "exported"]
    rows: list[tuple[str, float, str]] = [("pixl populate (CLI)", run.populate_s, "wall")]
    claims = sorted(s.claimed for s in run.studies if s.claimed)
    if claims:
        rows.append(("first claim by orthanc-raw", claims[0] - t0, "after start, ±0.1 s"))
    if len(claims) > 1:
        gaps = [b - a for a, b in itertools.pairwise(claims)]
        rows.append(("interval between two claims", statistics.median(gaps), "median, ±0.1 s"))
    spans = [(s.claimed, s.handed) for s in run.studies if s.claimed and s.handed]
    if spans:
        most = max(sum(1 for a, b in spans if a <= t < b) for t, _ in spans)
        rows.append(("studies fetching at once", most, "max seen; `pixl rate --in-flight`"))
    fetch = [s.moved - s.claimed for s in done if s.moved and s.claimed]
    hand = [s.handed - s.moved for s in done if s.handed and s.moved]
    wait = [s.export_claimed - s.handed for s in done if s.export_claimed and s.handed]
    export = [s.settled - s.export_claimed for s in done if s.export_claimed]
    for label, values in (
        ("C-FIND + C-MOVE per study", fetch),
        ("hand-off to orthanc-anon (incl. de-id) per study", hand),
        ("wait for the exporter per study", wait),
        ("zip via REST + FTPS upload per study", export),
    ):
        if values:
            rows.append((label, statistics.median(values), f"median; sum {sum(values):.1f} s"))
    handed = [s.handed for s in done if s.handed]
    if handed:
        rows.append(("last study handed to orthanc-anon", max(handed) - t0, "after start"))
    if export:
        rows.append(("exporter busy (serial)", sum(export), "sum of zip + upload"))
        # Time the exporter sat idle although a study was ready: its poll and claim latency.
        ordered = sorted(done, key=lambda s: s.export_claimed or 0.0)
        idle, previous = 0.0, None
        for study in ordered:
            if study.export_claimed is None or study.handed is None:
                continue
            ready = max(study.handed, previous or study.handed)
            idle += max(0.0, study.export_claimed - ready)
            previous = study.settled
        rows.append(("exporter idle with a study ready", idle, "sum, ±0.1 s per study"))
    rows.append(("last study settled", run.elapsed_s, "after start = PIXL time"))
    return rows


# --- the benchmark ----------------------------------------------------------------------------


def measure(
    n_studies: int, image_size: int, budget_s: float, keep: bool = False, what_if: WhatIf = AS_IS
) -> list[Result]:
    prerequisites()
    from stack.synthetic.cohort import load_into_vna

    deadline = Deadline(time.monotonic() + budget_s)
    cohort = cached_cohort(n_studies, image_size, SEED)
    studies = exported_studies(cohort)
    files = [p for s in cohort.studies for p in s.files]
    cohort_mb = sum(p.stat().st_size for p in files) / 1e6
    root = Path(tempfile.mkdtemp(prefix="pixl-bench-"))
    root.chmod(0o755)  # the postgres user must reach its data folder
    try:
        with imaging_stack(root, int(cohort_mb * 2) + 500, what_if) as stack:
            start = time.perf_counter()
            loaded = load_into_vna(cohort, stack.settings.url("vna"))
            took = time.perf_counter() - start
            print(f"  loaded {loaded} instances ({cohort_mb:.0f} MB) into the VNA in {took:.1f} s")
            stack.pixl("rate", f"{RATE_PER_S:g}", "--in-flight", str(what_if.in_flight))
            floors = [run_floor(stack, cohort, "before", deadline)]
            print(f"  floor before PIXL: {floors[0].total_s:.1f} s", flush=True)
            pixl = run_pixl(stack, cohort, deadline)
            print(f"  PIXL: {pixl.elapsed_s:.1f} s, {pixl.counts}", flush=True)
            pixl.probe = compression_probe(stack)
            floors.append(run_floor(stack, cohort, "after", deadline))
            print(f"  floor after PIXL: {floors[1].total_s:.1f} s", flush=True)
    finally:
        if keep:
            print(f"  kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    report(pixl, floors, cohort_mb)
    case = case_name(n_studies, image_size, what_if)
    return results(pixl, floors, studies, case, what_if.goal_ratio)


def report(pixl: PixlRun, floors: list[FloorRun], cohort_mb: float) -> None:
    """Print the breakdown and CPU use (the README's analysis is written from this)."""
    print("\n  where PIXL's time goes:")
    for label, value, how in breakdown(pixl):
        shown = f"{value:7d}  " if isinstance(value, int) else f"{value:7.2f} s"
        print(f"    {label:<50} {shown}  ({how})")
    print(f"    zips in the DSH: {pixl.zip_bytes / 1e6:.0f} MB; cohort {cohort_mb:.0f} MB")
    if pixl.probe:
        print(f"  {pixl.probe}")
    for floor in floors:
        print(
            f"  floor {floor.label}: C-FIND+C-MOVE {floor.fetch_s:.2f} s "
            f"({floor.instances_moved} instances), zip {floor.zip_s:.2f} s, "
            f"FTPS upload {floor.upload_s:.2f} s ({floor.bytes_uploaded / 1e6:.0f} MB)"
        )
    print("  CPU seconds used:")
    names = sorted({n for run in (pixl, *floors) for n in run.cpu})
    print(
        "    "
        + f"{'process':<22}"
        + "".join(f"{h:>14}" for h in ("PIXL", *(f.label for f in floors)))
    )
    for name in names:
        cells = [pixl.cpu.get(name, 0.0), *(f.cpu.get(name, 0.0) for f in floors)]
        print("    " + f"{name:<22}" + "".join(f"{c:>14.1f}" for c in cells))


def case_name(n_studies: int, image_size: int, what_if: WhatIf = AS_IS) -> str:
    case = f"{n_studies} studies, {image_size}² 16-bit"
    return f"{case} (what-if: {what_if.label()})" if what_if.label() else case


def results(
    pixl: PixlRun, floors: list[FloorRun], studies: list[Any], case: str, goal_ratio: float
) -> list[Result]:
    instances = sum(s.expected_instances for s in studies)
    exported = pixl.exported
    floor_s = statistics.mean(f.total_s for f in floors)
    ratio = pixl.elapsed_s / floor_s

    def per_min(seconds: float) -> float:
        return round(exported / seconds * 60.0, 1)

    rows = [
        Result(TITLE, case, "studies exported", exported, note=f"{instances} instances expected"),
        Result(TITLE, case, "PIXL time", round(pixl.elapsed_s, 1), "s"),
        Result(TITLE, case, "PIXL throughput", per_min(pixl.elapsed_s), "studies/min"),
    ]
    for floor in floors:
        rows.append(
            Result(
                TITLE,
                case,
                f"floor time, {floor.label} PIXL",
                round(floor.total_s, 1),
                "s",
                note=f"C-MOVE {floor.fetch_s:.1f} + zip {floor.zip_s:.1f} "
                f"+ FTPS {floor.upload_s:.1f}",
            )
        )
    rows.append(
        Result(TITLE, case, "floor throughput (mean time)", per_min(floor_s), "studies/min")
    )
    expected = len(studies)
    complete = exported == expected and not pixl.counts.get("failed")
    rows.append(
        Result(
            TITLE,
            case,
            "PIXL / floor time",
            ratio,
            "x",
            goal=f"≤ {goal_ratio:.2f}",
            passed=ratio <= goal_ratio and complete,
            note="" if complete else f"only {exported} of {expected} studies exported",
        )
    )
    return rows


def run(budget_s: float) -> list[Result]:
    """Entry point for ``python -m benchmarks``: never raises, always tears down. Two cases, as
    issue 12 asks: the pixel check off (goal 1.3x) and the project as shipped (check on, 1.5x)."""
    check_off = WhatIf(pixel_text_off=True)
    return run_guarded(N_STUDIES, IMAGE_SIZE, budget_s, what_if=check_off) + run_guarded(
        N_STUDIES, IMAGE_SIZE, budget_s
    )


def run_guarded(
    n_studies: int,
    image_size: int,
    budget_s: float,
    keep: bool = False,
    what_if: WhatIf = AS_IS,
) -> list[Result]:
    case = case_name(n_studies, image_size, what_if)
    try:
        return measure(n_studies, image_size, budget_s, keep, what_if)
    except Skip as skip:
        return [Result(TITLE, case, f"skipped: {skip}", 0)]
    except BenchTimeout as exc:
        message = f"failed: {exc} (hard limit {budget_s:.0f} s)"
        return [Result(TITLE, case, message, 0, passed=False)]
    except Exception as exc:
        message = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
        return [Result(TITLE, case, message, 0, passed=False, note=f"logs in {LOGS_COPY}")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline_bench")
    parser.add_argument("--studies", type=int, default=N_STUDIES)
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="hard limit, seconds")
    parser.add_argument("--keep", action="store_true", help="keep the stack's temporary folder")
    what_if = parser.add_argument_group("what-if knobs (measure a change before making it)")
    what_if.add_argument(
        "--http-compression",
        action="store_true",
        help='"HttpCompressionEnabled": true on orthanc-raw and orthanc-anon (off as shipped)',
    )
    what_if.add_argument(
        "--poll",
        type=float,
        help="fetch and export workers' poll interval in seconds "
        "(PIXL_FETCH_POLL_SECONDS, PIXL_EXPORT_POLL_SECONDS)",
    )
    what_if.add_argument("--in-flight", type=int, default=IN_FLIGHT, help="pixl rate --in-flight")
    what_if.add_argument(
        "--pixel-text-off",
        action="store_true",
        help="the project's pixel_text: off (what the burned-in text check costs; goal 1.3x)",
    )
    what_if.add_argument("--raw-replicas", type=int, default=1, help="PIXL_RAW_REPLICAS")
    what_if.add_argument("--anon-replicas", type=int, default=1, help="PIXL_ANON_REPLICAS")
    args = parser.parse_args(argv)
    from benchmarks.common import render_table

    knobs = WhatIf(
        args.http_compression,
        args.poll,
        args.in_flight,
        args.pixel_text_off,
        args.raw_replicas,
        args.anon_replicas,
    )
    rows = run_guarded(args.studies, args.image_size, args.budget, args.keep, knobs)
    print()
    print(render_table(rows))
    return 1 if any(r.passed is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
