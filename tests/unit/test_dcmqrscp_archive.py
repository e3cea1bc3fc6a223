"""The dcmqrscp archive stand-in without running it: its generated configuration, what its log
says, and the stack settings that start it (as the VNA or as another archive)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stack import local_stack
from stack.settings import StackSettings, StackSettingsError, vna_kind_from_env
from stack.standins.dcmqrscp_archive import (
    ArchiveLog,
    DcmqrscpArchive,
    Peer,
    config_text,
    instance_level_without_series,
    log_config_text,
)


def archive(tmp_path: Path, callers: tuple[str, ...] = ("PIXLRAW", "LOADER")) -> DcmqrscpArchive:
    return DcmqrscpArchive(
        name="vna",
        aet="VNA",
        port=24245,
        storage_dir=tmp_path / "data" / "vna-dcmqrscp",
        run_dir=tmp_path / "run",
        logs_dir=tmp_path / "logs",
        destinations=(Peer("PIXLRAW", 27318),),
        callers=callers,
    )


def test_config_knows_orthanc_raw_as_caller_and_move_destination(tmp_path: Path):
    text = config_text(archive(tmp_path))
    assert "NetworkTCPPort  = 24245" in text
    host_line = next(line for line in text.splitlines() if line.startswith("peer_pixlraw ="))
    # by address and by the name the address resolves to: dcmqrscp matches peers by name
    assert "(PIXLRAW, 127.0.0.1, 27318)" in host_line
    ae_line = next(line for line in text.splitlines() if line.startswith("VNA "))
    assert ae_line.split()[1] == str(tmp_path / "data" / "vna-dcmqrscp")
    assert ae_line.endswith("RW (500, 1024mb) peer_pixlraw, peer_loader")


def test_an_archive_refusing_pixl_still_knows_where_to_move_but_not_the_caller(tmp_path: Path):
    text = config_text(archive(tmp_path, callers=("LOADER",)))
    assert "(PIXLRAW, 127.0.0.1, 27318)" in text  # still a known move destination
    ae_line = next(line for line in text.splitlines() if line.startswith("VNA "))
    assert ae_line.endswith("peer_loader")


def test_command_checks_move_identifiers_and_forks():
    command = archive(Path("/x")).command()
    assert "--check-move" in command
    assert "--single-process" not in command  # it crashes when an association ends
    assert command[command.index("--log-config") + 1] == "/x/run/vna-dcmqrscp-log.cfg"


def test_log_config_drops_study_level_find_dumps_and_keeps_the_rest():
    text = log_config_text()
    rules = [line.split("= ", 1)[1] for line in text.splitlines() if "filters." in line]
    # first match decides: series/instance level accepted before any find dump is denied
    assert rules[1:3] == ["CS [SERIES]", "true"]
    assert rules[4:6] == ["CS [IMAGE]", "true"]
    assert rules[7:9] == ["Find SCP Request Identifiers", "false"]
    assert "[%i]" in text  # the pid tells concurrent associations apart


LOG = """\
2026-12-01 06:24:45.880 [101]  INFO: Association Received (localhost:PIXLRAW -> VNA)
2026-12-01 06:24:45.881 [101]  INFO: Received Find SCP:
2026-12-01 06:24:45.881 [101]  INFO: Message Type                  : C-FIND RQ
2026-12-01 06:24:45.882 [102]  INFO: Received Move SCP:
2026-12-01 06:24:45.883 [101]  INFO: Find SCP Request Identifiers:
2026-12-01 06:24:45.883 [102]  INFO: Move SCP Request Identifiers:
2026-12-01 06:24:45.883 [101]  INFO: (0008,0052) CS [IMAGE]                                  #   6, 1 QueryRetrieveLevel
2026-12-01 06:24:45.884 [102]  INFO: (0008,0052) CS [STUDY]                                  #   6, 1 QueryRetrieveLevel
2026-12-01 06:24:45.884 [101]  INFO: (0020,000d) UI [1.2.3]                                  #   6, 1 StudyInstanceUID
2026-12-01 06:24:45.884 [102]  INFO: (0020,000d) UI [1.2.9]                                  #   6, 1 StudyInstanceUID
2026-12-01 06:24:45.884 [101]  INFO: (0020,000e) UI (no value available)                     #   0, 0 SeriesInstanceUID
2026-12-01 06:24:45.885 [102]  INFO: Store SCU RQ: MsgID 1, (DX)
2026-12-01 06:24:45.885 [102]  INFO: Store SCU RQ: MsgID 2, (DX)
2026-12-01 06:24:45.886 [101]  INFO: Received Find SCP:
2026-12-01 06:24:45.886 [101]  INFO: Find SCP Request Identifiers:
2026-12-01 06:24:45.886 [101]  INFO: (0008,0052) CS [IMAGE]                                  #   6, 1 QueryRetrieveLevel
2026-12-01 06:24:45.886 [101]  INFO: (0020,000d) UI [1.2.3]                                  #   6, 1 StudyInstanceUID
2026-12-01 06:24:45.886 [101]  INFO: (0020,000e) UI [1.2.3.4]                                #   8, 1 SeriesInstanceUID
2026-12-01 06:24:45.887 [103]  INFO: Refusing Association (BadAEService)
"""


def test_the_log_tells_requests_apart_by_process_and_keeps_only_uids():
    log = ArchiveLog(LOG)
    assert (log.moves, log.finds, log.instances_sent, log.associations_refused) == (1, 2, 2, 1)
    requests = log.requests()
    assert [(r.kind, r.level) for r in requests] == [
        ("find", "IMAGE"),
        ("find", "IMAGE"),
        ("move", "STUDY"),
    ]
    assert requests[2].uids == {"StudyInstanceUID": "1.2.9"}
    # the first instance-level find named no series (universal): a strict archive refuses it
    assert instance_level_without_series(requests) == [requests[0]]
    assert requests[1].uids["SeriesInstanceUID"] == "1.2.3.4"


def test_vna_kind_comes_from_the_environment_with_a_one_line_error(monkeypatch):
    monkeypatch.setenv("PIXL_STACK_VNA", "dcmqrscp")
    assert vna_kind_from_env() == "dcmqrscp"
    monkeypatch.delenv("PIXL_STACK_VNA")
    assert vna_kind_from_env() == "orthanc"
    monkeypatch.setenv("PIXL_STACK_VNA", "pacs")
    with pytest.raises(StackSettingsError, match=r"^PIXL_STACK_VNA must be one of orthanc, dcmq"):
        vna_kind_from_env()


def test_add_archive_gives_it_a_port_and_refuses_names_it_cannot_take(tmp_path: Path):
    settings = StackSettings(root=tmp_path, ports={"raw_dicom": 1, "vna_dicom": 2})
    settings.add_archive("pacs", "PACS")
    assert settings.dcmqrscp_archives() == {"pacs": "PACS"}
    assert settings.ports["pacs_dicom"] > 0
    settings.vna_kind = "dcmqrscp"
    assert list(settings.dcmqrscp_archives()) == ["vna", "pacs"]
    for name, aet in (
        ("vna", "X"),
        ("orthanc-raw", "X"),
        ("Pacs", "X"),
        ("pacs-2", "X"),
        ("b", "PIXLRAW"),
    ):
        with pytest.raises(StackSettingsError):
            settings.add_archive(name, aet)
    with pytest.raises(StackSettingsError, match="capital letters"):
        settings.add_archive("other", "much-too-long-ae-title")


def test_supervisor_runs_dcmqrscp_instead_of_the_orthanc_vna_without_secrets(tmp_path: Path):
    settings = StackSettings.for_tests(tmp_path)
    settings.vna_kind = "dcmqrscp"
    settings.with_reports = False
    settings.add_archive("pacs", "PACS")
    local_stack.prepare_folders(settings)
    conf = local_stack.supervisor_config(settings)
    sections = {
        block.split("]", 1)[0]: block for block in conf.split("[program:")[1:] if "]" in block
    }
    assert {"vna", "pacs", "orthanc-raw", "orthanc-anon"} <= set(sections)
    assert "dcmqrscp" in sections["vna"] and "Orthanc" not in sections["vna"].split("\n")[1]
    assert "--env-file" not in sections["vna"] and "--env-file" not in sections["pacs"]
    assert "orthanc-vna.json" not in conf and not (settings.run_dir / "orthanc-vna.json").exists()
    assert (settings.run_dir / "pacs-dcmqrscp.cfg").exists()
    assert (
        f"NetworkTCPPort  = {settings.ports['pacs_dicom']}"
        in (settings.run_dir / "pacs-dcmqrscp.cfg").read_text()
    )
