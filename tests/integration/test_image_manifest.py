"""The images' manifest against a real Postgres: built from the exported rows, written by one
writer at a time, never left behind by concurrent exports; and the requeue of ``pixl verify``.

The DSH is the exporter tests' stand-in (``FakeDsh``): what is under test is when and from
what the manifest is written, not FTPS (the system test writes and reads the real one).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from typing import Any

from pixl_core.db import exported_studies
from pixl_core.db.connection import Connection, connect
from pixl_core.dsh import manifest, manifest_writer
from tests.integration.imaging_fakes import FakeDsh, FakeFtpsClient

PROJECT = "chest-xray"
MANIFEST = f"{PROJECT}/dicom/manifest.json"


def _extract(conn: Connection) -> int:
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO extract (project, extract_datetime, omop_es_hash, source_path) "
            "VALUES (%s, '2024-03-01T10:15:00Z', 'abc123', '/x') RETURNING id",
            (PROJECT,),
        )
        return cur.fetchone()[0]


def _study(
    conn: Connection, number: int, extract_id: int | None, state: str = "anonymising"
) -> int:
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO study (project, extract_id, mrn, accession_number, state, "
            "instances_sent) VALUES (%s, %s, %s, %s, %s, 1) RETURNING id",
            (PROJECT, extract_id, f"M{number}", f"A{number}", state),
        )
        return cur.fetchone()[0]


def _pseudo(number: int) -> str:
    return f"2.25.{1000 + number}"


def _digest(number: int) -> str:
    return hashlib.sha256(f"zip {number}".encode()).hexdigest()


def _export(conn: Connection, study_id: int, number: int) -> None:
    """What the exporter records once a zip is complete on the DSH."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE study SET state = 'exported', exported_at = now(), pseudo_study_uid = %s, "
            "sha256 = %s, instance_count = %s, zip_bytes = %s WHERE id = %s",
            (_pseudo(number), _digest(number), number % 3 + 1, 100 + number, study_id),
        )


def _manifest(dsh: FakeDsh) -> dict[str, Any]:
    return json.loads(dsh.files[MANIFEST])


def test_manifest_lists_every_exported_zip_with_its_digest_and_counts(conn):
    extract_id = _extract(conn)
    ids = [_study(conn, n, extract_id) for n in range(1, 4)]
    for number, study_id in zip((1, 2), ids[:2], strict=True):
        _export(conn, study_id, number)
    dsh = FakeDsh()

    assert manifest_writer.refresh(conn, PROJECT, dsh.client, "anon:test") == 1

    document = _manifest(dsh)
    assert [z["file"] for z in document["zips"]] == [f"{_pseudo(1)}.zip", f"{_pseudo(2)}.zip"]
    assert [(z["sha256"], z["instances"], z["bytes"]) for z in document["zips"]] == [
        (_digest(1), 2, 101),
        (_digest(2), 3, 102),
    ]
    assert document["counts"] == {"zips": 2, "instances": 5}
    (extract,) = document["extracts"]
    assert (extract["id"], extract["omop_es_hash"], extract["zips"]) == (extract_id, "abc123", 2)
    assert extract["extract_datetime"] == "2024-03-01T10:15:00+00:00"
    assert document["project"] == PROJECT and document["format"] == manifest.FORMAT
    # Current now: a second refresh writes nothing; an export makes it stale again.
    assert manifest_writer.refresh(conn, PROJECT, dsh.client, "anon:test") == 0
    assert exported_studies.stale_projects(conn) == []
    _export(conn, ids[2], 3)
    assert exported_studies.stale_projects(conn) == [PROJECT]
    assert manifest_writer.refresh(conn, PROJECT, dsh.client, "anon:test") == 1
    assert len(_manifest(dsh)["zips"]) == 3


class _SlowDsh(FakeDsh):
    """A DSH whose manifest uploads take a while, so writers overlap; it remembers whether two
    uploads of the manifest ever ran at once."""

    def __init__(self) -> None:
        super().__init__()
        self.active = 0
        self.overlapped = False
        self.guard = threading.Lock()

    def client(self, project: str) -> FakeFtpsClient:
        dsh = self

        class Client(FakeFtpsClient):
            def upload_bytes(self, remote_path: str, data: bytes) -> None:
                with dsh.guard:
                    dsh.active += 1
                    dsh.overlapped |= dsh.active > 1
                time.sleep(0.02)
                super().upload_bytes(remote_path, data)
                with dsh.guard:
                    dsh.active -= 1

        return Client(self)


def test_concurrent_exports_never_leave_a_zip_out_of_the_manifest(db_url, conn):
    """Eight exporters record studies and refresh the manifest at once, as replicas do: one
    writes at a time, and the last manifest lists every exported zip."""
    extract_id = _extract(conn)
    numbers = list(range(1, 41))
    ids = {n: _study(conn, n, extract_id) for n in numbers}
    dsh = _SlowDsh()
    errors: list[BaseException] = []

    def exporter(mine: list[int]) -> None:
        own = connect(db_url)
        try:
            for number in mine:
                _export(own, ids[number], number)
                manifest_writer.refresh(own, PROJECT, dsh.client, "anon:test")
        except BaseException as exc:
            errors.append(exc)
        finally:
            own.close()

    threads = [threading.Thread(target=exporter, args=(numbers[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert not dsh.overlapped, "two writers uploaded the manifest at once"
    listed = {z["file"] for z in _manifest(dsh)["zips"]}
    assert listed == {f"{_pseudo(n)}.zip" for n in numbers}
    assert exported_studies.stale_projects(conn) == []
    assert len(dsh.manifest_writes) < len(numbers), "writes were not coalesced"


def test_a_writer_that_finds_the_lock_taken_leaves_the_write_to_its_holder(db_url, conn):
    extract_id = _extract(conn)
    study_id = _study(conn, 1, extract_id)
    _export(conn, study_id, 1)
    holder = connect(db_url)
    try:
        with holder, holder.cursor() as cur:
            cur.execute(
                "SELECT pg_advisory_lock(hashtext('pixl-image-manifest:' || %s))", (PROJECT,)
            )
        dsh = FakeDsh()
        assert manifest_writer.write_now(conn, PROJECT, dsh.client, "anon:test") is None
        assert manifest_writer.refresh(conn, PROJECT, dsh.client, "anon:test") == 0
        assert MANIFEST not in dsh.files
    finally:
        holder.close()  # its lock goes with its session
    assert manifest_writer.refresh(conn, PROJECT, dsh.client, "anon:test") == 1


def test_requeue_moves_only_exported_studies_and_the_manifest_drops_them(conn):
    extract_id = _extract(conn)
    first, second = _study(conn, 1, extract_id), _study(conn, 2, extract_id)
    _export(conn, first, 1)
    _export(conn, second, 2)
    dsh = FakeDsh()
    manifest_writer.refresh(conn, PROJECT, dsh.client, "anon:test")

    assert exported_studies.requeue_exported(conn, PROJECT, [_pseudo(1)], "dsh_corrupt") == 1
    assert exported_studies.requeue_exported(conn, PROJECT, [_pseudo(1)], "dsh_corrupt") == 0

    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT state, attempts, export_attempts, last_error_code FROM study WHERE id = %s",
            (first,),
        )
        assert cur.fetchone() == ("queued", 0, 0, "dsh_corrupt")
    assert exported_studies.stale_projects(conn) == [PROJECT]
    manifest_writer.refresh(conn, PROJECT, dsh.client, "anon:test")
    assert [z["file"] for z in _manifest(dsh)["zips"]] == [f"{_pseudo(2)}.zip"]
