"""The local stack's replicas (issue 12): each replica of a role gets its own ports and AE title
and the role's database, secrets and storage; the VNA may move to every orthanc-raw replica."""

from __future__ import annotations

import json

import pytest

from pixl_core.errors import PixlConfigError
from stack import local_stack
from stack.settings import StackSettings, replicas_from_env


@pytest.fixture
def settings(tmp_path, monkeypatch) -> StackSettings:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PIXL_RAW_REPLICAS", "2")
    monkeypatch.setenv("PIXL_ANON_REPLICAS", "3")
    settings = StackSettings.for_tests(tmp_path)
    local_stack.prepare_folders(settings)
    return settings


@pytest.mark.parametrize("value", ["0", "9", "two", "-1", "1.5"])
def test_a_replica_count_out_of_range_is_refused_with_the_fix(monkeypatch, value):
    monkeypatch.setenv("PIXL_RAW_REPLICAS", value)
    with pytest.raises(PixlConfigError, match="PIXL_RAW_REPLICAS must be a whole number from 1"):
        replicas_from_env("PIXL_RAW_REPLICAS")


def test_replicas_default_to_one(monkeypatch, tmp_path):
    monkeypatch.delenv("PIXL_RAW_REPLICAS", raising=False)
    monkeypatch.delenv("PIXL_ANON_REPLICAS", raising=False)
    settings = StackSettings.for_tests(tmp_path)
    assert (settings.replicas("raw"), settings.replicas("anon")) == (["raw"], ["anon"])


def test_each_replica_has_its_own_ports_and_aet_and_the_role_s_database(settings):
    assert settings.replicas("anon") == ["anon", "anon2", "anon3"]
    configs = {
        replica: json.loads(local_stack.render_orthanc_config(settings, "raw", replica).read_text())
        for replica in settings.replicas("raw")
    }
    first, second = configs["raw"], configs["raw2"]
    assert (first["DicomAet"], second["DicomAet"]) == ("PIXLRAW", "PIXLRAW2")
    assert first["HttpPort"] != second["HttpPort"] and first["DicomPort"] != second["DicomPort"]
    assert second["HttpPort"] == settings.ports["raw2_http"]
    for config in configs.values():
        section = config["PostgreSQL"]
        assert (section["Database"], section["Username"]) == ("orthanc_raw", "orthanc_raw")
        assert section["Password"] == "${PIXL_ORTHANC_RAW_DB_PASSWORD}"  # expanded by Orthanc
        assert section["Lock"] is False and section["EnableIndex"] is True
        assert section["Port"] == settings.ports["postgres"]
    assert first["StorageDirectory"] == second["StorageDirectory"]


def test_the_vna_may_move_to_every_raw_replica(settings):
    vna = json.loads(local_stack.render_orthanc_config(settings, "vna").read_text())
    destinations = {m["AET"]: m["Port"] for m in vna["DicomModalities"].values()}
    assert destinations == {
        "PIXLRAW": settings.ports["raw_dicom"],
        "PIXLRAW2": settings.ports["raw2_dicom"],
    }


def test_a_replica_gets_its_role_s_secrets_only(settings):
    raw2 = local_stack._secrets_for("orthanc-raw-2", settings)
    assert "PIXL_ORTHANC_RAW_DB_PASSWORD" in raw2 and "PIXL_DSH_PASSWORD" not in raw2
    assert "PIXL_ORTHANC_ANON_DB_PASSWORD" not in raw2
    anon3 = local_stack._secrets_for("orthanc-anon-3", settings)
    assert "PIXL_ORTHANC_ANON_DB_PASSWORD" in anon3 and "PIXL_ORTHANC_RAW_PASSWORD" not in anon3


def test_supervisord_runs_every_replica_with_its_aet(settings):
    conf = local_stack.supervisor_config(settings)
    for name in (
        "orthanc-raw",
        "orthanc-raw-2",
        "orthanc-anon",
        "orthanc-anon-2",
        "orthanc-anon-3",
    ):
        assert f"[program:{name}]" in conf
    assert 'PIXL_RAW_AET="PIXLRAW2"' in conf
    assert settings.public_environment()["PIXL_ANON_URLS"].count(",") == 2


def test_a_dcmqrscp_archive_knows_every_raw_replica(settings):
    settings.add_archive("pacs", "PACSTEST")
    archive = local_stack.archive_spec(settings, "pacs")
    assert {(p.aet, p.port) for p in archive.destinations} == {
        ("PIXLRAW", settings.ports["raw_dicom"]),
        ("PIXLRAW2", settings.ports["raw2_dicom"]),
    }
    assert {"PIXLRAW", "PIXLRAW2"} <= set(archive.callers)
