"""Fault F2 (issue 8): orthanc-raw killed in the middle of a C-MOVE must not make the VNA move
the study again behind PIXL's back.

Orthanc saves its jobs (``SaveJobs``, on by default) and, on restart, reloads and resumes them
("Reloading the jobs from the last execution"): a SIGKILL mid-move made the VNA serve the same
C-MOVE twice, outside PIXL's rate limit and audit. orthanc-raw now runs with ``SaveJobs: false``.

The stack (tests/faults/conftest.py, shared with the fault drills) runs with the production
lease (30 s, renewed every 10 s while the study is worked on), so the dead worker's lease still
holds for at least 20 s after the kill: nothing of PIXL's asks the VNA again while the test
watches the restarted orthanc-raw (about 15 s), and every C-MOVE the VNA's own log shows in that
window is Orthanc's doing. Then the lease is made to run out, and PIXL's worker takes the study
over and asks for what is missing, which the VNA's log shows as one more move.
"""

from __future__ import annotations

import time
import zipfile

import pytest
import requests

from pixl_core.hashing import ProjectHasher
from stack.driver import Stack
from stack.synthetic.dicom_builder import base_dataset, to_bytes

pytestmark = pytest.mark.system

PROJECT = "chest-xray"
INSTANCES = 400  # enough that the move takes seconds, so it can be interrupted
STUDY_UID = "2.25.880011"
MRN, ACCESSION = "F2KILLMRN", "F2KILLACC"


def load_study(stack: Stack) -> None:
    with requests.Session() as vna:
        for number in range(1, INSTANCES + 1):
            ds = base_dataset(
                sop_uid=f"{STUDY_UID}.1.{number}",
                study_uid=STUDY_UID,
                series_uid=f"{STUDY_UID}.1",
                patient_id=MRN,
                accession=ACCESSION,
                instance_number=number,
                rows=128,
                columns=128,
            )
            vna.post(
                stack.settings.url("vna") + "/instances",
                data=to_bytes(ds),
                headers={"Content-Type": "application/dicom"},
                timeout=60,
            ).raise_for_status()


def raw_count(stack: Stack) -> int:
    """Instances orthanc-raw holds (0 while it is down), the drills' cached studies included."""
    try:
        response = requests.get(
            stack.settings.url("raw") + "/statistics", auth=stack.orthanc_auth, timeout=2
        )
    except requests.RequestException:
        return 0
    return int(response.json()["CountInstances"]) if response.ok else 0


def wait_for(condition, timeout: float, what: str, step: float = 0.02) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(step)


def study_row(stack: Stack) -> tuple[str, int, int]:
    ((state, attempts, crashes),) = stack.query(
        "SELECT state, attempts, crash_count FROM study WHERE accession_number = %s", ACCESSION
    )
    return state, attempts, crashes


def test_orthanc_raw_killed_mid_move_does_not_replay_the_move(stack: Stack):
    load_study(stack)
    before = stack.vna_moves()
    cached = raw_count(stack)  # what the shared stack's earlier tests left in raw's cache
    csv = stack.settings.root / "cohort.csv"
    csv.write_text(f"mrn,accession_number,study_datetime\n{MRN},{ACCESSION},\n")
    stack.pixl("populate", str(csv), "--project", PROJECT)

    # Kill orthanc-raw once the VNA is sending, well before it has sent everything.
    wait_for(lambda: raw_count(stack) - cached >= 5, 60, "the move never started")
    old_pid = stack.process_pid("orthanc-raw")
    stack.supervisor("signal", "KILL", "orthanc-raw")
    assert stack.vna_moves() == before + 1

    # supervisord restarts it; give a resumed job time to ask the VNA and finish.
    wait_for(lambda: stack.process_pid("orthanc-raw") not in (0, old_pid), 60, "no restart", 0.2)
    stack.wait_healthy()
    time.sleep(10)
    assert stack.vna_moves() == before + 1, "Orthanc replayed the interrupted C-MOVE"
    log = (stack.settings.logs_dir / "orthanc-raw.log").read_text(errors="replace")
    assert "Reloading the jobs" not in log.split("Orthanc has started")[-1]
    assert raw_count(stack) - cached < INSTANCES, "the move finished before the kill"
    assert study_row(stack)[0] == "fetching"  # PIXL's lease still holds: it did not ask again

    # The lease runs out (here: now): PIXL's worker takes the study over, counts the crash and
    # asks for what is missing in one C-MOVE (the series, most of which never arrived).
    stack.query(
        "UPDATE study SET claimed_until = now() WHERE accession_number = %s RETURNING id",
        ACCESSION,
    )
    counts = stack.wait_until_settled([PROJECT], timeout=240).studies[PROJECT]
    assert counts["exported"] == 1
    assert study_row(stack) == ("exported", 2, 1)
    assert stack.vna_moves() == before + 2
    vna_log = (stack.settings.logs_dir / "vna.log").read_text(errors="replace")
    last_move = vna_log[vna_log.rindex("Incoming Move request") :]
    assert "QueryRetrieveLevel = SERIES" in last_move[:2000]
    pseudo = ProjectHasher.for_project(
        PROJECT, stack.settings.secrets["PIXL_HASH_KEY"].encode()
    ).uid(STUDY_UID)
    with zipfile.ZipFile(stack.settings.dsh_dir / PROJECT / "dicom" / f"{pseudo}.zip") as archive:
        assert len(archive.namelist()) == INSTANCES
