"""Issue 8, findings 1, 2, 5 and 8, through the real stack: what arrives from the archive (or
claims to) is checked, not trusted.

The stack is this module's own (not the system tests'), so it can run with a low screening
limit (a small deflate bomb is enough) and without the EHR module; it starts in about 20 s.
Each test says in its docstring how it failed on the code before the fix.
"""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import requests
from pydicom import dcmread

from pixl_core.dicom.handoff import Handoff, mark
from pixl_core.hashing import ProjectHasher
from stack.driver import Stack
from stack.settings import StackSettings
from stack.synthetic.dicom_builder import base_dataset, to_bytes
from tests.fixtures import malformed_dicom

pytestmark = pytest.mark.system

PROJECT = "chest-xray"
SECOND = "trust-second"  # a copy of chest-xray, for a second request of a cached study
IMPOSTOR_HOST = "127.0.0.2"  # another address, still loopback: the archive is 127.0.0.1
DCMTK = ("findscu", "getscu", "storescu")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    missing = [tool for tool in DCMTK if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: run `make system-deps` (installs dcmtk)")
    root = Path(tempfile.mkdtemp(prefix="pixl-archive-trust-"))
    root.chmod(0o755)  # the postgres user must reach its data folder
    settings = StackSettings.for_tests(root)
    settings.with_reports = False
    settings.test_projects = (SECOND,)
    settings.extra_env = {
        "PIXL_FETCH_LEASE_SECONDS": "15",
        "PIXL_FETCH_BACKOFF_SECONDS": "1",
        "PIXL_EXPORT_LEASE_SECONDS": "15",
        "PIXL_EXPORT_BACKOFF_SECONDS": "1",
        "PIXL_SCREEN_MAX_MB": "64",
    }
    stack = Stack(settings)
    try:
        stack.up(timeout=120)
        stack.pixl("rate", "10", "--in-flight", "4")
        yield stack
    finally:
        stack.down()
        shutil.rmtree(root, ignore_errors=True)


# --- the archive's studies ------------------------------------------------------------------


class Study:
    """A synthetic chest study of ``count`` CR instances, with its own patient."""

    def __init__(self, tag: str, count: int = 2) -> None:
        self.mrn = f"TRUST{tag}MRN"
        self.accession = f"TRUST{tag}ACC"
        self.name = f"TRUST^{tag}"
        self.uid = f"2.25.7700{zlib.crc32(tag.encode())}"
        self.series_uid = self.uid + ".1"
        self.sop_uids = [f"{self.uid}.1.{n}" for n in range(1, count + 1)]

    def identifiers(self, sop_uid: str) -> dict[str, str]:
        return {
            "sop_uid": sop_uid,
            "study_uid": self.uid,
            "series_uid": self.series_uid,
            "patient_id": self.mrn,
            "accession": self.accession,
            "patient_name": self.name,
        }

    def files(self) -> list[bytes]:
        return [to_bytes(base_dataset(**self.identifiers(sop))) for sop in self.sop_uids]  # type: ignore[arg-type]


def load_into_vna(stack: Stack, study: Study) -> None:
    for data in study.files():
        response = requests.post(
            stack.settings.url("vna") + "/instances",
            data=data,
            headers={"Content-Type": "application/dicom"},
            timeout=60,
        )
        response.raise_for_status()


def store_into_vna(stack: Stack, path: Path) -> None:
    """C-STORE a file the VNA's REST API would crash on (its HTTP thread parses it)."""
    dcmtk(
        "storescu", "-aet", "LOADER", "-aec", "VNA", "127.0.0.1",
        str(stack.settings.ports["vna_dicom"]), str(path),
    ).check_returncode()  # fmt: skip


def populate(stack: Stack, project: str, *studies: Study) -> None:
    csv = stack.settings.root / f"{project}-{studies[0].accession}.csv"
    csv.write_text(
        "mrn,accession_number,study_datetime\n"
        + "".join(f"{s.mrn},{s.accession},\n" for s in studies)
    )
    stack.pixl("populate", str(csv), "--project", project)


def state(stack: Stack, project: str, study: Study) -> tuple[str, str | None]:
    ((found, code),) = stack.query(
        "SELECT state, last_error_code FROM study WHERE project = %s AND accession_number = %s",
        project,
        study.accession,
    )
    return found, code


def zip_names(stack: Stack, project: str, study: Study) -> list[str]:
    pseudo = ProjectHasher.for_project(project, secret(stack)).uid(study.uid)
    with zipfile.ZipFile(stack.settings.dsh_dir / project / "dicom" / f"{pseudo}.zip") as archive:
        return archive.namelist()


def secret(stack: Stack) -> bytes:
    return stack.settings.secrets["PIXL_HASH_KEY"].encode()


def raw_instances(stack: Stack, study: Study) -> int:
    found = requests.post(
        stack.settings.url("raw") + "/tools/find",
        json={"Level": "Instance", "Query": {"StudyInstanceUID": study.uid}},
        auth=stack.orthanc_auth,
        timeout=30,
    )
    found.raise_for_status()
    return len(found.json())


# --- DCMTK probes from another address ------------------------------------------------------


def dcmtk(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command), capture_output=True, text=True, timeout=60, check=False, cwd=cwd
    )


@contextmanager
def relay_from(source: str, target_port: int) -> Iterator[int]:
    """A TCP relay on 127.0.0.1 whose connections to ``target_port`` come from ``source``: how
    DCMTK's tools (which cannot choose their source address) reach orthanc-raw from another
    host. Yields the port to point them at."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while chunk := a.recv(65536):
                b.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (a, b):
                with suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.socket()
            upstream.bind((source, 0))
            upstream.connect(("127.0.0.1", target_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        listener.close()
        thread.join(5)


def probes(port: int, study: Study, out: Path) -> tuple[str, str]:
    """C-FIND and C-GET against orthanc-raw as ``VNA``; returns (what was said, files got)."""
    find = dcmtk(
        "findscu", "-S", "-aet", "VNA", "-aec", "PIXLRAW",
        "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID", "-k", "PatientName",
        "-k", "StudyInstanceUID", "127.0.0.1", str(port),
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    get = dcmtk(
        "getscu", "-S", "-aet", "VNA", "-aec", "PIXLRAW", "-od", str(out),
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study.uid}",
        "127.0.0.1", str(port),
    )  # fmt: skip
    said = find.stdout + find.stderr + get.stdout + get.stderr
    return said, " ".join(p.name for p in out.iterdir())


# --- finding 1 ------------------------------------------------------------------------------


def test_an_impostor_calling_itself_the_vna_gets_nothing_and_stores_nothing(
    stack: Stack, tmp_path: Path
):
    """Before: orthanc-raw checked the AE title only and let the VNA find and get, so findscu
    and getscu as ``VNA`` from another address returned names and MRNs and the images, and
    storescu added an instance to a cached study. Now the VNA is known by address too, and may
    only store: from 127.0.0.2 every association is rejected; from the VNA's own address,
    C-FIND and C-GET are refused."""
    study = Study("IMP")
    load_into_vna(stack, study)
    populate(stack, PROJECT, study)
    stack.wait_until_settled([PROJECT])
    assert state(stack, PROJECT, study) == ("exported", None)
    assert raw_instances(stack, study) == 2  # the identifiable copy sits in the cache

    raw_port = stack.settings.ports["raw_dicom"]
    extra = tmp_path / "extra.dcm"
    extra.write_bytes(to_bytes(base_dataset(**study.identifiers(study.uid + ".9.9"))))  # type: ignore[arg-type]
    with relay_from(IMPOSTOR_HOST, raw_port) as port:
        said, got = probes(port, study, tmp_path / "impostor")
        stored = dcmtk(
            "storescu", "-aet", "VNA", "-aec", "PIXLRAW", "127.0.0.1", str(port), str(extra)
        )
    for identifier in (study.mrn, study.name, study.uid):
        assert identifier not in said
    assert got == ""
    assert "Rejected" in said  # at association: the calling AE title is not recognised
    assert stored.returncode != 0
    assert raw_instances(stack, study) == 2

    # From the VNA's own address: it may store (that is how studies arrive), nothing else.
    said, got = probes(raw_port, study, tmp_path / "vna-address")
    assert study.mrn not in said and study.name not in said
    assert got == ""
    log = (stack.settings.logs_dir / "orthanc-raw.log").read_text(errors="replace")
    assert "does not match" in log  # Orthanc's own word on the address check


def test_an_instance_the_vna_did_not_list_never_leaves(stack: Stack, tmp_path: Path):
    """An instance stored into orthanc-raw's copy of a cached study (here by the VNA's address,
    as an impostor could before the host check) is not the archive's. Before: a study asked for
    again was served from the cache by count and every local instance was handed on, so the
    extra one went out in the DSH zip. Now only the instances the VNA lists are handed on."""
    study = Study("UNL")
    load_into_vna(stack, study)
    populate(stack, PROJECT, study)
    stack.wait_until_settled([PROJECT])
    extra = tmp_path / "extra.dcm"
    extra.write_bytes(to_bytes(base_dataset(**study.identifiers(study.uid + ".9.9"))))  # type: ignore[arg-type]
    dcmtk(
        "storescu", "-aet", "VNA", "-aec", "PIXLRAW", "127.0.0.1",
        str(stack.settings.ports["raw_dicom"]), str(extra),
    ).check_returncode()  # fmt: skip
    assert raw_instances(stack, study) == 3
    moves = stack.vna_moves()

    populate(stack, SECOND, study)
    stack.wait_until_settled([SECOND])

    assert state(stack, SECOND, study) == ("exported", None)
    assert stack.vna_moves() == moves  # served from the cache
    names = zip_names(stack, SECOND, study)
    assert len(names) == 2
    hasher = ProjectHasher.for_project(SECOND, secret(stack))
    assert {n.rsplit("/", 1)[1] for n in names} == {f"{hasher.uid(s)}.dcm" for s in study.sop_uids}


# --- finding 2 ------------------------------------------------------------------------------


def test_malformed_files_end_refused_with_their_reason_and_orthanc_stays_up(
    stack: Stack, tmp_path: Path
):
    """A 1,000-deep nested-sequence file and a deflate bomb in the archive. Before: orthanc-raw
    posted the nested one to orthanc-anon, whose Orthanc died (SIGSEGV) on every try until the
    study failed as ``orthanc_unreachable``; the bomb took it to gigabytes. Now orthanc-raw
    screens each instance before handing it on and records the reason."""
    nested, bomb = Study("NST", 1), Study("BMB", 1)
    (tmp_path / "nested.dcm").write_bytes(
        malformed_dicom.nested_sequences(1000, **nested.identifiers(nested.sop_uids[0]))
    )
    (tmp_path / "bomb.dcm").write_bytes(
        malformed_dicom.deflate_bomb(100, **bomb.identifiers(bomb.sop_uids[0]))
    )
    store_into_vna(stack, tmp_path / "nested.dcm")
    store_into_vna(stack, tmp_path / "bomb.dcm")
    pids = {name: stack.process_pid(name) for name in ("orthanc-raw", "orthanc-anon")}

    populate(stack, PROJECT, nested, bomb)
    stack.wait_until_settled([PROJECT])

    assert state(stack, PROJECT, nested) == ("refused", "malformed_nesting_too_deep")
    # DCMTK inflates the bomb on its way (storescu into the VNA, the VNA into orthanc-raw), so
    # orthanc-raw holds a 100 MiB file: refused from its size in Orthanc's index, never read.
    # (A bomb that reaches it still deflated is refused as malformed_inflates_too_large:
    # tests/integration/test_fetch_handoff.py.)
    assert state(stack, PROJECT, bomb) == ("refused", "malformed_too_large")
    assert {name: stack.process_pid(name) for name in pids} == pids  # nobody restarted
    for name in ("orthanc-raw", "orthanc-anon"):
        log = (stack.settings.logs_dir / f"{name}.log").read_text(errors="replace")
        assert "Orthanc has started" in log and log.count("Orthanc has started") == 1


# --- finding 5 ------------------------------------------------------------------------------


def test_an_answer_that_is_not_exactly_the_study_asked_for_is_not_moved(stack: Stack):
    """A work item whose MRN is ``*`` and accession number ends in ``?`` (``pixl populate``
    refuses such values now; the row is written directly, as if it had got in). The VNA
    treats both as wildcards and answers with another patient's study. Before: that single
    answer was moved and exported. Now an answer counts only if its PatientID and
    AccessionNumber equal the ones asked for."""
    study = Study("WLD")
    load_into_vna(stack, study)
    moves = stack.vna_moves()
    stack.query(
        "INSERT INTO study (project, mrn, accession_number) VALUES (%s, %s, %s) RETURNING id",
        PROJECT,
        "*",
        study.accession[:-1] + "?",
    )
    stack.wait_until_settled([PROJECT])
    ((found, code),) = stack.query(
        "SELECT state, last_error_code FROM study WHERE project = %s AND mrn = '*'", PROJECT
    )
    assert (found, code) == ("not_found", None)
    assert stack.vna_moves() == moves
    assert raw_instances(stack, study) == 0


# --- finding 8 ------------------------------------------------------------------------------


def _anon_post(stack: Stack, data: bytes) -> None:
    requests.post(
        stack.settings.url("anon") + "/instances",
        data=data,
        headers={"Content-Type": "application/dicom"},
        auth=stack.orthanc_auth,
        timeout=60,
    )


def _anon_holds(stack: Stack, project: str, study: Study) -> int:
    pseudo = ProjectHasher.for_project(project, secret(stack)).uid(study.uid)
    found = requests.post(
        stack.settings.url("anon") + "/tools/find",
        json={"Level": "Instance", "Query": {"StudyInstanceUID": pseudo}},
        auth=stack.orthanc_auth,
        timeout=30,
    )
    found.raise_for_status()
    return len(found.json())


def test_a_handoff_block_replayed_on_other_content_is_discarded(stack: Stack):
    """A genuine hand-off block (signed by orthanc-raw for an instance of a study it is handing
    over) copied onto an instance with the same UIDs and other pixels. Before: the signature
    covered the project, the work item and the SOP Instance UID only, so orthanc-anon
    de-identified and kept the forged image. Now the pixel data's digest is signed too. The
    genuine instance, replayed once its study is no longer being fetched, is discarded as well
    (it would only be an orphan)."""
    study = Study("RPL", 1)
    ((item_id,),) = stack.query(
        "INSERT INTO study (project, mrn, accession_number, state, claimed_by, claimed_until) "
        "VALUES (%s, %s, %s, 'fetching', 'raw:elsewhere', now() + interval '1 hour') "
        "RETURNING id",
        PROJECT,
        study.mrn,
        study.accession,
    )
    try:
        genuine = mark(study.files()[0], Handoff(PROJECT, item_id), secret(stack))
        ds = dcmread(io.BytesIO(genuine))
        ds.PixelData = bytes(255 - b for b in ds.PixelData)  # another image, same header
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)

        _anon_post(stack, out.getvalue())
        assert _anon_holds(stack, PROJECT, study) == 0
        _anon_post(stack, genuine)
        assert _anon_holds(stack, PROJECT, study) == 1  # the real one is accepted

        stack.query("UPDATE study SET state = 'failed' WHERE id = %s RETURNING id", item_id)
        anon = f"{stack.settings.url('anon')}/studies"
        for study_id in requests.get(anon, auth=stack.orthanc_auth, timeout=30).json():
            requests.delete(f"{anon}/{study_id}", auth=stack.orthanc_auth, timeout=30)
        _anon_post(stack, genuine)
        assert _anon_holds(stack, PROJECT, study) == 0
    finally:
        stack.query(
            "UPDATE study SET state = 'failed', claimed_by = NULL, claimed_until = NULL "
            "WHERE id = %s RETURNING id",
            item_id,
        )
    status = requests.get(
        stack.settings.url("anon") + "/pixl/status", auth=stack.orthanc_auth, timeout=10
    ).json()
    assert status["discarded_without_handoff"] >= 1
    assert status["discarded_not_fetching"] >= 1
