"""``pixl verify`` and ``pixl manifest`` on a real Postgres and the real FTPS DSH stand-in:
the command's lines, exit codes and one-line errors (the whole pipeline: tests/system)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pixl_cli.main import app
from pixl_core.config.projects import load_project
from pixl_core.db.connection import Connection, connect
from tests.fixtures.ftps import FtpServerInfo

REPO = Path(__file__).resolve().parents[2]
PROJECT = "verify-cli"
runner = CliRunner()


def pixl(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture
def dsh(
    db_url: str, dsh_ftps_server: FtpServerInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FtpServerInfo]:
    """A project of chest-xray's allow-lists whose destination is the stand-in DSH."""
    projects = tmp_path / "projects"
    projects.mkdir()
    raw = yaml.safe_load((REPO / "projects" / "chest-xray.yaml").read_text())
    raw["destination"] = {
        "ftps": {"host": dsh_ftps_server.host, "port": dsh_ftps_server.port,
                 "user": dsh_ftps_server.user, "root": "/"}
    }  # fmt: skip
    (projects / f"{PROJECT}.yaml").write_text(yaml.safe_dump(raw))
    bare = dict(raw)
    del bare["destination"]
    (projects / "no-destination.yaml").write_text(yaml.safe_dump(bare))
    monkeypatch.setenv("PIXL_PROJECTS_DIR", str(projects))
    monkeypatch.setenv("PIXL_ALLOWLISTS_DIR", str(REPO / "tag_allowlists"))
    monkeypatch.setenv("PIXL_DSH_PASSWORD", dsh_ftps_server.password)
    monkeypatch.setenv("PIXL_DSH_CA_FILE", str(dsh_ftps_server.ca_file))
    monkeypatch.setenv("PIXL_DSH_RETRIES", "0")
    monkeypatch.setenv("PIXL_DB_URL", db_url)
    load_project.cache_clear()
    yield dsh_ftps_server
    load_project.cache_clear()


def export(conn: Connection, server: FtpServerInfo, number: int) -> str:
    """A study PIXL exported: its zip on the DSH, its row recorded; returns the zip's name."""
    data = f"zip of study {number}".encode() * 100
    name = f"2.25.{5000 + number}.zip"
    path = server.root / PROJECT / "dicom" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO study (project, mrn, accession_number, state, pseudo_study_uid, sha256, "
            "instance_count, zip_bytes, exported_at) "
            "VALUES (%s, %s, %s, 'exported', %s, %s, 2, %s, now())",
            (PROJECT, f"M{number}", f"A{number}", name[: -len(".zip")],
             hashlib.sha256(data).hexdigest(), len(data)),
        )  # fmt: skip
    return name


@pytest.fixture
def conn(db_url: str, dsh: FtpServerInfo) -> Iterator[Connection]:
    connection = connect(db_url)
    yield connection
    connection.close()


def test_verify_says_what_is_wrong_and_names_the_fix(conn, dsh):
    names = [export(conn, dsh, n) for n in (1, 2, 3)]
    folder = dsh.root / PROJECT / "dicom"

    no_manifest = pixl("verify", PROJECT)
    assert no_manifest.exit_code == 1
    assert "manifest: missing (0 listed)" in no_manifest.output
    assert f"fix: `pixl manifest {PROJECT}`" in no_manifest.output

    written = pixl("manifest", PROJECT)
    assert written.exit_code == 0, written.output
    assert f"{PROJECT}/dicom/manifest.json written (3 zips, 6 instances)" in written.output
    listed = json.loads((folder / "manifest.json").read_text())
    assert [z["file"] for z in listed["zips"]] == names

    good = pixl("verify", PROJECT)
    assert good.exit_code == 0, good.output
    assert f"{PROJECT} (ftps): 3 expected from PIXL's records, 3 found, 3 ok" in good.output
    assert "nothing missing, extra or corrupt" in good.output

    (folder / names[0]).write_bytes(b"x" * (folder / names[0]).stat().st_size)
    bad = pixl("verify", PROJECT, "--json")
    assert bad.exit_code == 1
    report = json.loads(bad.output)
    assert (report["corrupt"], report["missing"], report["ok"]) == ([names[0]], [], 2)

    requeued = pixl("verify", PROJECT, "--requeue")
    assert requeued.exit_code == 1
    assert f"{PROJECT}: 1 stud(ies) queued again" in requeued.output
    assert not (folder / names[0]).exists()
    with conn, conn.cursor() as cur:
        cur.execute("SELECT state, last_error_code FROM study WHERE pseudo_study_uid = '2.25.5001'")
        assert cur.fetchone() == ("queued", "dsh_corrupt")
    # The manifest no longer lists the study; the rest checks out.
    assert [z["file"] for z in json.loads((folder / "manifest.json").read_text())["zips"]] == (
        names[1:]
    )
    assert pixl("verify", PROJECT).exit_code == 0


def one_line(result, code: int, *words: str) -> None:
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    for word in words:
        assert word in lines[0]


def test_bad_arguments_are_one_line_errors(dsh, monkeypatch):
    one_line(pixl("verify", "Not A Slug"), 2, "PROJECT must be a project slug")
    one_line(pixl("verify", "no-such-project"), 2, "no-such-project")
    one_line(pixl("verify", "no-destination"), 2, "has no 'destination:'")
    one_line(pixl("manifest", "no-destination"), 2, "has no 'destination:'")
    monkeypatch.delenv("PIXL_DSH_PASSWORD")
    one_line(pixl("verify", PROJECT), 2, "PIXL_DSH_PASSWORD")


def test_a_dsh_that_does_not_answer_is_one_line_naming_the_fix(dsh, unused_tcp_port):
    projects = Path(os.environ["PIXL_PROJECTS_DIR"])
    raw = yaml.safe_load((projects / f"{PROJECT}.yaml").read_text())
    raw["destination"]["ftps"]["port"] = unused_tcp_port
    (projects / f"{PROJECT}.yaml").write_text(yaml.safe_dump(raw))
    load_project.cache_clear()
    one_line(pixl("verify", PROJECT), 1, "connect failed", "check that the destination answers")
