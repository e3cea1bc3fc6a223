"""Orthanc's storage on files or in PostgreSQL (issue 12): what each costs in CPU time.

orthanc-raw and orthanc-anon keep their index in PIXL's Postgres (the ``orthanc-postgresql``
plugin); their DICOM files can stay in a folder (``EnableStorage: false``) or go into Postgres
as large objects (``EnableStorage: true``). This starts one Postgres cluster and, for each
choice, one bare Orthanc (no Python plugin) on the same database layout the stack uses, then
stores N synthetic chest CRs over REST, reads each back (what the hand-off and the exporter
do) and deletes them (what the cache recycling and the exporter do). It reports the CPU time
of Orthanc and of every Postgres process in each phase (``/proc``: the postmaster's own and
its reaped children's, plus its live backends'), which the machine's other load disturbs far
less than wall time, and the wall time for reference.

    .venv/bin/python -m benchmarks.orthanc_storage --instances 60 --size 1024
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import requests

from stack.ports import free_port
from stack.postgres import ensure_databases, start_cluster, stop_cluster

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
PLUGIN = "/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so"
STORAGE_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPostgreSQLStorage.so"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU seconds of a process (and of its reaped children if asked)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    used = int(fields[11]) + int(fields[12])
    if children:
        used += int(fields[13]) + int(fields[14])
    return used / TICKS


def postgres_cpu(postmaster: int) -> float:
    """The cluster's CPU seconds: the postmaster with its reaped children, and live backends."""
    total = cpu_seconds(postmaster, children=True)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def make_instances(count: int, size: int) -> list[bytes]:
    from pydicom.uid import generate_uid

    from stack.synthetic.dicom_builder import base_dataset, chest_pixels, set_pixels, to_bytes

    study, series = generate_uid(), generate_uid()
    files = []
    for number in range(count):
        ds = base_dataset(sop_uid=generate_uid(), study_uid=study, series_uid=series)
        set_pixels(ds, chest_pixels(size, "PA", "CR", "MONOCHROME2", [number]))
        files.append(to_bytes(ds))
    return files


def run_mode(root: Path, pg_port: int, password: str, mode: str, files: list[bytes]) -> dict:
    http = free_port()
    storage = root / f"storage-{mode}"
    storage.mkdir()
    config = {
        "Name": f"bench-{mode}",
        "HttpPort": http,
        "DicomServerEnabled": False,
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpCompressionEnabled": False,
        "SaveJobs": False,
        "MaximumStorageCacheSize": 0,  # reads come from the storage, not from memory
        "PostgreSQL": {
            "EnableIndex": True,
            "EnableStorage": mode == "postgres",
            "Host": "127.0.0.1",
            "Port": pg_port,
            "Database": f"bench_{mode}",
            "Username": f"bench_{mode}",
            "Password": password,
            "Lock": False,
            "IndexConnectionsCount": 4,
        },
        "Plugins": [PLUGIN] + ([STORAGE_PLUGIN] if mode == "postgres" else []),
    }
    path = root / f"orthanc-{mode}.json"
    path.write_text(json.dumps(config))
    log = (root / f"orthanc-{mode}.log").open("w")
    process = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http}"
    session = requests.Session()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if session.get(url + "/system", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc ({mode}) did not start: see {log.name}")
            time.sleep(0.2)
        postmaster = int((root / "pg" / "postmaster.pid").read_text().split()[0])
        figures: dict[str, object] = {"mode": mode}
        ids: list[str] = []

        def phase(name: str, action) -> None:  # type: ignore[no-untyped-def]
            o0, p0, w0 = cpu_seconds(process.pid), postgres_cpu(postmaster), time.monotonic()
            action()
            figures[name] = {
                "orthanc_cpu_s": round(cpu_seconds(process.pid) - o0, 3),
                "postgres_cpu_s": round(postgres_cpu(postmaster) - p0, 3),
                "wall_s": round(time.monotonic() - w0, 3),
            }

        def store() -> None:
            for data in files:
                ids.append(session.post(url + "/instances", data=data, timeout=60).json()["ID"])

        def read() -> None:
            for instance in ids:
                session.get(f"{url}/instances/{instance}/file", timeout=60).raise_for_status()

        def delete() -> None:
            for instance in ids:
                session.delete(f"{url}/instances/{instance}", timeout=60).raise_for_status()

        phase("store", store)
        phase("read", read)
        phase("delete", delete)
        return figures
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=60)
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels (16 bit)")
    args = parser.parse_args(argv)
    files = make_instances(args.instances, args.size)
    root = Path(tempfile.mkdtemp(prefix="pixl-storage-bench-"))
    root.chmod(0o755)
    pg = root / "pg"
    password = "bench-" + os.urandom(8).hex()
    pg_port = free_port()
    try:
        from stack.postgres import ensure_initialised

        ensure_initialised(pg, password)
        ensure_databases(pg, {"bench_files": password, "bench_postgres": password})
        start_cluster(pg, pg_port, root / "pg.log", password=password)
        results = [run_mode(root, pg_port, password, mode, files) for mode in ("files", "postgres")]
    finally:
        stop_cluster(pg)
        shutil.rmtree(root, ignore_errors=True)
    size_mb = sum(len(f) for f in files) / 2**20
    print(
        json.dumps(
            {"instances": len(files), "total_mb": round(size_mb, 1), "results": results}, indent=1
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
