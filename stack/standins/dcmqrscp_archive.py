"""A DICOM archive that is not Orthanc: DCMTK's ``dcmqrscp``, as the VNA or a second archive.

PIXL has only ever talked to an Orthanc playing the VNA, and real archives behave differently
(issue 11 §2). This stand-in is DCMTK's query/retrieve SCP (Debian ``dcmtk``), loaded with
``storescu``. The local stack can start it as the VNA (``PIXL_STACK_VNA=dcmqrscp``, AE title
``VNA`` on the ``vna_dicom`` port) and, any number of times more, as another archive with an AE
title and port of its own (``StackSettings.add_archive``). Each archive has its own folder
(``data/<name>/``: the storage area and dcmqrscp's ``index.dat``), its generated
``run/<name>-dcmqrscp.cfg`` and its own log (``logs/<name>.log``), which the tests read to count
what the archive did, as the Orthanc VNA drills read the Orthanc VNA's log.

What the generated configuration says, and why:

- **who may associate** (the AE table's peers): orthanc-raw (``PIXLRAW``) and the loader
  (``LOADER``, ``storescu``), each only from 127.0.0.1. Anyone else is rejected at
  association, as a hospital archive rejects an AE title it was not told about;
  ``callers=`` leaves orthanc-raw out to make the archive refuse it (a drill);
- **where it may move to** (the host table): orthanc-raw's AE title with its host and DICOM
  port, the one C-MOVE destination a hospital registers for PIXL;
- **strict C-MOVE identifiers** (``-XM``): a C-MOVE must name the unique key of every level
  above the one it asks for, so an instance-level move without its StudyInstanceUID and
  SeriesInstanceUID is refused.

Quirks of dcmqrscp 3.6.7 (Debian 12) that shaped this module and ``vna_fetch``:

- **Hierarchical C-FIND.** Below study level a query must carry the UID key of every level
  above it, or it fails (``hierarchicalCompare: No UID Key found at level 2``,
  UnableToProcess): an instance-level query needs StudyInstanceUID *and* SeriesInstanceUID.
  dcmqrscp accepts a universal (empty) SeriesInstanceUID there; strict archives do not, which
  is why ``vna_fetch`` lists a study's series first and then each series' instances by both
  UIDs.
- **No strict C-FIND checking with Orthanc as the SCU.** ``-XF`` (``--check-find``) would
  also refuse an empty SeriesInstanceUID, but it refuses every series- and instance-level
  C-FIND that Orthanc 1.10.1 sends (status 0xA900): Orthanc always adds empty PatientID and
  AccessionNumber return keys (and an empty MediaStorageSOPInstanceUID at instance level),
  even with ``"Normalize": false``, and in the Study Root model patient-level keys are allowed
  at study level only. So this stand-in checks C-MOVE identifiers strictly but not C-FIND's;
  the system tests read from the archive's log that every instance-level C-FIND named a
  single series. A real archive as strict as ``-XF`` cannot be queried below study level by
  orthanc-raw's ``/modalities`` API.
- **Answers carry only what its index keeps**: ModalitiesInStudy,
  NumberOfStudyRelatedInstances and NumberOfSeriesRelatedInstances are never answered (the
  keys are dropped from the answer). ``vna_fetch`` takes the modalities from the series-level
  answers, and skips the instance-count check when the count is not answered.
- **Peers are matched by host *name*.** A host table entry's host is compared with the name
  the calling address resolves to (``localhost``, not ``127.0.0.1``); an entry naming only the
  address rejects every association from it. Each entry is therefore written for the address
  and for its resolved name.
- **A misleading rejection**: an association from an AE title (or host) that is not a peer is
  rejected with reason "Called AE Title Not Recognized", even when the called AE title is
  right.
- **``--single-process`` crashes** (SIGSEGV) when the first association is released; the
  default mode forks a child per association (supervisord stops the process group).
- **A storage area holds at most 500 studies** ("maxStudiesPerStorageArea too large" above
  that), and beyond its quota dcmqrscp *deletes the oldest study* to make room: the quota is
  set to that maximum, and a larger cohort needs more archives.
- **Its verbose log dumps every request's identifiers**, a study-level C-FIND's PatientID and
  AccessionNumber among them. The log configuration drops the study-level C-FIND dumps and
  keeps the rest: C-MOVE requests (UIDs only, as orthanc-raw sends them) and series- and
  instance-level C-FINDs (UIDs, with the empty PatientID and AccessionNumber keys Orthanc adds).
  Stored files are named by modality and a time stamp, never by an identifier.

The stack runs ``dcmqrscp --config run/<name>-dcmqrscp.cfg --log-config
run/<name>-dcmqrscp-log.cfg --check-move`` under supervisord, as Debian's ``dcmtk`` user when
started as root; every log line carries the pid of the process that wrote it (a child per
association), so the requests of concurrent associations can be told apart.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DCMQRSCP = shutil.which("dcmqrscp") or "/usr/bin/dcmqrscp"
STORESCU = shutil.which("storescu") or "/usr/bin/storescu"
ECHOSCU = shutil.which("echoscu") or "/usr/bin/echoscu"
# Debian's dcmtk package creates this system user for dcmqrscp (its default config names it).
DCMTK_USER = "dcmtk"
LOADER_AET = "LOADER"
# dcmqrscp's upper limit per storage area; above its quota it deletes the oldest study.
MAX_STUDIES = 500
MAX_MB_PER_STUDY = 1024
# storescu is given this many files per run, well below the kernel's argument-list limit.
_LOAD_BATCH = 200


class ArchiveError(RuntimeError):
    """The archive did not take or do what it was asked; the message names the archive."""


@dataclass(frozen=True)
class Peer:
    """An AE title the archive knows, at 127.0.0.1 (``port`` 0: it never receives a move)."""

    aet: str
    port: int = 0


@dataclass(frozen=True)
class DcmqrscpArchive:
    """One dcmqrscp archive of a stack: what its configuration is generated from.

    ``name`` is its supervisord program and the name of its folder, config and log;
    ``destinations`` are the C-MOVE destinations it knows (orthanc-raw), ``callers`` the AE
    titles that may associate with it (the destinations need not be among them).
    """

    name: str
    aet: str
    port: int
    storage_dir: Path
    run_dir: Path
    logs_dir: Path
    destinations: tuple[Peer, ...]
    callers: tuple[str, ...] = (LOADER_AET,)
    extra_args: tuple[str, ...] = field(default=())

    @property
    def config_path(self) -> Path:
        return self.run_dir / f"{self.name}-dcmqrscp.cfg"

    @property
    def log_config_path(self) -> Path:
        return self.run_dir / f"{self.name}-dcmqrscp-log.cfg"

    @property
    def log_path(self) -> Path:
        return self.logs_dir / f"{self.name}.log"

    def command(self) -> list[str]:
        """The dcmqrscp command line: forking mode (the default), strict C-MOVE identifiers."""
        return [
            DCMQRSCP,
            "--config",
            str(self.config_path),
            "--log-config",
            str(self.log_config_path),
            "--check-move",
            *self.extra_args,
        ]


def _host_names() -> list[str]:
    """127.0.0.1 and the name it resolves to: dcmqrscp matches peers by the resolved name."""
    names = ["127.0.0.1"]
    try:
        resolved = socket.gethostbyaddr("127.0.0.1")[0]
    except OSError:
        resolved = ""
    if resolved and resolved not in names:
        names.append(resolved)
    return names


def _symbol(aet: str) -> str:
    return "peer_" + re.sub(r"[^a-z0-9]", "_", aet.lower())


def config_text(archive: DcmqrscpArchive) -> str:
    """dcmqrscp.cfg for ``archive`` (see the module docstring for what each part is for)."""
    peers: dict[str, int] = {peer.aet: peer.port for peer in archive.destinations}
    for aet in archive.callers:
        peers.setdefault(aet, 0)
    hosts = _host_names()
    lines = [
        f"# Rendered by the local stack for the archive {archive.name!r}"
        " (stack/standins/dcmqrscp_archive.py).",
        f"NetworkTCPPort  = {archive.port}",
        "MaxPDUSize      = 16384",
        "MaxAssociations = 16",
    ]
    lines += ["", "HostTable BEGIN"]
    for aet, port in peers.items():
        entries = ", ".join(f"({aet}, {host}, {port})" for host in hosts)
        lines.append(f"{_symbol(aet)} = {entries}")
    lines += ["HostTable END", "", "VendorTable BEGIN", "VendorTable END", "", "AETable BEGIN"]
    callers = ", ".join(_symbol(aet) for aet in archive.callers) or "ANY"
    quota = f"({MAX_STUDIES}, {MAX_MB_PER_STUDY}mb)"
    lines += [f"{archive.aet} {archive.storage_dir} RW {quota} {callers}", "AETable END", ""]
    return "\n".join(lines)


def log_config_text() -> str:
    """DCMTK's logger configuration: INFO to stderr (supervisord's log), without the dumps of
    study-level C-FIND identifiers (they hold the MRN and accession number asked for).

    log4cplus filters decide in order: the first that matches accepts or denies. Series- and
    instance-level requests are accepted first; any other C-FIND identifier dump is denied.
    """
    prefix = "log4cplus.appender.console"
    rules = [
        ("CS [SERIES]", "true"),
        ("CS [IMAGE]", "true"),
        ("Find SCP Request Identifiers", "false"),
    ]
    lines = [
        "log4cplus.rootLogger = INFO, console",
        f"{prefix} = log4cplus::ConsoleAppender",
        f"{prefix}.logToStderr = true",
        f"{prefix}.ImmediateFlush = true",
        f"{prefix}.layout = log4cplus::PatternLayout",
        f"{prefix}.layout.ConversionPattern = %D{{%Y-%m-%d %H:%M:%S.%q}} [%i] %5p: %m%n",
    ]
    for number, (text, accept) in enumerate(rules, start=1):
        lines += [
            f"{prefix}.filters.{number} = log4cplus::spi::StringMatchFilter",
            f"{prefix}.filters.{number}.StringToMatch = {text}",
            f"{prefix}.filters.{number}.AcceptOnMatch = {accept}",
        ]
    return "\n".join(lines) + "\n"


# --- talking to it --------------------------------------------------------------------------


def load(files: Iterable[Path], aet: str, port: int, calling_aet: str = LOADER_AET) -> int:
    """Store ``files`` into the archive with ``storescu``; return how many it accepted.

    Storing an instance it holds again replaces it, so this can run again safely. Raises
    ``ArchiveError`` (naming the archive and how many were refused, never a value from a file)
    when the association is rejected or a file is refused.
    """
    paths = [str(path) for path in files]
    command = [STORESCU, "--verbose", "-aet", calling_aet, "-aec", aet, "127.0.0.1", str(port)]
    stored = 0
    for start in range(0, len(paths), _LOAD_BATCH):
        batch = paths[start : start + _LOAD_BATCH]
        result = subprocess.run(
            [*command, *batch],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        accepted = result.stdout.count("Received Store Response (Success)")
        accepted += result.stderr.count("Received Store Response (Success)")
        if result.returncode != 0 or accepted != len(batch):
            raise ArchiveError(
                f"archive {aet} at 127.0.0.1:{port} stored {accepted} of {len(batch)} files "
                f"(storescu exit {result.returncode}); see its log"
            )
        stored += accepted
    return stored


def echo(aet: str, port: int, calling_aet: str = LOADER_AET, timeout: float = 5.0) -> bool:
    """Whether the archive accepts an association from ``calling_aet`` and answers a C-ECHO."""
    try:
        result = subprocess.run(
            [ECHOSCU, "-to", "3", "-aet", calling_aet, "-aec", aet, "127.0.0.1", str(port)],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


# --- reading its log ------------------------------------------------------------------------

_MOVE = "Received Move SCP:"
_FIND = "Received Find SCP:"
_SUB_STORE = re.compile(r"Store SCU RQ: MsgID \d+")
_LINE = re.compile(r"^\S+ \S+ \[(\d+)\]\s+\w+: ?(.*)$")
_LEVEL = re.compile(r"\(0008,0052\) CS \[(\w+)")
_UID = re.compile(r"\((0020,000d|0020,000e|0008,0018)\) UI (?:\[([^\]]*)\]|\(no value)")
_UID_NAMES = {
    "0020,000d": "StudyInstanceUID",
    "0020,000e": "SeriesInstanceUID",
    "0008,0018": "SOPInstanceUID",
}


@dataclass(frozen=True)
class LoggedRequest:
    """One C-FIND or C-MOVE request as the archive logged it: its level and UID keys (empty
    string for a universal key; a key that was not sent is absent). No other value is kept."""

    kind: str  # "find" or "move"
    level: str  # STUDY, SERIES or IMAGE; "" for a study-level C-FIND (its dump is not logged)
    uids: dict[str, str]


@dataclass(frozen=True)
class ArchiveLog:
    """What an archive did, read from its own log: the record a hospital's archive keeps."""

    text: str

    @classmethod
    def read(cls, path: Path) -> ArchiveLog:
        return cls(path.read_text(errors="replace") if path.exists() else "")

    @property
    def moves(self) -> int:
        """C-MOVE requests it received (one line each, whatever it then sent)."""
        return self.text.count(_MOVE)

    @property
    def finds(self) -> int:
        """C-FIND requests it received, at any level."""
        return self.text.count(_FIND)

    @property
    def instances_sent(self) -> int:
        """C-STORE sub-operations it made to answer C-MOVEs: the instances it sent."""
        return len(_SUB_STORE.findall(self.text))

    @property
    def associations_refused(self) -> int:
        return self.text.count("Refusing Association")

    def requests(self) -> list[LoggedRequest]:
        """Every C-FIND and C-MOVE request with the level and UID keys its identifier dump
        shows, in order per process (a child per association: the lines of concurrent
        associations interleave in the log, those of one child do not)."""
        by_process: dict[str, list[str]] = {}
        for line in self.text.splitlines():
            match = _LINE.match(line)
            if match:
                by_process.setdefault(match.group(1), []).append(match.group(2))
        found: list[LoggedRequest] = []
        for lines in by_process.values():
            current: list[str] | None = None
            kind = ""
            for message in [*lines, _FIND]:  # a sentinel closes the last request
                if message in (_FIND, _MOVE):
                    if current is not None:
                        found.append(_request(kind, "\n".join(current)))
                    current, kind = [], "find" if message == _FIND else "move"
                elif current is not None:
                    current.append(message)
        return found


def _request(kind: str, block: str) -> LoggedRequest:
    level = _LEVEL.search(block)
    uids = {_UID_NAMES[tag]: value for tag, value in _UID.findall(block)}
    return LoggedRequest(kind, level.group(1) if level else "", uids)


def instance_level_without_series(requests: Sequence[LoggedRequest]) -> list[LoggedRequest]:
    """The instance-level requests that did not name exactly one study and one series (what
    a strict archive refuses)."""
    return [
        request
        for request in requests
        if request.level == "IMAGE"
        and not (
            _single(request.uids.get("StudyInstanceUID"))
            and _single(request.uids.get("SeriesInstanceUID"))
        )
    ]


def _single(value: str | None) -> bool:
    return bool(value) and not any(c in value for c in "\\*?")
