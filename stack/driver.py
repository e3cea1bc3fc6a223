"""Drive a running local stack as a data engineer would: run ``pixl``, wait until settled.

The demo, the system tests and the pipeline benchmark all do the same few things with a stack:
start it, run the real ``pixl`` CLI with the stack's environment, wait until no study (and,
when asked, no report) of some projects is still being worked on, look in Postgres, stop or
kill one process, and stop it all. ``Stack`` does them once, so the three read the same way and
agree on what "settled" means: the busy sets of ``pixl_core.db.states``.

``stack.local_stack`` starts and stops the processes; this module works *through* them and
never edits what they run: a what-if is a setting (``StackSettings.extra_env``), not a patch.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import xmlrpc.client
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg2
import requests
import requests.auth
from supervisor.xmlrpc import SupervisorTransport

from pixl_core.db.states import REPORT_BUSY, STUDY_BUSY
from pixl_core.transport.dicomweb import DicomwebClient, DicomwebSettings
from stack import local_stack
from stack.local_stack import StackError
from stack.settings import RAW_AET, REPO_DIR, StackSettings
from stack.standins import dcmqrscp_archive
from stack.standins.dcmqrscp_archive import ArchiveLog, DcmqrscpArchive

PIXL_CLI = REPO_DIR / ".venv" / "bin" / "pixl"


class PixlCommandError(StackError):
    """``pixl`` exited non-zero; the message is the command and its own one-line error."""


class NotSettledError(StackError):
    """Studies or reports were still busy at the timeout; ``counts`` holds the last counts."""

    def __init__(self, message: str, counts: Counts) -> None:
        super().__init__(message)
        self.counts = counts


@dataclass(frozen=True)
class Counts:
    """Per project, how many studies (and reports, when asked for) are in each state."""

    studies: dict[str, dict[str, int]]
    reports: dict[str, dict[str, int]] = field(default_factory=dict)

    def busy(self, project: str, *, reports: bool = False) -> int:
        """Items of ``project`` PIXL still works on by itself (queued or in progress)."""
        states = (self.reports if reports else self.studies).get(project, {})
        return sum(states.get(state, 0) for state in (REPORT_BUSY if reports else STUDY_BUSY))

    def total(self, project: str, *, reports: bool = False) -> int:
        return sum((self.reports if reports else self.studies).get(project, {}).values())

    def settled(self, projects: Iterable[str], *, reports: bool = False) -> bool:
        """Every project has work, and none of it is busy (images; and reports if asked)."""
        kinds = (False, True) if reports else (False,)
        return all(
            self.total(project, reports=kind) > 0 and self.busy(project, reports=kind) == 0
            for project in projects
            for kind in kinds
        )


@dataclass
class Stack:
    """One local stack (its ``StackSettings``) and what can be done with it from outside."""

    settings: StackSettings
    # A guard against a hung CLI, not a limit a healthy run comes near.
    pixl_timeout_s: float = 300.0

    # --- the processes -------------------------------------------------------------------------

    def up(self, timeout: float = 90.0) -> None:
        """Start every process (if not already running) and wait until each answers."""
        local_stack.up(self.settings, timeout=timeout)

    def down(self) -> None:
        """Stop exactly the processes this stack's supervisord started."""
        local_stack.down(self.settings)

    def wait_healthy(self, timeout: float = 90.0) -> None:
        local_stack.wait_healthy(self.settings, timeout)

    def supervisor(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``supervisorctl`` on this stack, e.g. ``("stop", "dsh")`` or ``("signal", "KILL",
        "orthanc-raw")``; supervisord restarts a killed process by itself."""
        return local_stack.supervisorctl(self.settings, *args)

    def process_pid(self, name: str) -> int:
        """The pid of one supervised process, or 0 when it is not running."""
        out = self.supervisor("pid", name).stdout.strip()
        return int(out) if out.isdigit() else 0

    def supervisor_rpc(self) -> Any:
        """supervisord's XML-RPC interface (``.supervisor.signalProcess("orthanc-anon", "KILL")``,
        ``.supervisor.stopProcess("dsh", False)``), through its unix socket.

        ``supervisor()`` starts a Python interpreter for each command (about 0.3 s); a fault
        drill that must hit a transfer while it runs (an FTPS upload lasts a fraction of a
        second) needs its signal sent within milliseconds of seeing the transfer start.
        """
        socket_url = f"unix://{self.settings.run_dir / 'supervisor.sock'}"
        return xmlrpc.client.ServerProxy(
            "http://127.0.0.1", transport=SupervisorTransport(None, None, socket_url)
        )

    def restart_postgres(self, down_seconds: float = 5.0, timeout: float = 60.0) -> None:
        """Stop the stack's Postgres, keep it down ``down_seconds``, start it and wait until it
        answers.

        A fault drill: every session ends at once (supervisord stops it with SIGINT, Postgres's
        fast shutdown) and the workers must carry on by themselves. The pause is what a real
        restart or failover takes (the stack's throwaway cluster, without fsync, is back in a
        tenth of a second), so that work finishing meanwhile meets a database that is not there.
        """
        stopped = self.supervisor("stop", "postgres")
        if "stopped" not in stopped.stdout:
            raise StackError(f"postgres did not stop: {stopped.stdout.strip()[-200:]}")
        time.sleep(down_seconds)
        started = self.supervisor("start", "postgres")
        if "started" not in started.stdout:
            raise StackError(f"postgres did not start: {started.stdout.strip()[-200:]}")
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg2.connect(self.settings.db_url, connect_timeout=2).close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise StackError(f"postgres did not answer within {timeout:.0f} s") from None
                time.sleep(0.2)

    # --- the CLI -------------------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """The environment a data engineer's shell would have for this stack."""
        return {**os.environ, **self.settings.environment()}

    def pixl_process(self, *args: str) -> subprocess.Popen[str]:
        """Start the venv's ``pixl`` with this stack's environment and return at once (output
        discarded): for a drill that kills the CLI while it runs (``.kill()`` is SIGKILL)."""
        return subprocess.Popen(
            [str(PIXL_CLI), *args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def pixl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the venv's ``pixl`` with this stack's environment; raise on failure if ``check``."""
        result = subprocess.run(
            [str(PIXL_CLI), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=self.pixl_timeout_s,
            check=False,
        )
        if check and result.returncode != 0:
            message = " ".join(result.stderr.split())[-300:] or f"exit code {result.returncode}"
            raise PixlCommandError(f"`pixl {' '.join(args)}` failed: {message}")
        return result

    def status(self) -> dict[str, dict[str, int]]:
        """``pixl status --json``: per project, studies in each state (zeros included)."""
        return json.loads(self.pixl("status", "--json").stdout)

    def report_status(self) -> dict[str, dict[str, int]]:
        """The EHR module's ``/status``: per project, reports in each state."""
        if not self.settings.with_reports:
            raise StackError("this stack runs without the EHR module: set with_reports=True")
        token = self.settings.secrets["PIXL_EHR_TOKEN"]
        response = requests.get(
            self.settings.url("ehr") + "/status",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        response.raise_for_status()
        return response.json()["reports"]

    def counts(self, *, reports: bool = False) -> Counts:
        return Counts(self.status(), self.report_status() if reports else {})

    def wait_until_settled(
        self,
        projects: Iterable[str],
        timeout: float = 180.0,
        *,
        reports: bool = False,
        poll_s: float = 1.0,
        hint: threading.Event | None = None,
        on_poll: Callable[[Counts], None] | None = None,
    ) -> Counts:
        """Wait until every study of ``projects`` (and every report, if ``reports``) is settled.

        A project counts as settled once it has work and none of it is busy, so a call made
        just after ``pixl populate`` cannot return before the work is there. Each check runs
        ``pixl status --json`` (about 0.7 CPU-s); a caller measuring the stack can pass a
        cheaper ``hint`` that is set when settling looks likely, and the CLI is asked only then
        (at most every ``poll_s``). ``on_poll`` sees every check's counts (a progress bar).
        Raises ``NotSettledError`` with the last counts after ``timeout`` seconds.
        """
        projects = list(projects)
        deadline = time.monotonic() + timeout
        counts = Counts({})
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            if hint is None or hint.wait(min(poll_s, remaining)):
                counts = self.counts(reports=reports)
                if on_poll is not None:
                    on_poll(counts)
                if counts.settled(projects, reports=reports):
                    return counts
                if hint is not None:
                    hint.clear()
            if time.monotonic() >= deadline:
                message = _not_settled(projects, counts, reports, timeout)
                raise NotSettledError(f"{message}; see {self.settings.logs_dir}", counts)
            if hint is None:
                time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))

    # --- looking inside ------------------------------------------------------------------------

    def query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        """Rows of one SQL statement on the stack's PIXL database (``%s`` placeholders)."""
        with psycopg2.connect(self.settings.db_url) as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            rows = cur.fetchall()
        conn.close()
        return rows

    @property
    def orthanc_auth(self) -> requests.auth.AuthBase:
        """The user ``pixl`` of orthanc-raw or orthanc-anon, for ``session.auth = ...``.

        The two have different passwords; this picks the one of the Orthanc a request goes to
        (by its port), so one session can talk to both.
        """
        return _OrthancAuth(self.settings)

    def vna_moves(self) -> int:
        """C-MOVE requests the VNA has served, counted from its own (verbose) log, whichever
        archive plays it."""
        if self.settings.vna_kind == "dcmqrscp":
            return self.archive("vna").log().moves
        log = self.settings.logs_dir / "vna.log"
        return log.read_text(errors="replace").count("Incoming Move request")

    def load_vna(self, cohort: Any) -> int:
        """Load a synthetic cohort's DICOM files (``stack.synthetic.cohort.Cohort``) into the
        VNA, whichever archive plays it; return how many instances it took."""
        if self.settings.vna_kind == "dcmqrscp":
            return self.archive("vna").load(cohort.dicom_files())
        from stack.synthetic.cohort import load_into_vna

        return load_into_vna(cohort, self.settings.url("vna"))

    def archive(self, name: str = "vna") -> Archive:
        """A dcmqrscp archive of this stack: ``"vna"`` when ``vna_kind`` is ``dcmqrscp``, or
        one added with ``StackSettings.add_archive(name, aet)``."""
        if name not in self.settings.dcmqrscp_archives():
            raise StackError(f"this stack runs no dcmqrscp archive named {name!r}")
        return Archive(self, local_stack.archive_spec(self.settings, name))

    def archive_log(self, archive: str = "vna") -> str:
        """The (verbose) log of an archive stand-in: ``vna`` or ``secondary``."""
        return (self.settings.logs_dir / f"{archive}.log").read_text(errors="replace")

    def archive_moves(self, archive: str = "vna") -> int:
        """C-MOVE requests an archive stand-in has served, counted from its own log."""
        return self.archive_log(archive).count("Incoming Move request")

    def archive_finds(self, archive: str = "vna") -> int:
        """C-FIND requests an archive stand-in has served, counted from its own log."""
        return self.archive_log(archive).count("Incoming Find request")

    def vna_sent_resources(self) -> Counter[str]:
        """How many C-MOVEs the VNA served for each of its resources (Orthanc ids), from its log.

        The VNA's log hides the UIDs of a move request ("*** POTENTIAL PHI ***"), so the one way
        to tell from the archive's own record *which* study a C-MOVE moved is the line Orthanc
        writes as it starts sending: "Sending resource <Orthanc id> to modality ...", naming
        the study, series or instance the request matched. Map ids to studies with the VNA's
        REST API (``/instances`` answers each upload with its ``ParentStudy``/``ParentSeries``).
        The Orthanc VNA only: a dcmqrscp VNA's log names the UIDs of each request
        (``archive().log().requests()``).
        """
        if self.settings.vna_kind != "orthanc":
            raise StackError("vna_sent_resources reads the Orthanc VNA's log: use archive().log()")
        log = (self.settings.logs_dir / "vna.log").read_text(errors="replace")
        return Counter(_SENDING_RESOURCE.findall(log))

    def dsh_uploads(self) -> Counter[str]:
        """Whole uploads (STOR) the DSH received, per file, from the DSH's own log.

        The DSH stand-in (pyftpdlib) logs every transfer as ``STOR <path> completed=<0|1>
        bytes=<n> ...``. PIXL uploads each file to ``.<name>.part`` and renames it, so a STOR of
        ``<folder>/.<name>.part`` counts as an upload of ``<folder>/<name>``. An upload is whole
        when it carried as many bytes as the file that stands there now: in stream mode the end
        of the data connection is the end of the file, so an upload cut by the sender's death
        (SIGKILL closes its socket cleanly) is logged ``completed=1`` with fewer bytes. Keys are
        paths relative to the DSH folder, e.g. ``chest-xray/dicom/<pseudonymised UID>.zip``:
        what proves "exported exactly once" is the receiving side's record, not PIXL's.
        """
        log = (self.settings.logs_dir / "dsh.log").read_text(errors="replace")
        root = str(self.settings.dsh_dir).rstrip("/") + "/"
        uploads: Counter[str] = Counter()
        for path, sent in _COMPLETED_STOR.findall(log):
            relative = path.removeprefix(root)
            folder, _, name = relative.rpartition("/")
            if name.startswith(".") and name.endswith(".part"):
                name = name[1 : -len(".part")]
            key = f"{folder}/{name}" if folder else name
            final = self.settings.dsh_dir / key
            if final.exists() and final.stat().st_size != int(sent):
                continue  # cut short: not an upload of this file
            uploads[key] += 1
        return uploads

    def dicomweb(self) -> DicomwebClient:
        """A DICOMweb client for the stack's research platform (the DICOMweb Orthanc behind its
        TLS proxy), as PIXL's exporter reaches it: HTTPS verified, user ``pixl``. For counting
        what the server holds by QIDO-RS (``instances_of_study``, ``study_counts``)."""
        return DicomwebClient(
            DicomwebSettings(
                url=self.settings.dicomweb_url,
                user="pixl",
                password=self.settings.secrets["PIXL_DICOMWEB_PASSWORD"],
                ca_file=str(self.settings.dicomweb_ca_file),
                retries=0,
            )
        )

    def dicomweb_received(self) -> Counter[str]:
        """How many times the DICOMweb server was sent each instance (SOP Instance UID), stored
        or not, from its own log (``orthanc-config/dicomweb-received.lua``): the receiving
        side's record that proves "exactly once", which its index (one copy per UID) cannot."""
        log = (self.settings.logs_dir / "orthanc-dicomweb.log").read_text(errors="replace")
        return Counter(_DICOMWEB_RECEIVED.findall(log))


@dataclass(frozen=True)
class Archive:
    """One dcmqrscp archive of a running stack (``Stack.archive(name)``): the small API the
    tests and the demo use on an archive that is not Orthanc.

    - ``load(files)`` stores DICOM files into it (``storescu``), returns how many it took;
    - ``log()`` is what it did, from its own log (``ArchiveLog``: ``moves``, ``finds``,
      ``instances_sent``, ``requests()`` with each request's level and UID keys);
    - ``refuse_pixl()`` restarts it without orthanc-raw among the AE titles it accepts (an
      archive that was never told about PIXL, or knows it by another AE title);
      ``accept_pixl()`` restarts it as configured.
    """

    stack: Stack
    spec: DcmqrscpArchive

    @property
    def aet(self) -> str:
        return self.spec.aet

    @property
    def port(self) -> int:
        return self.spec.port

    @property
    def log_path(self) -> Path:
        return self.spec.log_path

    def load(self, files: Iterable[Path]) -> int:
        return dcmqrscp_archive.load(files, self.spec.aet, self.spec.port)

    def log(self) -> ArchiveLog:
        return ArchiveLog.read(self.spec.log_path)

    def refuse_pixl(self, timeout: float = 30.0) -> None:
        callers = tuple(aet for aet in self.spec.callers if aet != RAW_AET)
        self._restart(replace(self.spec, callers=callers), timeout)

    def accept_pixl(self, timeout: float = 30.0) -> None:
        self._restart(self.spec, timeout)

    def _restart(self, spec: DcmqrscpArchive, timeout: float) -> None:
        """Write ``spec``'s configuration and restart the archive (dcmqrscp reads it at start
        only); return once it answers a C-ECHO again."""
        local_stack.render_archive(spec)
        restarted = self.stack.supervisor("restart", spec.name)
        if "started" not in restarted.stdout:
            raise StackError(f"{spec.name} did not restart: {restarted.stdout.strip()[-200:]}")
        deadline = time.monotonic() + timeout
        while not dcmqrscp_archive.echo(spec.aet, spec.port):
            if time.monotonic() > deadline:
                raise StackError(f"{spec.name} does not answer a C-ECHO; see {spec.log_path}")
            time.sleep(0.2)


_DICOMWEB_RECEIVED = re.compile(r"Lua says: pixl-received ([0-9.]+)")
_SENDING_RESOURCE = re.compile(r"Sending resource ([0-9a-f-]+) to modality")
_COMPLETED_STOR = re.compile(r"\] STOR (\S+) completed=1 bytes=(\d+)")


class _OrthancAuth(requests.auth.AuthBase):
    """HTTP basic auth with orthanc-raw's or orthanc-anon's password, chosen by port."""

    def __init__(self, settings: StackSettings) -> None:
        passwords = {
            "raw": settings.secrets["PIXL_ORTHANC_RAW_PASSWORD"],
            "anon": settings.secrets["PIXL_ORTHANC_PASSWORD"],
        }
        self.by_port = {
            settings.ports[f"{replica}_http"]: password
            for role, password in passwords.items()
            for replica in settings.replicas(role)
        }

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        port = urlsplit(request.url or "").port
        password = self.by_port.get(port or 0)
        if password is not None:
            request.prepare_auth(("pixl", password))
        return request


def _not_settled(projects: list[str], counts: Counts, reports: bool, timeout: float) -> str:
    kinds = ("studies", "reports") if reports else ("studies",)
    parts = []
    for project in projects:
        for kind in kinds:
            states = getattr(counts, kind).get(project, {})
            parts.append(f"{project} {kind} { ({s: n for s, n in states.items() if n}) }")
    return f"not settled after {timeout:.0f} s: {'; '.join(parts)}"
