"""Images to a DICOMweb destination through the real stack: orthanc-anon → STOW-RS over HTTPS
(the stack's TLS proxy in front of an Orthanc with Debian's DICOMweb plugin, basic auth, CA
file from the environment).

What arrived is counted on the server: QIDO-RS for what it holds, and its own log line per
instance it was sent (``orthanc-config/dicomweb-received.lua``) for "exactly once" — Orthanc
keeps one copy of an instance sent twice, so its index alone could not tell. PIXL's own rows
are never the evidence.
"""

from __future__ import annotations

import time

import pytest
import requests

from pixl_core.hashing import ProjectHasher
from pixl_core.transport.dicomweb import study_counts
from stack.driver import Stack
from stack.synthetic.cohort import Cohort, SyntheticStudy
from tests.fixtures.stack import MAIN

pytestmark = pytest.mark.system

EXPORT = "dicomweb-export"
RESEND = "dicomweb-resend"


def pseudo_uid(stack: Stack, project: str, study: SyntheticStudy) -> str:
    secret = stack.settings.secrets["PIXL_HASH_KEY"].encode()
    return ProjectHasher.for_project(project, secret).uid(study.study_uid)


def exported_studies(cohort: Cohort) -> list[SyntheticStudy]:
    return [s for s in cohort.studies_for(MAIN) if s.expected_outcome == "exported"]


def populate(stack: Stack, project: str, studies: list[SyntheticStudy]) -> None:
    csv = stack.settings.root / f"{project}.csv"
    csv.write_text(
        "mrn,accession_number,study_datetime\n"
        + "".join(f"{s.mrn},{s.accession_number},\n" for s in studies)
    )
    stack.pixl("populate", str(csv), "--project", project)


def anon_session(stack: Stack) -> requests.Session:
    session = requests.Session()
    session.auth = stack.orthanc_auth
    return session


def test_studies_reach_the_dicomweb_server_once_each(stack: Stack, cohort: Cohort, first_run):
    studies = exported_studies(cohort)
    before = stack.dicomweb_received()
    populate(stack, EXPORT, studies)
    counts = stack.wait_until_settled([EXPORT]).studies[EXPORT]
    assert counts["exported"] == len(studies) > 0, counts

    uids = {pseudo_uid(stack, EXPORT, s): s for s in studies}
    with stack.dicomweb() as client:
        held = study_counts(client, uids)
        per_instance = {uid: client.instances_of_study(uid) for uid in uids}
    for uid, study in uids.items():
        assert held[uid]["studies"] == 1, "an exported study is missing on the DICOMweb server"
        assert held[uid]["instances"] == study.expected_instances
    sent = stack.dicomweb_received() - before
    instances = {sop for found in per_instance.values() for sop in found}
    assert set(sent) == instances and set(sent.values()) == {1}, "an instance was sent twice"
    # Images went by DICOMweb only; no zip for this project on the DSH.
    assert not (stack.settings.dsh_dir / EXPORT / "dicom").exists()


def _wait(condition, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def test_destination_down_then_back_sends_each_instance_exactly_once(
    stack: Stack, cohort: Cohort, first_run
):
    """The DICOMweb endpoint is down: studies stay ``anonymising`` and the operator sees the
    destination's last error. Meanwhile the server got part of two studies as if a crash had
    cut an earlier try short: one batch recorded by PIXL, and one the server stored but PIXL
    never recorded (a crash between the server's answer and the record). When the endpoint
    comes back every study is exported and no instance reaches the server twice."""
    studies = [s for s in exported_studies(cohort) if s.expected_instances >= 2][:2]
    others = [s for s in exported_studies(cohort) if s not in studies][:2]
    assert len(studies) == 2
    stack.supervisor("stop", "dicomweb-tls")
    try:
        before = stack.dicomweb_received()
        populate(stack, RESEND, studies + others)
        total = len(studies) + len(others)

        def all_waiting() -> bool:
            counts = stack.status()[RESEND]
            errors = stack.query("SELECT code FROM destination_error WHERE project = %s", RESEND)
            return counts["anonymising"] == total and bool(errors)

        _wait(all_waiting, 120, "the studies to wait in anonymising with an error recorded")
        time.sleep(2)  # a retry may come meanwhile: they must still be waiting after it
        assert stack.status()[RESEND]["anonymising"] == total

        # The operator sees the last error: pixl status, its JSON, and /pixl/status.
        port = stack.settings.ports["dicomweb_https"]
        expected = f"DICOMweb 127.0.0.1:{port}: connect failed: connection failed"
        text = stack.pixl("status", RESEND).stdout
        assert "destination error" in text and expected in " ".join(text.split())
        details = stack.pixl("status", RESEND, "--json").stdout
        assert '"code": "dicomweb_connect"' in details
        anon = anon_session(stack).get(stack.settings.url("anon") + "/pixl/status", timeout=10)
        status = anon.json()
        assert status["projects"][RESEND]["destination_error"]["message"].startswith(expected)
        assert RESEND in status["destinations_down"]
        message = status["projects"][RESEND]["destination_error"]["message"]
        for study in studies + others:
            for value in (study.mrn, study.accession_number, study.study_uid):
                assert value not in message and value not in text
            assert pseudo_uid(stack, RESEND, study) not in message

        # Part of each of the two studies reaches the server as if an earlier try had sent it.
        first, second = (_anon_instances(stack, pseudo_uid(stack, RESEND, s)) for s in studies)
        recorded, unrecorded = first[: len(first) // 2], second[: len(second) // 2]
        _store_directly(stack, [data for _, data in recorded + unrecorded])
        (study_id,) = stack.query(
            "SELECT id FROM study WHERE project = %s AND accession_number = %s",
            RESEND,
            studies[0].accession_number,
        )[0]
        for sop, _ in recorded:
            stack.query(
                "INSERT INTO dicomweb_instance (study_id, sop_instance_uid) VALUES (%s, %s) "
                "RETURNING study_id",
                study_id,
                sop,
            )
    finally:
        stack.supervisor("start", "dicomweb-tls")

    counts = stack.wait_until_settled([RESEND], timeout=120).studies[RESEND]
    assert counts["exported"] == total, counts
    sent = stack.dicomweb_received() - before
    with stack.dicomweb() as client:
        held = {
            sop
            for s in studies + others
            for sop in client.instances_of_study(pseudo_uid(stack, RESEND, s))
        }
    assert len(held) == sum(s.expected_instances for s in studies + others)
    assert set(sent) == held, "an instance is missing on the server"
    assert set(sent.values()) == {1}, f"instances sent twice: {sum(sent.values()) - len(sent)}"
    assert not stack.query("SELECT 1 FROM destination_error WHERE project = %s", RESEND)
    assert "destination error" not in stack.pixl("status", RESEND).stdout


def _anon_instances(stack: Stack, study_uid: str) -> list[tuple[str, bytes]]:
    """(SOP Instance UID, bytes) of a de-identified study waiting in orthanc-anon."""
    session = anon_session(stack)
    base = stack.settings.url("anon")
    found = session.post(
        base + "/tools/find",
        json={"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}, "Expand": True},
        timeout=10,
    ).json()
    assert found, "the study should wait in orthanc-anon while the destination is down"
    instances = sorted(found, key=lambda i: i["MainDicomTags"]["SOPInstanceUID"])
    return [
        (
            i["MainDicomTags"]["SOPInstanceUID"],
            session.get(f"{base}/instances/{i['ID']}/file", timeout=10).content,
        )
        for i in instances
    ]


def _store_directly(stack: Stack, files: list[bytes]) -> None:
    """Store files in the DICOMweb server behind its (stopped) TLS proxy, by STOW-RS."""
    from pixl_core.transport.dicomweb import DicomwebClient, DicomwebSettings

    port = stack.settings.ports["dicomweb_http"]
    settings = DicomwebSettings(
        url=f"https://127.0.0.1:{port}/dicom-web",
        user="pixl",
        password=stack.settings.secrets["PIXL_DICOMWEB_PASSWORD"],
        retries=0,
    )
    client = DicomwebClient(settings)
    # The Orthanc behind the proxy speaks plain HTTP; only this test reaches it directly.
    object.__setattr__(settings, "url", f"http://127.0.0.1:{port}/dicom-web")
    assert client.stow(files).stored


def _verify(stack: Stack, project: str, *args: str) -> tuple[int, dict]:
    import json

    result = stack.pixl("verify", project, "--json", *args, check=False)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def test_verify_counts_on_the_server_and_requeue_sends_back_what_it_lost(
    stack: Stack, cohort: Cohort, first_run
):
    """``pixl verify`` on a DICOMweb project counts each study's instances by QIDO-RS on the
    server: one instance deleted there makes that study corrupt (exit 1); ``--requeue`` sends
    exactly what the server lost, and verify is clean again."""
    studies = exported_studies(cohort)
    populate(stack, EXPORT, studies)  # the first test's studies; nothing new if it ran
    stack.wait_until_settled([EXPORT])
    code, report = _verify(stack, EXPORT)
    assert code == 0 and report["ok"] == report["expected"] == len(studies) > 0, report

    victim = pseudo_uid(stack, EXPORT, studies[0])
    session = requests.Session()
    session.auth = ("pixl", stack.settings.secrets["PIXL_DICOMWEB_PASSWORD"])
    base = f"http://127.0.0.1:{stack.settings.ports['dicomweb_http']}"
    found = session.post(
        base + "/tools/find", json={"Level": "Instance", "Query": {"StudyInstanceUID": victim}}
    ).json()
    assert len(found) >= 1
    session.delete(f"{base}/instances/{found[0]}").raise_for_status()

    code, report = _verify(stack, EXPORT)
    assert code == 1 and report["corrupt"] == [victim] and not report["missing"], report

    before = stack.dicomweb_received()
    code, report = _verify(stack, EXPORT, "--requeue")
    assert code == 1 and report["requeued"] == 1, report
    stack.wait_until_settled([EXPORT])
    code, report = _verify(stack, EXPORT)
    assert code == 0 and report["ok"] == len(studies), report
    resent = stack.dicomweb_received() - before
    assert sum(resent.values()) == 1, f"only the lost instance is sent again, not {resent}"
