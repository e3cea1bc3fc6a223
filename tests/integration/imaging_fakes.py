"""Stand-ins for what the imaging services talk to, other than Postgres: Orthanc's REST API
(with a VNA behind it) and the DSH's FTPS server.

``FakeOrthanc`` implements ``pixl_core.transport.orthanc_rest.OrthancApi`` over an in-memory
store of real DICOM files, indexed by their UIDs the way Orthanc indexes them. One class plays
three parts:

- the VNA (``FakeOrthanc("vna")`` loaded with files): answers C-FIND at study, series and
  instance level through the Orthanc that queries it, hierarchically as real archives do (a
  series-level query must name one study, an instance-level one a study and a series);
- orthanc-raw (``FakeOrthanc("raw", vna=vna)``): ``/modalities/vna/query``, ``/queries/…``,
  ``retrieve`` and ``/modalities/vna/move`` copy instances from the VNA, as a C-MOVE would;
- orthanc-anon (``FakeOrthanc("anon", on_received=ingest.on_received)``): every posted
  instance goes through the received-instance callback, which returns the bytes to store or
  None to discard, as Orthanc's ``RegisterReceivedInstanceCallback`` does.

``down`` makes every call fail as an unreachable Orthanc does. Everything is synthetic.
"""

from __future__ import annotations

import hashlib
import io
import secrets
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pydicom

from pixl_core.db.connection import Connection
from pixl_core.transport.ftps import FtpsError
from pixl_core.transport.orthanc_rest import OrthancError

SECRET = secrets.token_hex(32).encode()  # drawn per run: no key is written in the repository


def orthanc_id(level: str, uid: str) -> str:
    """A stable Orthanc-like resource id (Orthanc hashes the UIDs too)."""
    return hashlib.sha1(f"{level}:{uid}".encode()).hexdigest()[:16]


@dataclass
class StoredInstance:
    id: str
    data: bytes
    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str
    accession_number: str
    patient_id: str
    transfer_syntax: str = "1.2.840.10008.1.2.1"


@dataclass
class FakeOrthanc:
    name: str
    vna: FakeOrthanc | None = None
    on_received: Callable[[bytes], bytes | None] | None = None
    # called with the instance id whenever a file is read (to act mid-export)
    on_read: Callable[[str], None] | None = None
    down: bool = False
    # as a VNA: it answers a C-ECHO but fails every C-FIND (a fault of the query, not an outage)
    refuse_queries: bool = False
    # a retrieve waits for this event when it is set up (to hold studies "in flight")
    gate: threading.Event | None = None
    instances: dict[str, StoredInstance] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    moves: list[str] = field(default_factory=list)  # "study" or "instances", per C-MOVE
    posted: list[bytes] = field(default_factory=list)  # every instance posted, as sent
    discarded: int = 0
    moves_served: int = 0  # as an archive: C-MOVEs it served
    echoes: int = 0  # C-ECHOs sent to the VNA through this Orthanc
    # other archives by Orthanc modality name (a secondary archive): as the VNA is to "vna"
    archives: dict[str, FakeOrthanc] = field(default_factory=dict)
    _queries: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _query_archive: dict[str, FakeOrthanc] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- the store ---------------------------------------------------------------------------

    def store(self, data: bytes) -> str:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        sop_uid = str(ds.SOPInstanceUID)
        instance = StoredInstance(
            id=orthanc_id("instance", sop_uid),
            data=data,
            study_uid=str(ds.StudyInstanceUID),
            series_uid=str(ds.SeriesInstanceUID),
            sop_uid=sop_uid,
            modality=str(ds.get("Modality", "")),
            accession_number=str(ds.get("AccessionNumber", "")),
            patient_id=str(ds.get("PatientID", "")),
        )
        return self.put(instance)

    def put(self, instance: StoredInstance) -> str:
        """Store an instance as it is (a C-MOVE copies what the VNA holds, parseable or not)."""
        with self._lock:
            self.instances[instance.id] = instance
        return instance.id

    def load(self, paths: Iterable[Path]) -> None:
        for path in paths:
            self.store(path.read_bytes())

    def of_study(self, study_uid: str) -> list[StoredInstance]:
        with self._lock:
            found = [i for i in self.instances.values() if i.study_uid == study_uid]
        return sorted(found, key=lambda i: i.sop_uid)

    def _call(self, method: str, path: str) -> None:
        self.calls.append((method, path))
        if self.down:
            raise OrthancError(f"Orthanc {self.name} is not reachable", "unreachable")

    # --- OrthancApi ----------------------------------------------------------------------------

    def get(self, path: str) -> Any:
        self._call("GET", path)
        parts = path.split("?")[0].strip("/").split("/")
        if parts[0] == "queries" and parts[2:] == ["answers"]:
            return list(range(len(self._queries[parts[1]])))
        if parts[0] == "queries" and len(parts) == 5 and parts[4] == "content":
            return dict(self._queries[parts[1]][int(parts[3])])
        if parts[0] == "studies" and len(parts) == 3:
            instances = [
                i for i in self.instances.values() if orthanc_id("study", i.study_uid) == parts[1]
            ]
            if parts[2] == "series":
                series = sorted({i.series_uid for i in instances})
                return [
                    {"ID": orthanc_id("series", uid), "MainDicomTags": {"SeriesInstanceUID": uid}}
                    for uid in series
                ]
            if parts[2] == "instances":
                return [
                    {
                        "ID": i.id,
                        "ParentSeries": orthanc_id("series", i.series_uid),
                        "MainDicomTags": {"SOPInstanceUID": i.sop_uid},
                    }
                    for i in instances
                ]
        raise AssertionError(f"unexpected GET {path}")

    def get_bytes(self, path: str) -> bytes:
        self._call("GET", path)
        parts = path.strip("/").split("/")
        if parts[0] == "instances" and parts[2:] == ["metadata", "TransferSyntax"]:
            return self.instances[parts[1]].transfer_syntax.encode()
        assert parts[0] == "instances" and parts[2] == "file", path
        if self.on_read is not None:
            self.on_read(parts[1])
        try:
            return self.instances[parts[1]].data
        except KeyError:
            raise OrthancError(f"Orthanc {self.name} has no such instance", "not_found") from None

    def _archive(self, name: str) -> FakeOrthanc:
        archive = self.vna if name == "vna" else self.archives.get(name)
        assert archive is not None, f"this Orthanc has no modality {name}"
        return archive

    def post(self, path: str, body: Any = None, *, timeout: float | None = None) -> Any:
        self._call("POST", path)
        parts = path.strip("/").split("/")
        if parts[0] == "modalities" and parts[2] == "query":
            archive = self._archive(parts[1])
            query_id = f"q{len(self._queries)}"
            self._queries[query_id] = archive.answers(body["Level"], body["Query"])
            self._query_archive[query_id] = archive
            return {"ID": query_id}
        if parts[0] == "queries" and parts[-1] == "retrieve":
            archive = self._query_archive[parts[1]]
            assert body["TargetAet"]
            if self.gate is not None:
                self.gate.wait(30)
            study_uid = self._queries[parts[1]][int(parts[3])]["StudyInstanceUID"]
            self.moves.append("study")
            archive.moves_served += 1
            for instance in archive.of_study(study_uid):
                self.put(instance)
            return {}
        if parts[0] == "modalities" and parts[2] == "move":
            archive = self._archive(parts[1])
            self.moves.append("instances")
            archive.moves_served += 1
            wanted = {r["SOPInstanceUID"] for r in body["Resources"]}
            for instance in list(archive.instances.values()):
                if instance.sop_uid in wanted:
                    self.put(instance)
            return {}
        if parts[0] == "modalities" and parts[2] == "echo":
            archive = self._archive(parts[1])
            self.echoes += 1
            if archive.down:
                raise OrthancError("the archive does not answer a C-ECHO", "http_500", 500)
            return {}
        if path == "/tools/find":
            uid = body["Query"]["StudyInstanceUID"]
            found = self.of_study(uid)
            if body["Level"] == "Study":
                return [orthanc_id("study", uid)] if found else []
            return [
                {
                    "ID": i.id,
                    "FileSize": len(i.data),
                    "MainDicomTags": {"SOPInstanceUID": i.sop_uid},
                }
                for i in found
            ]
        raise AssertionError(f"unexpected POST {path}")

    def post_bytes(self, path: str, data: bytes) -> Any:
        self._call("POST", path)
        assert path == "/instances", path
        self.posted.append(data)
        if self.on_received is not None:
            received = self.on_received(data)
            if received is None:
                self.discarded += 1
                return None
            data = received
        return {"ID": self.store(data), "Status": "Success"}

    def delete(self, path: str) -> None:
        self._call("DELETE", path)
        parts = path.strip("/").split("/")
        assert parts[0] == "studies", path
        with self._lock:
            for key, instance in list(self.instances.items()):
                if orthanc_id("study", instance.study_uid) == parts[1]:
                    del self.instances[key]

    # --- the VNA's side of a C-FIND ------------------------------------------------------------

    def answers(self, level: str, query: dict[str, str]) -> list[dict[str, Any]]:
        if self.down or self.refuse_queries:
            raise OrthancError(f"Orthanc {self.name} is not reachable", "http_500", 500)
        with self._lock:
            instances = list(self.instances.values())
        if level in ("Series", "Instance"):
            study_uid = _single_value(query, "StudyInstanceUID")
            in_study = [i for i in instances if i.study_uid == study_uid]
            if level == "Series":
                return [
                    {"StudyInstanceUID": study_uid, "SeriesInstanceUID": uid, "Modality": modality}
                    for uid, modality in sorted({(i.series_uid, i.modality) for i in in_study})
                ]
            series_uid = _single_value(query, "SeriesInstanceUID")
            return [
                {
                    "StudyInstanceUID": i.study_uid,
                    "SeriesInstanceUID": i.series_uid,
                    "SOPInstanceUID": i.sop_uid,
                }
                for i in in_study
                if i.series_uid == series_uid
            ]
        studies: dict[str, list[StoredInstance]] = {}
        for instance in instances:
            if all(
                not query.get(key) or query[key] == value
                for key, value in (
                    ("StudyInstanceUID", instance.study_uid),
                    ("AccessionNumber", instance.accession_number),
                    ("PatientID", instance.patient_id),
                )
            ):
                studies.setdefault(instance.study_uid, []).append(instance)
        return [
            {
                "StudyInstanceUID": uid,
                "PatientID": members[0].patient_id,
                "AccessionNumber": members[0].accession_number,
                "ModalitiesInStudy": "\\".join(sorted({i.modality for i in members})),
                "NumberOfStudyRelatedInstances": str(len(members)),
            }
            for uid, members in sorted(studies.items())
        ]


def _single_value(query: dict[str, str], key: str) -> str:
    """A unique key above the query level: one value, or the archive refuses the C-FIND (as
    orthanc-raw reports it: HTTP 500)."""
    value = query.get(key, "").strip()
    if not value or any(c in value for c in "*?\\"):
        raise OrthancError(f"C-FIND without one {key}: refused (0xA900)", "http_500", 500)
    return value


@dataclass
class FakeDsh:
    """The DSH as the exporter sees it: ``client(project)`` gives an object with the
        ``FtpsClient`` methods the exporter uses. ``unreachable`` refuses connections, ``down`` the
    login; ``crash_after_upload``
        stores the file and then fails, as a connection lost before the exporter could record it."""

    files: dict[str, bytes] = field(default_factory=dict)
    uploads: list[str] = field(default_factory=list)  # zips
    manifest_writes: list[str] = field(default_factory=list)  # upload_bytes: the manifests
    clients_for: list[str] = field(default_factory=list)
    down: bool = False
    crash_after_upload: bool = False
    unreachable: bool = False  # nothing listens: connecting is refused
    # Which client (its id()) uploaded each zip, and which clients were closed.
    upload_clients: list[int] = field(default_factory=list)
    closed_clients: list[int] = field(default_factory=list)

    def client(self, project: str) -> FakeFtpsClient:
        self.clients_for.append(project)
        return FakeFtpsClient(self)


@dataclass
class FakeFtpsClient:
    dsh: FakeDsh

    def __enter__(self) -> FakeFtpsClient:
        if self.dsh.unreachable:
            raise FtpsError("127.0.0.1", 2121, "connect", "connection refused", transient=True)
        if self.dsh.down:
            raise FtpsError("127.0.0.1", 2121, "login", "530 Login incorrect", transient=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.dsh.closed_clients.append(id(self))

    def size(self, remote_path: str) -> int | None:
        data = self.dsh.files.get(remote_path)
        return None if data is None else len(data)

    def complete_upload(self, remote_path: str, size: int) -> bool:
        folder, _, name = remote_path.rpartition("/")
        partial = self.dsh.files.get(f"{folder}/.{name}.part")
        if partial is None or len(partial) != size:
            return False
        self.dsh.files[remote_path] = self.dsh.files.pop(f"{folder}/.{name}.part")
        return True

    def upload_bytes(self, remote_path: str, data: bytes | BinaryIO) -> None:
        """A zip (the exporter streams it from memory or a file) or a manifest."""
        content = bytes(data) if isinstance(data, bytes | bytearray | memoryview) else data.read()
        self.dsh.files[remote_path] = content
        if not remote_path.endswith(".zip"):
            self.dsh.manifest_writes.append(remote_path)
            return
        self.dsh.uploads.append(remote_path)
        self.dsh.upload_clients.append(id(self))
        if self.dsh.crash_after_upload:
            self.dsh.crash_after_upload = False
            raise FtpsError("127.0.0.1", 2121, "QUIT", "connection reset", transient=True)

    def upload_file(self, remote_path: str, local_path: str | Path) -> None:
        with open(local_path, "rb") as handle:
            self.upload_bytes(remote_path, handle)


# --- rows ---------------------------------------------------------------------------------------


def add_study(conn: Connection, project: str, mrn: str, accession_number: str) -> int:
    """A queued imaging work item (as ``pixl populate`` records it); returns its id."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO study (project, mrn, accession_number) VALUES (%s, %s, %s) RETURNING id",
            (project, mrn, accession_number),
        )
        return cur.fetchone()[0]


def study_row(conn: Connection, study_id: int) -> dict[str, Any]:
    with conn, conn.cursor() as cur:
        cur.execute("SELECT * FROM study WHERE id = %s", (study_id,))
        names = [column.name for column in cur.description]
        return dict(zip(names, cur.fetchone(), strict=True))


def seconds_until(conn: Connection, study_id: int, column: str) -> float:
    """Seconds from now until the timestamp in ``column`` (``claimed_until``, ``next_attempt_at``)."""
    assert column in ("claimed_until", "next_attempt_at")
    with conn, conn.cursor() as cur:
        cur.execute(
            f"SELECT extract(epoch FROM {column} - now())::float8 FROM study WHERE id = %s",
            (study_id,),
        )
        return cur.fetchone()[0]


def broken_projects(root: Path) -> tuple[Path, Path]:
    """A projects folder and an allow-lists folder holding three projects that cannot load:
    ``broken-allowlist`` (an allow-list that is not YAML), ``broken-project`` (an unknown key)
    and nothing named ``nowhere``. Returns ``(projects_dir, allowlists_dir)``."""
    projects = root / "projects"
    allowlists = root / "tag_allowlists"
    projects.mkdir(parents=True)
    allowlists.mkdir(parents=True)
    (allowlists / "broken.yaml").write_text("attributes: [unclosed\n")
    (projects / "broken-allowlist.yaml").write_text(
        "name: Broken allow-list\nmodalities: [CR, DX]\nallowlists: [broken.yaml]\n"
    )
    (projects / "broken-project.yaml").write_text(
        "name: Broken project\nmodalities: [CR, DX]\nallowlists: [broken.yaml]\ncolour: blue\n"
    )
    return projects, allowlists
