"""The EHR service: health, status, the worker thread, and export to a real FTPS server."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
import yaml
from fastapi.testclient import TestClient

from pixl_core import public_scan
from pixl_core.config.projects import load_project
from pixl_core.db.connection import connect
from pixl_core.hashing import ProjectHasher, hash_accession_number
from pixl_core.transport.ftps import FtpsClient
from pixl_ehr.report_worker import ReportWorkerSettings
from pixl_ehr.service import ServiceConfig, create_app
from stack.ports import free_port
from tests.integration.ehr_fixtures import (
    PROJECT,
    SECRET,
    FakeCogstack,
    Identifiers,
    add_extract,
    fake_check,
    load_emap,
    row,
    set_state,
    stage_public,
)

STAMP = "2024-03-01T10-15-00"
REPO_DIR = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def hash_key(monkeypatch):
    monkeypatch.setenv("PIXL_HASH_KEY", SECRET.decode())


@pytest.fixture
def conn(db_url):
    connection = connect(db_url)
    yield connection
    connection.close()


class Uploads:
    """A DSH client factory that counts the uploads of every client it makes."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self.uploaded: list[str] = []

    def __call__(self, project: str) -> FtpsClient:
        uploads = self.uploaded

        class Counting(FtpsClient):
            def upload_bytes(self, remote_path, data):
                uploads.append(remote_path)
                return super().upload_bytes(remote_path, data)

        return Counting(self.settings)


@pytest.fixture
def uploads(dsh_ftps_server) -> Uploads:
    return Uploads(dsh_ftps_server.settings())


@pytest.fixture
def config(db_url, uploads) -> ServiceConfig:
    return ServiceConfig(db_url=db_url, start_worker=False, ftps=uploads)


@pytest.fixture
def client(config) -> Iterator[TestClient]:
    with TestClient(create_app(config)) as test_client:
        yield test_client


@pytest.fixture
def ready(conn, tmp_path) -> dict[str, int]:
    """A staged extract with one checked, one flagged, one missing report."""
    staging = stage_public(tmp_path, STAMP)
    _extract, ids = add_extract(
        conn,
        [("MRN1", "ACC1", 1), ("MRN2", "ACC2", 2), ("MRN3", "ACC3", 3)],
        staging_path=staging,
    )
    by_state = dict(zip(("checked", "flagged", "missing"), ids, strict=True))
    set_state(conn, by_state["checked"], "checked")
    set_state(conn, by_state["flagged"], "flagged")
    set_state(conn, by_state["missing"], "missing", deidentified_text=None)
    return by_state


def dsh_files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file in the DSH folder: relative path → (inode, mtime in ns)."""
    return {
        str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_health(client):
    assert client.get("/health").json() == {"status": "ok"}


def test_status_counts_reports_by_state(client, ready):
    body = client.get("/status").json()
    counts = body["reports"][PROJECT]
    assert (counts["checked"], counts["flagged"], counts["missing"], counts["queued"]) == (
        1,
        1,
        1,
        0,
    )
    assert body["worker"]["running"] is False


def test_export_lands_files_with_a_matching_manifest(client, ready, conn, dsh_ftps_server):
    response = client.post(f"/export/{PROJECT}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["files_sent"], body["files_skipped"], body["reports_exported"]) == (4, 0, 1)
    assert body["reports_flagged"] == 1
    assert "MRN" not in response.text and "ACC" not in response.text

    folder = dsh_ftps_server.root / PROJECT / STAMP / "parquet"
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        "manifest.json",
        "public/PERSON.parquet",
        "public/PROCEDURE_OCCURRENCE.parquet",
        "radiology/radiology.parquet",
    ]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["project"] == PROJECT
    for entry in manifest["files"]:
        data = (folder / entry["path"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["size"] == len(data)
    assert len(manifest["files"]) == 3

    radiology = pd.read_parquet(folder / "radiology" / "radiology.parquet")
    hasher = ProjectHasher.for_project(PROJECT, SECRET)
    assert list(radiology["hashed_accession_number"]) == [hash_accession_number(hasher, "ACC1")]
    assert list(radiology["check_status"]) == ["passed"]

    assert row(conn, ready["checked"])["state"] == "exported"
    assert row(conn, ready["checked"])["exported_at"] is not None
    assert row(conn, ready["flagged"])["state"] == "flagged"


def test_default_client_sends_to_the_server_the_project_file_names(
    db_url, ready, dsh_ftps_server, tmp_path, monkeypatch
):
    """No client factory given: the export reads the project's ``destination:`` and takes the
    per-project password before the global one (which is wrong here, so using it would fail)."""
    server = dsh_ftps_server
    raw = yaml.safe_load((REPO_DIR / "projects" / f"{PROJECT}.yaml").read_text())
    raw["destination"] = {
        "ftps": {
            "host": server.host,
            "port": server.port,
            "user": server.user,
            "root": "/",
            "ca_file": str(server.ca_file),
        }
    }
    projects = tmp_path / "projects"
    projects.mkdir()
    (projects / f"{PROJECT}.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("PIXL_PROJECTS_DIR", str(projects))
    monkeypatch.setenv("PIXL_DSH_PASSWORD__CHEST_XRAY", server.password)
    monkeypatch.setenv("PIXL_DSH_PASSWORD", "not-the-password")
    monkeypatch.setenv("PIXL_DSH_RETRIES", "0")
    load_project.cache_clear()
    try:
        with TestClient(create_app(ServiceConfig(db_url=db_url, start_worker=False))) as client:
            response = client.post(f"/export/{PROJECT}")
    finally:
        load_project.cache_clear()
    assert response.status_code == 200, response.text
    assert response.json()["files_sent"] == 4
    assert (server.root / PROJECT / STAMP / "parquet" / "manifest.json").is_file()


def test_second_export_resends_nothing(client, ready, dsh_ftps_server, uploads):
    assert client.post(f"/export/{PROJECT}").status_code == 200
    before = dsh_files(dsh_ftps_server.root)
    sent_before = len(uploads.uploaded)
    time.sleep(0.02)  # a re-upload would get a later mtime and a new inode (rename)

    body = client.post(f"/export/{PROJECT}").json()
    assert (body["files_sent"], body["files_skipped"], body["reports_exported"]) == (0, 4, 0)
    assert dsh_files(dsh_ftps_server.root) == before
    assert len(uploads.uploaded) == sent_before


def test_approved_report_goes_out_in_the_next_export(client, ready, conn, dsh_ftps_server):
    from pixl_ehr import review

    client.post(f"/export/{PROJECT}")
    report = review.load(conn, ready["flagged"])
    assert review.approve(conn, report, "the flagged word is an eponym", "reviewer")
    body = client.post(f"/export/{PROJECT}").json()
    # The public files are already there; the radiology parquet and manifest change.
    assert (body["files_sent"], body["files_skipped"], body["reports_exported"]) == (2, 2, 1)
    folder = dsh_ftps_server.root / PROJECT / STAMP / "parquet"
    radiology = pd.read_parquet(folder / "radiology" / "radiology.parquet")
    assert sorted(radiology["check_status"]) == ["approved", "passed"]


def test_report_whose_text_changed_after_approval_is_withheld_and_counted(
    client, ready, conn, dsh_ftps_server, caplog
):
    from pixl_ehr import review

    report = review.load(conn, ready["flagged"])
    assert review.approve(conn, report, "the flagged word is an eponym", "reviewer")
    set_state(conn, ready["flagged"], "approved", deidentified_text="a re-run's new text")
    with caplog.at_level("WARNING", logger="pixl.ehr.export"):
        body = client.post(f"/export/{PROJECT}").json()
    assert (body["reports_in_parquet"], body["reports_exported"], body["reports_withheld"]) == (
        1,
        1,
        1,
    )
    folder = dsh_ftps_server.root / PROJECT / STAMP / "parquet"
    radiology = pd.read_parquet(folder / "radiology" / "radiology.parquet")
    assert list(radiology["check_status"]) == ["passed"]
    assert "new text" not in caplog.text
    assert f"report {ready['flagged']} withheld" in caplog.text
    assert row(conn, ready["flagged"])["state"] == "approved"  # not marked exported


def test_a_damaged_file_in_the_dsh_is_sent_again(client, ready, dsh_ftps_server, uploads):
    client.post(f"/export/{PROJECT}")
    target = dsh_ftps_server.root / PROJECT / STAMP / "parquet" / "public" / "PERSON.parquet"
    target.write_bytes(target.read_bytes()[:10])  # a truncated copy
    body = client.post(f"/export/{PROJECT}").json()
    assert (body["files_sent"], body["files_skipped"]) == (1, 3)
    assert uploads.uploaded[-1].endswith("public/PERSON.parquet")


def test_ftps_down_is_503_and_a_later_retry_works(
    client, config, ready, conn, dsh_ftps_server, unused_tcp_port
):
    working = config.ftps
    config.ftps = lambda project: FtpsClient(
        replace(dsh_ftps_server.settings(), port=unused_tcp_port, retries=0)
    )
    response = client.post(f"/export/{PROJECT}")
    assert response.status_code == 503
    detail = response.json()["detail"]
    assert detail.startswith("FTPS 127.0.0.1:") and "\n" not in detail
    assert row(conn, ready["checked"])["state"] == "checked"  # not marked exported

    config.ftps = working
    body = client.post(f"/export/{PROJECT}").json()
    assert (body["files_sent"], body["reports_exported"]) == (4, 1)


def test_unknown_project_is_404(client):
    response = client.post("/export/no-such-project")
    assert response.status_code == 404
    assert "unknown project 'no-such-project'" in response.json()["detail"]


def test_unknown_extract_is_404(client, ready):
    response = client.post(f"/export/{PROJECT}", params={"extract_id": 999_999})
    assert response.status_code == 404


def test_nothing_to_export_is_409(client, conn):
    assert client.post(f"/export/{PROJECT}").status_code == 409  # no extract at all
    add_extract(conn, [("MRN1", "ACC1", 1)])  # no staged files, report still queued
    response = client.post(f"/export/{PROJECT}")
    assert response.status_code == 409
    assert "1 in progress" in response.json()["detail"]


def test_missing_hash_key_is_one_line_500(client, ready, monkeypatch):
    monkeypatch.delenv("PIXL_HASH_KEY")
    response = client.post(f"/export/{PROJECT}")
    assert response.status_code == 500
    assert "PIXL_HASH_KEY" in response.json()["detail"]


def test_worker_thread_runs_from_startup_to_shutdown(db_url, conn, tmp_path):
    load_emap(db_url, tmp_path)
    _extract, ids = add_extract(conn, [("MRN0001", "ACC0001", 1), ("MRN0002", "ACC0002", 2)])
    config = ServiceConfig(
        db_url=db_url,
        deidentifier=FakeCogstack(),
        worker_settings=ReportWorkerSettings(worker_id="ehr:test", poll_seconds=0.05),
        worker_options={
            "emap_db_url": db_url,
            "checker": fake_check,
            "identifiers_factory": Identifiers,
        },
    )
    app = create_app(config)
    with TestClient(app) as test_client:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            counts = test_client.get("/status").json()["reports"][PROJECT]
            if counts["checked"] + counts["flagged"] == 2:
                break
            time.sleep(0.05)
        status = test_client.get("/status").json()
        assert status["worker"]["running"] is True
        assert status["reports"][PROJECT]["checked"] == 1
        assert status["reports"][PROJECT]["flagged"] == 1
        thread = app.state.worker.thread
    assert not thread.is_alive()
    assert {row(conn, i)["state"] for i in ids} == {"checked", "flagged"}


def test_radiology_parquet_read_back_has_no_identifiers(client, ready, dsh_ftps_server):
    client.post(f"/export/{PROJECT}")
    folder = dsh_ftps_server.root / PROJECT / STAMP / "parquet"
    data = (folder / "radiology" / "radiology.parquet").read_bytes()
    frame = pd.read_parquet(io.BytesIO(data))
    assert not frame.isin(["MRN1", "ACC1"]).any().any()


def _wait_http(url: str, deadline: float, process: subprocess.Popen[bytes]) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode(errors="replace") if process.stdout else ""
            pytest.fail(f"process exited early: {output[-2000:]}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    pytest.fail(f"{url} did not answer 200")


def _start(module: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", module, "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _stop(process: subprocess.Popen[bytes]) -> str:
    process.terminate()
    try:
        output, _ = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output.decode(errors="replace")


def test_service_process_with_the_cogstack_standin(db_url, conn, tmp_path):
    """``python -m pixl_ehr.service`` as the stack runs it, against the real Cogstack stand-in:
    healthy, works the queue, stops on SIGTERM, and logs no identifier or report text."""
    load_emap(db_url, tmp_path)
    _extract, ids = add_extract(conn, [("MRN0001", "ACC0001", 1), ("MRN0002", "ACC0002", 2)])
    repo = Path(__file__).resolve().parents[2]
    cogstack_port, ehr_port = free_port(), free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(repo), str(repo / "cli"), str(repo / "ehr")]),
        "PIXL_DB_URL": db_url,
        "PIXL_COGSTACK_URL": f"http://127.0.0.1:{cogstack_port}",
        "PIXL_COGSTACK_ALLOW_PLAIN_HTTP": "true",  # the stand-in here speaks plain HTTP
        "PIXL_EHR_TOKEN": "t" * 24,
        "PIXL_HASH_KEY": SECRET.decode(),
        "PIXL_REPORT_POLL_SECONDS": "0.1",
    }
    cogstack = _start("stack.standins.cogstack_api", cogstack_port, env)
    ehr = _start("pixl_ehr.service", ehr_port, env)
    output = ""
    try:
        deadline = time.monotonic() + 20
        _wait_http(f"http://127.0.0.1:{cogstack_port}/api/health", deadline, cogstack)
        _wait_http(f"http://127.0.0.1:{ehr_port}/health", deadline, ehr)
        while time.monotonic() < deadline:
            states = {row(conn, i)["state"] for i in ids}
            if states <= {"checked", "flagged"}:
                break
            time.sleep(0.1)
        status = requests.get(
            f"http://127.0.0.1:{ehr_port}/status",
            headers={"Authorization": f"Bearer {'t' * 24}"},
            timeout=5,
        ).json()
        assert status["worker"]["running"] is True
    finally:
        output = _stop(ehr)
        _stop(cogstack)
    assert ehr.returncode is not None
    assert states <= {"checked", "flagged"}, states
    text = row(conn, ids[1])["deidentified_text"]
    assert "Oakhurst" not in text  # the stand-in redacted "Mr Oakhurst"
    for forbidden in ("MRN000", "ACC000", "Quintrell", "Oakhurst", "radiograph"):
        assert forbidden not in output


# --- what the export refuses to send, and the parameters it refuses -----------------------------


@pytest.fixture
def staged(conn, tmp_path) -> Path:
    """An extract whose staged public files passed `pixl populate`'s scan (one checked report)."""
    folder = stage_public(tmp_path, STAMP)
    _extract, ids = add_extract(
        conn, [("MRN00011", "ACC00011", 1), ("MRN00012", "ACC00012", 2)], staging_path=folder
    )
    set_state(conn, ids[0], "checked")
    return folder


def _vouch(folder: Path) -> None:
    """Rewrite the scan record so that it vouches for every staged file as it is now."""
    digests = {path.name: public_scan.sha256_of(path) for path in folder.glob("*.parquet")}
    public_scan.write_scan_record(folder.parent, digests, public_scan.Identifiers())


def _assert_refused(response, dsh_ftps_server, uploads, *starts: str) -> str:
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "\n" not in detail and detail.startswith(starts), detail
    for value in ("MRN00011", "ACC00011", "9434765919", "Quintrell"):
        assert value not in detail
    assert uploads.uploaded == []
    assert dsh_files(dsh_ftps_server.root) == {}
    return detail


def test_export_refuses_staged_files_no_scan_vouches_for(client, staged, dsh_ftps_server, uploads):
    (staged.parent / public_scan.SCAN_RECORD).unlink()
    _assert_refused(
        client.post(f"/export/{PROJECT}"),
        dsh_ftps_server,
        uploads,
        "the staged public files of project chest-xray carry no record of the checks",
    )


def test_export_refuses_a_file_added_or_changed_after_the_scan(
    client, staged, dsh_ftps_server, uploads
):
    person = pq.read_table(staged / "PERSON.parquet")
    pq.write_table(
        person.append_column("Surname", pa.array(["Quintrell"] * person.num_rows)),
        staged / "PERSON.parquet",
    )
    _assert_refused(
        client.post(f"/export/{PROJECT}"),
        dsh_ftps_server,
        uploads,
        "public/PERSON.parquet of project chest-xray is not the file `pixl populate` checked",
    )
    _vouch(staged)  # even a record forged to match: the column itself is refused
    detail = _assert_refused(
        client.post(f"/export/{PROJECT}"), dsh_ftps_server, uploads, "public/PERSON.parquet: "
    )
    assert "column PERSON.Surname is not an OMOP CDM 5.4 column" in detail


def test_export_refuses_a_public_value_equal_to_a_cohort_identifier(
    client, staged, conn, dsh_ftps_server, uploads, tmp_path
):
    pq.write_table(
        pa.table({"care_site_id": [1], "care_site_name": ["ward of MRN00011"]}),
        staged / "CARE_SITE.parquet",
    )
    _vouch(staged)
    detail = _assert_refused(
        client.post(f"/export/{PROJECT}"), dsh_ftps_server, uploads, "public/CARE_SITE.parquet"
    )
    assert "column CARE_SITE.care_site_name holds 1 value(s)" in detail and "an MRN" in detail

    # An NHS number is not in PIXL's database: found through the extract's private files.
    private = tmp_path / "extract" / "private"
    private.mkdir(parents=True)
    pq.write_table(
        pa.table({"person_id": [10], "PrimaryMrn": ["MRN00011"], "NhsNumber": ["9434765919"]}),
        private / "PERSON_LINKS.parquet",
    )
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE extract SET source_path = %s", (str(private.parent),))
    pq.write_table(
        pa.table({"care_site_id": [1], "care_site_name": ["NHS 943 476 5919"]}),
        staged / "CARE_SITE.parquet",
    )
    _vouch(staged)
    detail = _assert_refused(
        client.post(f"/export/{PROJECT}"), dsh_ftps_server, uploads, "public/CARE_SITE.parquet"
    )
    assert "an NHS number of the cohort" in detail


def test_clean_staged_files_still_go_out(client, staged, dsh_ftps_server):
    response = client.post(f"/export/{PROJECT}")
    assert response.status_code == 200, response.text
    assert response.json()["files_sent"] == 4


@pytest.mark.parametrize(
    ("method", "url", "status", "start"),
    [
        ("post", "/export/" + "a" * 60_000, 404, "unknown project: a project is a slug"),
        ("post", "/export/Chest%20Xray", 404, "unknown project: a project is a slug"),
        ("post", f"/export/{PROJECT}?extract_id={'9' * 40}", 422, "query parameter extract_id"),
        ("post", f"/export/{PROJECT}?extract_id=0", 422, "query parameter extract_id"),
        ("post", f"/export/{PROJECT}?extract_id={'x' * 5000}", 422, "query parameter extract_id"),
        ("get", "/status?project=" + "a" * 60_000, 422, "query parameter project"),
    ],
)
def test_bad_parameters_are_one_line_4xx_without_the_value(client, method, url, status, start):
    response = getattr(client, method)(url)
    assert response.status_code == status, response.text[:300]
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and detail.startswith(start), detail
    assert len(response.text) < 400
