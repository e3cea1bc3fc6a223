"""The dcmqrscp archive stand-in on its own (one real server, no stack): its generated
configuration and logger configuration run as they are, against DCMTK's own tools.

``storescp`` plays orthanc-raw as the C-MOVE destination, ``findscu`` and ``movescu`` play
orthanc-raw's queries. What these pin down is the stand-in's contract with the system tests: who
it accepts, what it moves and where, what it refuses, and what its log keeps.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stack.ports import free_port
from stack.standins.dcmqrscp_archive import (
    ArchiveLog,
    DcmqrscpArchive,
    Peer,
    config_text,
    echo,
    load,
    log_config_text,
)
from stack.synthetic.cohort import Cohort, SyntheticStudy

pytestmark = pytest.mark.skipif(shutil.which("dcmqrscp") is None, reason="dcmtk not installed")


@dataclass
class Running:
    archive: DcmqrscpArchive
    destination_dir: Path
    study: SyntheticStudy

    def log(self) -> ArchiveLog:
        time.sleep(0.3)  # the forked child writes its last lines as the association ends
        return ArchiveLog.read(self.archive.log_path)

    def run(self, tool: str, calling: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [tool, "-v", "-S", "-aet", calling, "-aec", "VNA", "127.0.0.1"]
        return subprocess.run(
            [*command, str(self.archive.port), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@pytest.fixture(scope="module")
def running(cohort: Cohort, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("dcmqrscp")
    destination_port = free_port()
    archive = DcmqrscpArchive(
        name="vna",
        aet="VNA",
        port=free_port(),
        storage_dir=root / "storage",
        run_dir=root,
        logs_dir=root,
        destinations=(Peer("PIXLRAW", destination_port),),
        callers=("PIXLRAW", "LOADER"),
    )
    archive.storage_dir.mkdir()
    archive.config_path.write_text(config_text(archive))
    archive.log_config_path.write_text(log_config_text())
    received = root / "received"
    received.mkdir()
    with archive.log_path.open("w") as log:
        server = subprocess.Popen(archive.command(), stdout=log, stderr=subprocess.STDOUT)
    destination = subprocess.Popen(
        ["storescp", "-aet", "PIXLRAW", "-od", str(received), str(destination_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not echo("VNA", archive.port):
            assert time.monotonic() < deadline, "dcmqrscp did not answer a C-ECHO"
            time.sleep(0.2)
        study = next(s for s in cohort.studies if s.in_vna and len(s.series) >= 2)
        assert load(study.files, "VNA", archive.port) == len(study.files)
        yield Running(archive, received, study)
    finally:
        for process in (server, destination):
            process.terminate()
            process.wait(timeout=10)


def test_study_level_find_answers_and_leaves_no_mrn_or_accession_in_the_log(running: Running):
    study = running.study
    found = running.run(
        "findscu",
        "PIXLRAW",
        *("-k", "QueryRetrieveLevel=STUDY", "-k", f"PatientID={study.mrn}"),
        *("-k", f"AccessionNumber={study.accession_number}", "-k", "StudyInstanceUID"),
        *("-k", "ModalitiesInStudy", "-k", "NumberOfStudyRelatedInstances"),
    )
    said = found.stdout + found.stderr
    assert said.count("Find Response:") == 1 and study.study_uid in said
    assert "ModalitiesInStudy" not in said.split("Find Response:")[1]  # never answered
    text = running.log().text
    assert "Received Find SCP:" in text
    assert study.mrn not in text and study.accession_number not in text


def test_instance_level_find_needs_the_series_key(running: Running):
    """Hierarchical: without a SeriesInstanceUID key the query fails; with it, it answers (and
    its dump, UIDs only, is in the log for the system tests to check)."""
    study = running.study
    base = ("-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={study.study_uid}")
    without = running.run("findscu", "PIXLRAW", *base, "-k", "SOPInstanceUID")
    assert "Find Response:" not in without.stdout + without.stderr
    series = study.series[0]
    named = running.run(
        "findscu",
        "PIXLRAW",
        *base,
        *("-k", f"SeriesInstanceUID={series.series_uid}", "-k", "SOPInstanceUID"),
    )
    assert (named.stdout + named.stderr).count("Find Response:") == len(series.sop_instance_uids)
    image_finds = [r for r in running.log().requests() if r.level == "IMAGE"]
    assert image_finds[-1].uids["SeriesInstanceUID"] == series.series_uid


def test_instance_move_is_refused_without_its_series_and_sent_with_it(running: Running):
    study = running.study
    series = study.series[0]
    sop = series.sop_instance_uids[0]
    keys = ("-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={study.study_uid}")
    before = running.log()
    refused = running.run(
        "movescu", "PIXLRAW", "-aem", "PIXLRAW", *keys, "-k", f"SOPInstanceUID={sop}"
    )
    # -XM: an identifier without the unique key of every level above is refused, not served
    assert "Final Move Response (Error: DataSetDoesNotMatchSOPClass)" in refused.stderr
    assert list(running.destination_dir.iterdir()) == []
    moved = running.run(
        "movescu",
        "PIXLRAW",
        *("-aem", "PIXLRAW", *keys),
        *("-k", f"SeriesInstanceUID={series.series_uid}", "-k", f"SOPInstanceUID={sop}"),
    )
    assert moved.returncode == 0
    after = running.log()
    assert after.moves == before.moves + 2
    assert after.instances_sent == before.instances_sent + 1
    assert len(list(running.destination_dir.iterdir())) == 1


def test_an_ae_title_it_does_not_know_is_rejected(running: Running):
    before = running.log().associations_refused
    rejected = running.run("findscu", "STRANGER", "-k", "QueryRetrieveLevel=STUDY")
    assert "Association Rejected" in rejected.stdout + rejected.stderr
    assert running.log().associations_refused == before + 1
    assert not echo("VNA", running.archive.port, calling_aet="STRANGER")
