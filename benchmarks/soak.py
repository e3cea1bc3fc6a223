"""Soak: thousands of small studies end to end through replicas (issue 12), for the lead to run.

Not a ``*_bench`` module: ``make bench`` does not run it (it takes far longer than a bench
budget and loads the machine for its whole length). Run it alone:

    .venv/bin/python -m benchmarks.soak                      # the issue's soak: 2,000 studies, 2 + 2
    .venv/bin/python -m benchmarks.soak --studies 40         # a smoke run

It starts a stack of its own (free ports, a temporary folder, no EHR module) with
``--raw``/``--anon`` replicas and orthanc-raw's cache limited to ``--cache-mb`` (small, so the
cache is recycled many times over), loads ``--studies`` one-instance studies into the VNA,
populates them as one CSV cohort and lets the stack export them at ``--rate`` studies/s. It
records:

- **studies/min per quarter** of the cohort: the time between the exports that complete each
  quarter (from a Postgres count every ``--sample`` seconds), and the last quarter's rate over
  the first's (goal ≥ 0.9: no slow-down as the queue, the Orthanc index and the logs grow);
- **Orthanc storage**: orthanc-raw's and orthanc-anon's ``TotalDiskSize`` (``/statistics``,
  one replica of each answers for the shared index) at every sample, its maximum against the
  cache limit (goal: raw within it);
- **RSS** of every supervised process at the start and at the end, from ``/proc`` (Postgres:
  the proportional set size of the postmaster and its backends, which share their buffers) (goal stated by the reader: no process that only grows).

Figures go to stdout as Markdown and to ``benchmarks/.work/soak-<studies>.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests

from benchmarks.common import WORK_DIR
from stack.driver import Stack
from stack.settings import StackSettings
from stack.synthetic.dicom_builder import base_dataset, to_bytes

PROJECT = "soak"
STUDY_DATETIME = "2023-01-05T10:15:00"


@dataclass
class Soak:
    studies: int
    raw: int
    anon: int
    cache_mb: int
    samples: list[dict[str, float]] = field(default_factory=list)
    quarters_s: list[float] = field(default_factory=list)
    rss_start_mb: dict[str, float] = field(default_factory=dict)
    rss_end_mb: dict[str, float] = field(default_factory=dict)
    states_end: dict[str, int] = field(default_factory=dict)

    @property
    def per_minute(self) -> list[float]:
        quarter = self.studies / 4
        return [60 * quarter / s if s > 0 else float("inf") for s in self.quarters_s]


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident set size of one process (0 if it is gone); ``field="Pss"`` the proportional
    share instead, which counts memory shared between processes once in all."""
    path = Path(f"/proc/{pid}/" + ("status" if field == "VmRSS" else "smaps_rollup"))
    try:
        for line in path.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


def rss_of_stack(stack: Stack) -> dict[str, float]:
    """RSS (MB) of every supervised program; Postgres with its backends."""
    names = [line.split()[0] for line in stack.supervisor("status").stdout.splitlines() if line]
    figures = {}
    for name in names:
        pid = stack.process_pid(name)
        if not pid:
            continue
        total = rss_mb(pid)
        if name == "postgres":  # its backends share its buffers: proportional shares, summed
            total = rss_mb(pid, "Pss") + sum(rss_mb(c, "Pss") for c in children(pid))
        figures[name] = round(total, 1)
    return figures


def load_cohort(stack: Stack, studies: int, size: int) -> Path:
    """One instance per study into the VNA; the cohort as a CSV for ``pixl populate``."""
    lines = ["mrn,accession_number,study_datetime"]
    with requests.Session() as vna:
        for number in range(1, studies + 1):
            uid = f"2.25.8800{number:06d}"
            mrn, accession = f"SOAKP{number:06d}", f"SOAKA{number:06d}"
            ds = base_dataset(
                sop_uid=f"{uid}.1.1",
                study_uid=uid,
                series_uid=f"{uid}.1",
                patient_id=mrn,
                accession=accession,
                rows=size,
                columns=size,
                pixel_seed=number,
            )
            vna.post(
                stack.settings.url("vna") + "/instances", data=to_bytes(ds), timeout=60
            ).raise_for_status()
            lines.append(f"{mrn},{accession},{STUDY_DATETIME}")
    csv = stack.settings.root / "soak.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv


def storage_mb(stack: Stack, name: str) -> float:
    try:
        response = requests.get(
            stack.settings.url(name) + "/statistics", auth=stack.orthanc_auth, timeout=10
        )
        return int(response.json()["TotalDiskSize"]) / 2**20 if response.ok else -1.0
    except (requests.RequestException, ValueError, KeyError):
        return -1.0


def run(args: argparse.Namespace) -> Soak:
    root = Path(tempfile.mkdtemp(prefix="pixl-soak-"))
    root.chmod(0o755)  # the postgres and orthanc users must reach their folders
    settings = StackSettings.for_tests(
        root, raw_replicas=args.raw, anon_replicas=args.anon, raw_cache_mb=args.cache_mb
    )
    settings.with_reports = False
    settings.test_projects = (PROJECT,)
    stack = Stack(settings)
    soak = Soak(args.studies, args.raw, args.anon, args.cache_mb)
    try:
        stack.up(timeout=180)
        csv = load_cohort(stack, args.studies, args.size)
        stack.pixl("rate", str(args.rate), "--in-flight", str(args.in_flight))
        soak.rss_start_mb = rss_of_stack(stack)
        started = time.monotonic()
        stack.pixl("populate", str(csv), "--project", PROJECT)
        marks = [args.studies * q / 4 for q in (1, 2, 3, 4)]
        last_mark = started
        deadline = started + args.timeout
        while marks and time.monotonic() < deadline:
            time.sleep(args.sample)
            rows = stack.query(
                "SELECT state, count(*) FROM study WHERE project = %s GROUP BY state", PROJECT
            )
            states = {state: int(n) for state, n in rows}
            now = time.monotonic()
            soak.samples.append(
                {
                    "t_s": round(now - started, 1),
                    "exported": states.get("exported", 0),
                    "settled": sum(
                        n
                        for s, n in states.items()
                        if s not in ("queued", "fetching", "anonymising")
                    ),
                    "raw_storage_mb": storage_mb(stack, "raw"),
                    "anon_storage_mb": storage_mb(stack, "anon"),
                }
            )
            settled = soak.samples[-1]["settled"]
            while marks and settled >= marks[0]:
                soak.quarters_s.append(round(now - last_mark, 1))
                last_mark = now
                marks.pop(0)
        soak.states_end = {
            state: int(n)
            for state, n in stack.query(
                "SELECT state, count(*) FROM study WHERE project = %s GROUP BY state", PROJECT
            )
        }
        soak.rss_end_mb = rss_of_stack(stack)
    finally:
        stack.down()
        logs = WORK_DIR / "soak-logs"
        shutil.rmtree(logs, ignore_errors=True)
        if settings.logs_dir.exists():
            shutil.copytree(settings.logs_dir, logs)
        shutil.rmtree(root, ignore_errors=True)
    return soak


def report(soak: Soak) -> str:
    rates = soak.per_minute
    ratio = rates[3] / rates[0] if len(rates) == 4 and rates[0] else float("nan")
    raw_max = max((s["raw_storage_mb"] for s in soak.samples), default=-1)
    anon_max = max((s["anon_storage_mb"] for s in soak.samples), default=-1)
    lines = [
        f"Soak: {soak.studies} studies, {soak.raw} orthanc-raw + {soak.anon} orthanc-anon, "
        f"cache limit {soak.cache_mb} MB; end states {soak.states_end}",
        "",
        "| quarter | seconds | studies/min |",
        "|---|---|---|",
        *[
            f"| {n + 1} | {s} | {r:.1f} |"
            for n, (s, r) in enumerate(zip(soak.quarters_s, rates, strict=True))
        ],
        "",
        f"last quarter / first quarter: {ratio:.2f} (goal ≥ 0.90)",
        f"orthanc-raw storage max {raw_max:.1f} MB (limit {soak.cache_mb} MB: "
        f"{'within' if 0 <= raw_max <= soak.cache_mb else 'OVER or unknown'}); "
        f"orthanc-anon max {anon_max:.1f} MB",
        "",
        "| process | RSS start MB | RSS end MB |",
        "|---|---|---|",
        *[
            f"| {name} | {soak.rss_start_mb.get(name, 0)} | {soak.rss_end_mb.get(name, 0)} |"
            for name in sorted(set(soak.rss_start_mb) | set(soak.rss_end_mb))
        ],
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--studies", type=int, default=2000)
    parser.add_argument("--raw", type=int, default=2, help="orthanc-raw replicas")
    parser.add_argument("--anon", type=int, default=2, help="orthanc-anon replicas")
    parser.add_argument("--cache-mb", type=int, default=20, help="orthanc-raw's storage limit")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--rate", type=float, default=20.0, help="pixl rate, studies/s")
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--timeout", type=float, default=4 * 3600.0, help="seconds at most")
    args = parser.parse_args(argv)
    if args.studies < 4:
        parser.error("--studies must be at least 4 (quarters)")
    soak = run(args)
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    out = WORK_DIR / f"soak-{args.studies}.json"
    out.write_text(json.dumps({**asdict(soak), "per_minute": soak.per_minute}, indent=1))
    print(report(soak))
    print(f"\n(samples and figures in {out})")
    complete = len(soak.quarters_s) == 4
    return 0 if complete else 1


if __name__ == "__main__":
    raise SystemExit(main())
