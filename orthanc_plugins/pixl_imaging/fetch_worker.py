"""orthanc-raw's worker: claim studies from Postgres, fetch them from the VNA, hand them on.

Runs as a background thread inside orthanc-raw (``orthanc_plugins/raw.py`` starts it) and talks
to its own Orthanc over REST, so the same code runs in a system test against a real Orthanc and
in a test against a stand-in. The rates (studies/s) and the numbers in flight are read from
Postgres on every round, so ``pixl rate`` changes them while it runs. Every limit holds for all
orthanc-raw replicas together, none is kept in this process's memory: ``'*'`` limits all of
orthanc-raw's asking (its start slot is a row of ``fetch_rate_slot``, ``pixl_core.db.rate_slot``,
taken before a claim; its in-flight limit is counted by the claim, ``in_progress_cap``); a
project with a rate of its own is held to that as well (its slot is taken, and its in-flight
limit counted, by the claim of one of its studies: ``work_queue.claim(project_rates=…)``); and
the secondary archive's rate is a slot of its own (scope ``archive:secondary``), taken just
before the secondary is asked.
Claims carry a short lease (30 s) that a heartbeat renews while the study is worked on
(``pixl_core.db.leases``): if this process dies, another (or this one restarted) takes the work
over within a lease.

The archive going away is not the studies' fault: when a C-FIND or C-MOVE fails, the worker
asks the VNA for a C-ECHO; if that fails too, the study goes back to the queue without using up
a try (``vna_unreachable``), claiming pauses, and a C-ECHO every ``vna_probe_seconds`` tells
when to resume. Only a failure while the VNA answers costs the study a try (fault F5).

Every C-MOVE is audited before it is sent and after (``vna_fetch.MoveAudit``, fault F3), and a
write that meets a Postgres restart is retried on a fresh connection for up to
``db_retry_seconds``, so an outcome the worker reached is not lost to the restart.

The operator's hold: ``pixl pause`` / ``pixl resume`` (or the page ``/pixl/ui/``) and the VNA's
hours are rows of ``fetch_control`` (``pixl_core.db.fetch_control``), read on every round like
the rates. While all asking is held back, nothing is claimed; a project held back on its own
is left out of the claim. Either way its queued studies stay queued, losing no try (counters
``paused`` and ``outside_hours`` say which, 1 or 0, for ``/pixl/status``).

The loop is ``pixl_core.db.polling.run_loop``, shared with the exporter and the report worker;
what is the fetch worker's own is ``_ready``: one claim per due rate slot, while fewer than the
in-flight limit are being fetched (by this replica, then by all of them). A failure is recorded
as the error's ``code`` (a broken project file as ``invalid_project``, a missing one as
``unknown_project``), never an identifier.

The in-flight limit protects the VNA, so it counts the studies being asked of it: once a study
is in orthanc-raw (moved or cached), it is marked off the limit (``study.fetched_at``,
``work_queue.mark_off_cap``) and the next study is asked for while this one is handed on, up to
as many hand-offs as the limit again. It keeps its lease and its ``fetching`` state until the
hand-off ends, so a crash mid hand-off is handled as any other.

The hand-off: only the instances the VNA listed for the study are handed on
(``vna_fetch.FetchResult.instances``), each screened first (``pixl_core.dicom.screening``:
its size from Orthanc's index before it is read, then its bytes) because orthanc-anon's Orthanc
parses whatever it receives and dies on some files. A screened-out instance is recorded as
refused with its ``malformed_…`` reason and not sent; it still counts in ``instances_sent``,
so the exporter sees the study complete (and ends it ``refused`` if nothing else is left).

Archives (issue 11, ``pixl_imaging.archives``): a study the cohort names by UID is asked for
by it. When the VNA has several studies behind a study's accession number, the project says
what happens (``multiple_studies_per_accession``): ``export`` keeps the first UID on the work
item and gives each other study a work item of its own (``work_items.split_studies``), each
then fetched and exported alone; ``refuse`` ends the item ``refused``
(``several_studies_per_accession``). When the VNA has no such study and a secondary archive is
configured, it is asked instead, but only inside its hours and at its own rate: otherwise
the study goes back to the queue without using a try (``waiting_for_secondary``, with
``awaiting_archive`` set), and is not claimed again until the secondary may be asked; it then
asks the secondary directly. Two replicas may both claim a waiting study when the secondary's
slot comes; only the one that takes the slot asks, the other's study waits again. The archive a
study came from is recorded (``source_archive``).

Crashes: a study whose lease ran out while a worker held it counts a crash when it is claimed
again (``work_queue.claim(max_crashes=…)``), and so does a study during whose hand-off
orthanc-anon dropped the connection (it died receiving an instance). After ``max_crashes`` the
study ends ``failed`` with ``worker_crashed`` instead of crashing a service again.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TypeVar

import requests
import urllib3

from pixl_core import db
from pixl_core.config.projects import load_project
from pixl_core.db import fetch_control, rate_slot, study_records, work_items, work_queue
from pixl_core.db.leases import DEFAULT_LEASE_SECONDS, Heartbeat
from pixl_core.db.polling import Counters, run_loop
from pixl_core.db.work_queue import FetchRate, WorkItem
from pixl_core.dicom.deid import REFUSED_MODALITY
from pixl_core.dicom.handoff import Handoff, mark
from pixl_core.dicom.screening import Malformed, ScreeningLimits, check_size, screen
from pixl_core.errors import PixlConfigError
from pixl_core.hashing import ProjectHasher
from pixl_core.transport.orthanc_rest import OrthancApi, OrthancError
from pixl_imaging.archives import (
    DEFAULT_SECONDARY_STUDIES_PER_SECOND,
    PRIMARY,
    SECONDARY,
    SECONDARY_MODALITY,
    SECONDARY_UNREACHABLE,
    WAITING_FOR_SECONDARY,
)
from pixl_imaging.vna_fetch import (
    FetchError,
    FetchResult,
    FetchSettings,
    LocalInstance,
    Outcome,
    StudyQuery,
    fetch_study,
)

logger = logging.getLogger("pixl.raw")
MAX_IN_FLIGHT_CAP = 32
DEFAULT_RATE = FetchRate(studies_per_second=1.0, max_in_flight=1)
SECONDARY_SCOPE = fetch_control.archive_scope(SECONDARY)  # its rows in fetch_rate(_slot)
VNA_UNREACHABLE = "vna_unreachable"
T = TypeVar("T")


@dataclass
class RawWorkerSettings:
    worker_id: str
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    max_attempts: int = 5
    backoff_base_seconds: float = 10.0
    poll_seconds: float = 0.25
    fetch: FetchSettings = field(default_factory=FetchSettings)
    screening: ScreeningLimits = field(default_factory=ScreeningLimits)
    # A study that crashed a worker this many times ends failed (worker_crashed).
    max_crashes: int = 2
    # While the VNA does not answer, a C-ECHO this often tells when to resume claiming.
    vna_probe_seconds: float = 10.0
    # How long a write is retried through a Postgres outage before the lease is left to it.
    db_retry_seconds: float = 60.0
    # The secondary archive's Orthanc modality, if one is configured (pixl_imaging.archives),
    # its rate until `pixl rate --archive secondary` stores one, and its default hours.
    secondary_modality: str | None = None
    secondary_studies_per_second: float = DEFAULT_SECONDARY_STUDIES_PER_SECOND
    secondary_default_hours: fetch_control.HoursWindow | None = None


# What this worker counts, for ``/pixl/status`` and the metrics endpoint.
COUNTERS = (
    "claimed",
    "moves",
    "cached",
    "handed_off",
    "instances_sent",
    "screened_out",
    "unlisted_skipped",
    "worker_crashes",
    "not_found",
    "refused",
    "retried",
    "failed",
    "in_flight",
    "vna_unreachable",
    "vna_reachable",
    "paused",
    "outside_hours",
    "secondary_asked",
    "waiting_for_secondary",
    "secondary_closed",
    "split_studies",
)


class RawWorker:
    def __init__(
        self,
        db_url: str,
        raw: OrthancApi,
        anon: OrthancApi | Sequence[OrthancApi],
        secret: bytes,
        settings: RawWorkerSettings,
    ) -> None:
        self.db_url = db_url
        self.raw = raw
        # Every orthanc-anon replica (they share one Orthanc database): each study goes to the
        # next, so the replicas share the de-identification; one that refuses the connection
        # (down, restarting) is passed over for the next (``_post_to_anon``).
        self.anons = list(anon) if isinstance(anon, list | tuple) else [anon]
        self.anon = self.anons[0]
        self._next_anon = itertools.count()
        self.secret = secret
        self.settings = settings
        self.counters = Counters(*COUNTERS)
        self.counters.set("vna_reachable", 1)
        self._connections = db.ThreadConnections(db_url, self.settings.worker_id)
        self.heartbeat = Heartbeat(
            self._connections, "study", self.settings.worker_id, self.settings.lease_seconds
        )
        self._rate = DEFAULT_RATE
        self._project_rates: dict[str, FetchRate] = {}
        self._held_projects: list[str] = []  # paused or outside their hours (fetch_control)
        self._futures: set[Future[None]] = set()  # what this replica has in flight
        # Studies of this worker fetched and being handed on: off the in-flight limit.
        self._handing_off: set[int] = set()
        self._pool: ThreadPoolExecutor | None = None
        self._vna_paused = False
        self._next_probe = 0.0
        # The secondary archive: its hold (hours, pause) and its rate this round (its slot is
        # in Postgres, shared with the other replicas).
        self._secondary_hold: fetch_control.Hold | None = None
        self._secondary_rate = self.settings.secondary_studies_per_second
        self._secondary_defaults_written = False

    def _conn(self) -> db.Connection:
        return self._connections.get()

    def run(self, stop: threading.Event) -> None:
        """Claim and process studies until ``stop`` is set. Survives Postgres outages.

        Each round claims one study per due rate slot while under the in-flight limit. It only
        sleeps the poll interval when the queue is empty; otherwise it waits exactly until the
        next rate slot or until a study in flight finishes.
        """
        self.heartbeat.start(stop)
        # Up to the limit asking the VNA, and as many again being handed on.
        with ThreadPoolExecutor(2 * MAX_IN_FLIGHT_CAP, thread_name_prefix="pixl-fetch") as pool:
            self._pool = pool
            run_loop(
                stop,
                name="raw worker",
                logger=logger,
                db_url=self.db_url,
                ready=self._ready,
                claim=lambda: self._claim(1),
                process=self._start,
                reset=self._connections.reset,
                poll_seconds=self.settings.poll_seconds,
            )

    def _ready(self, stop: threading.Event) -> bool:
        """Whether a study may be claimed now; if not, wait for a slot or a free place first
        (or, while the VNA is away, for the next C-ECHO)."""
        self._futures = {f for f in self._futures if not f.done()}
        if self._vna_paused and not self._vna_back(stop):
            return False
        self._read_rates()
        if not self._gate_open(stop):
            return False
        limit = min(self._rate.max_in_flight, MAX_IN_FLIGHT_CAP)
        # A study being handed on to orthanc-anon no longer asks the VNA: it is off the limit,
        # but at most as many again may be handed on at once.
        asking = len(self._futures) - len(self._handing_off)
        if asking >= limit or len(self._futures) >= 2 * limit:
            wait(self._futures, timeout=self.settings.poll_seconds, return_when=FIRST_COMPLETED)
            return False
        # Every replica's studies asking the VNA, together.
        if work_queue.in_progress_on_cap(self._conn(), "study") >= limit:
            stop.wait(self.settings.poll_seconds)
            return False
        # The rate slot of all asking is shared by every orthanc-raw replica (in Postgres).
        delay = rate_slot.take(self._conn(), "*", 1.0 / self._rate.studies_per_second)
        if delay > 0:
            stop.wait(min(delay, self.settings.poll_seconds))
            return False
        return True

    def _read_rates(self) -> None:
        """The rates of ``fetch_rate``: ``'*'``, the projects' own, the secondary archive's."""
        rates = work_queue.fetch_rates(self._conn())
        self._rate = rates.pop("*", DEFAULT_RATE)
        secondary_rate = rates.pop(SECONDARY_SCOPE, None)
        self._secondary_rate = (
            secondary_rate.studies_per_second
            if secondary_rate
            else self.settings.secondary_studies_per_second
        )
        self._project_rates = {
            name: rate
            for name, rate in rates.items()
            if not name.startswith(fetch_control.ARCHIVE_PREFIX)
        }

    def _gate_open(self, stop: threading.Event) -> bool:
        """Whether anything may be claimed now (``fetch_control``); remember the projects held
        back on their own. While everything is held, wait a poll interval."""
        if self.settings.secondary_modality and not self._secondary_defaults_written:
            if self.settings.secondary_default_hours is not None:
                fetch_control.set_default_hours(
                    self._conn(),
                    SECONDARY_SCOPE,
                    self.settings.secondary_default_hours,
                )
            self._secondary_defaults_written = True
        rows = fetch_control.controls(self._conn())
        now = fetch_control.now_local()
        gate = fetch_control.gate(rows, now)
        self._secondary_hold = fetch_control.archive_gate(rows, SECONDARY, now)
        self.counters.set("secondary_closed", int(self._secondary_hold is not None))
        hold = gate.everything
        self.counters.set("paused", int(hold is not None and hold.reason == "paused"))
        self.counters.set("outside_hours", int(hold is not None and hold.reason != "paused"))
        self._held_projects = sorted(gate.projects)
        if hold is not None:
            stop.wait(max(self.settings.poll_seconds, 1.0))
            return False
        return True

    def _start(self, claimed: list[WorkItem]) -> None:
        """Fetch the claimed studies in the pool (their rate slots were taken: all asking's
        before the claim, a project's own by it)."""
        assert self._pool is not None
        for item in claimed:
            self._futures.add(self._pool.submit(self.process, item))

    def _claim(self, limit: int) -> list[WorkItem]:
        return work_queue.claim(
            self._conn(),
            "study",
            self.settings.worker_id,
            limit,
            self.settings.lease_seconds,
            max_attempts=self.settings.max_attempts,
            max_crashes=self.settings.max_crashes,
            held=self.heartbeat.held(),
            exclude_projects=self._held_projects,
            # The '*' in-flight limit, and the projects' own rates and in-flight limits, are of
            # every orthanc-raw replica together (counted and taken in the claim's transaction).
            in_progress_cap=min(self._rate.max_in_flight, MAX_IN_FLIGHT_CAP),
            project_rates=self._project_rates,
            # Studies waiting for the secondary archive stay queued while it may not be asked;
            # with no secondary configured (any more) they are claimed and asked of the VNA.
            exclude_awaiting=(
                (SECONDARY,)
                if self.settings.secondary_modality and not self._secondary_may_be_asked()
                else ()
            ),
        )

    # --- the secondary archive -----------------------------------------------------------------

    def _secondary_open(self) -> bool:
        """Whether the secondary archive is configured and open (hours, pause) this round."""
        return self.settings.secondary_modality is not None and self._secondary_hold is None

    def _secondary_may_be_asked(self) -> bool:
        """Whether the secondary archive is open and its rate slot (every replica's, in
        Postgres) has come: studies waiting for it are claimed only then."""
        return self._secondary_open() and rate_slot.is_due(self._conn(), SECONDARY_SCOPE)

    def _take_secondary_slot(self) -> bool:
        """Take the secondary archive's next rate slot, shared by every replica, if it may be
        asked now; False if it is closed or another replica (or thread) took the slot."""
        if not self._secondary_open():
            return False
        interval = 1.0 / self._secondary_rate
        return rate_slot.take(self._conn(), SECONDARY_SCOPE, interval) == 0.0

    def _secondary_answers(self) -> bool:
        try:
            self.raw.post(f"/modalities/{SECONDARY_MODALITY}/echo", {"Timeout": 10}, timeout=30)
        except OrthancError:
            return False
        return True

    def _wait_for_secondary(self, item: WorkItem, code: str = WAITING_FOR_SECONDARY) -> None:
        """Back to the queue without using a try, to be claimed once the secondary may be
        asked (``claim(exclude_awaiting=…)``)."""
        self._db(
            lambda conn: work_queue.release(
                conn, "study", item.id, self.settings.worker_id, code, awaiting_archive=SECONDARY
            )
        )
        self.counters.add("waiting_for_secondary")
        logger.info("study item %s: waits for the secondary archive (%s)", item.id, code)

    def _fetch_from(
        self, archive: str, query: StudyQuery, modalities: frozenset[str], item: WorkItem
    ) -> FetchResult:
        settings = self.settings.fetch
        if archive == SECONDARY:
            assert self.settings.secondary_modality is not None
            settings = dataclasses.replace(settings, vna_modality=self.settings.secondary_modality)
            self.counters.add("secondary_asked")
        return fetch_study(self.raw, query, modalities, settings, _Audit(self, item))

    def process(self, item: WorkItem) -> None:
        """Fetch one claimed study and hand it to orthanc-anon; record the outcome. The study's
        lease is renewed by the heartbeat for as long as this runs."""
        self.counters.add("claimed")
        self.counters.add("in_flight")
        try:
            with self.heartbeat.hold(item.id):
                self._outcome(item)
        except db.DATABASE_ERRORS as exc:  # still away after db_retry_seconds: the lease decides
            logger.warning("study item %s: database away (%s)", item.id, type(exc).__name__)
            self._connections.reset()
        finally:
            self._handing_off.discard(item.id)
            self.counters.add("in_flight", -1)

    def _outcome(self, item: WorkItem) -> None:
        try:
            self._process(item)
        except AnonCrashed:
            self._crashed(item)
        except (FetchError, OrthancError) as exc:
            if self._vna_gone():
                self._release(item)
            else:
                code = exc.code if isinstance(exc, FetchError) else f"orthanc_{exc.code}"
                if isinstance(exc, OrthancError) and exc.orthanc_status is not None:
                    logger.warning("study item %s: Orthanc error %s", item.id, exc.orthanc_status)
                self._retry(item, code)
        except db.DATABASE_ERRORS:
            raise
        except PixlConfigError as exc:  # the operator must fix it: retrying would not help
            self._finish(item, "failed", last_error_code=exc.code)
        except Exception as exc:  # never let one study kill the worker
            logger.exception("unexpected error on study item %s", item.id)
            self._retry(item, "internal_" + type(exc).__name__.lower()[:40])

    # --- the VNA's availability ----------------------------------------------------------------

    def _vna_answers(self) -> bool:
        """One C-ECHO to the VNA through orthanc-raw."""
        modality = self.settings.fetch.vna_modality
        try:
            self.raw.post(f"/modalities/{modality}/echo", {"Timeout": 10}, timeout=30)
        except OrthancError:
            return False
        return True

    def _vna_gone(self) -> bool:
        """After a failed C-FIND or C-MOVE: whether the VNA is away (then pause claiming)."""
        if self._vna_paused:
            return True
        if self._vna_answers():
            return False
        self._vna_paused = True
        self._next_probe = time.monotonic() + self.settings.vna_probe_seconds
        self.counters.set("vna_reachable", 0)
        logger.warning(
            "the VNA does not answer a C-ECHO: claiming paused, probing every %.0f s",
            self.settings.vna_probe_seconds,
        )
        return True

    def _vna_back(self, stop: threading.Event) -> bool:
        """While paused: wait for the next probe; True once the VNA answers again."""
        delay = self._next_probe - time.monotonic()
        if delay > 0 and stop.wait(delay):
            return False
        self._next_probe = time.monotonic() + self.settings.vna_probe_seconds
        if not self._vna_answers():
            return False
        self._vna_paused = False
        self.counters.set("vna_reachable", 1)
        logger.warning("the VNA answers again: claiming resumed")
        return True

    def _release(self, item: WorkItem) -> None:
        self._db(
            lambda conn: work_queue.release(
                conn, "study", item.id, self.settings.worker_id, VNA_UNREACHABLE
            )
        )
        self.counters.add("vna_unreachable")
        logger.warning("study item %s: VNA unreachable, back in the queue", item.id)

    # --- the database, through restarts --------------------------------------------------------

    def _db(self, action: Callable[[db.Connection], T]) -> T:
        """One database step, reconnecting through a Postgres restart (``db_retry_seconds``):
        an outcome reached is recorded, not left to the lease."""
        return self._connections.run(action, self.settings.db_retry_seconds)

    def _process(self, item: WorkItem) -> None:
        project = load_project(item.project)
        query = StudyQuery(
            mrn=item.mrn,
            accession_number=item.accession_number,
            study_uid=item.row.get("study_uid"),
        )
        has_secondary = self.settings.secondary_modality is not None
        archive = PRIMARY
        result: FetchResult | None = None
        if not (has_secondary and item.row.get("awaiting_archive") == SECONDARY):
            result = self._fetch_from(PRIMARY, query, project.modalities, item)
        if has_secondary and (result is None or result.outcome is Outcome.NOT_FOUND):
            if not self._take_secondary_slot():
                self._wait_for_secondary(item)
                return
            archive = SECONDARY
            try:
                result = self._fetch_from(SECONDARY, query, project.modalities, item)
            except (FetchError, OrthancError):
                if self._secondary_answers():
                    raise
                self._wait_for_secondary(item, SECONDARY_UNREACHABLE)
                return
        assert result is not None
        if result.outcome is Outcome.SEVERAL_STUDIES:
            if project.multiple_studies_per_accession == "refuse":
                self.counters.add("refused")
                self._finish(
                    item,
                    "refused",
                    last_error_code="several_studies_per_accession",
                    source_archive=archive,
                    awaiting_archive=None,
                )
                return
            added = self._db(
                lambda conn: work_items.split_studies(
                    conn,
                    item.id,
                    result.study_uids,
                    awaiting_archive=archive if archive != PRIMARY else None,
                )
            )
            self.counters.add("split_studies", added)
            logger.info("study item %s: %d more studies behind its accession", item.id, added)
            query = dataclasses.replace(query, study_uid=result.study_uids[0])
            result = self._fetch_from(archive, query, project.modalities, item)
        if result.outcome is Outcome.NOT_FOUND:
            self.counters.add("not_found")
            self._finish(item, "not_found", awaiting_archive=None)
            return
        if result.outcome is Outcome.WRONG_MODALITY:
            self.counters.add("refused")
            self._finish(
                item,
                "refused",
                last_error_code=REFUSED_MODALITY,
                study_uid=result.study_uid,
                source_archive=archive,
                awaiting_archive=None,
            )
            return
        if result.outcome is Outcome.CACHED:
            self.counters.add("cached")
        else:
            self.counters.add("moves", result.moves)
        # Done with the archive: the hand-off does not count on the in-flight limit, so the
        # next study is asked for meanwhile (the lease and state stay until the hand-off ends).
        self._db(
            lambda conn: work_queue.mark_off_cap(conn, "study", item.id, self.settings.worker_id)
        )
        self._handing_off.add(item.id)
        self._hand_off(item, result)
        self.counters.add("handed_off")
        self._finish(
            item,
            "anonymising",
            study_uid=result.study_uid,
            instances_sent=len(result.instances),
            source_archive=archive,
            awaiting_archive=None,
        )
        logger.info("study item %s handed to orthanc-anon", item.id)

    def _hand_off(self, item: WorkItem, result: FetchResult) -> None:
        """Send each instance the VNA listed to orthanc-anon, signed, once it passes screening;
        record the ones that do not as refused (their reason, keyed by a hash of the UID)."""
        if result.unlisted:
            self.counters.add("unlisted_skipped", result.unlisted)
            logger.warning(
                "study item %s: %d cached instance(s) the VNA did not list were not handed on",
                item.id,
                result.unlisted,
            )
        handoff = Handoff(project=item.project, work_item_id=item.id)
        anon = self.anons[next(self._next_anon) % len(self.anons)]
        hasher = ProjectHasher.for_project(item.project, self.secret)
        for instance in result.instances:
            try:
                data = self._screened_file(instance)
            except Malformed as refusal:
                key = hasher.uid(instance.sop_uid)
                self._db(
                    lambda conn, key=key, reason=refusal.reason: study_records.record_refusal(
                        conn, item.id, key, reason
                    )
                )
                self.counters.add("screened_out")
                logger.warning("study item %s: an instance was refused (%s)", item.id, refusal)
                continue
            anon = self._post_to_anon(anon, mark(data, handoff, self.secret))
            self.counters.add("instances_sent")

    def _post_to_anon(self, anon: OrthancApi, data: bytes) -> OrthancApi:
        """Store one instance in orthanc-anon through ``anon`` or, if that replica refuses the
        connection, the next one that takes it; return the replica that took it. A dropped
        connection (the replica died on the instance) is ``AnonCrashed``, not passed on."""
        start = self.anons.index(anon) if anon in self.anons else 0
        order = self.anons[start:] + self.anons[:start]
        for number, candidate in enumerate(order):
            try:
                candidate.post_bytes("/instances", data)
            except OrthancError as exc:
                if _connection_dropped(exc):
                    raise AnonCrashed from None
                if number + 1 < len(order) and _connection_refused(exc):
                    continue
                raise
            return candidate
        raise AssertionError("not reached")  # the last candidate returned or raised

    def _screened_file(self, instance: LocalInstance) -> bytes:
        """The instance's bytes, if they pass screening (``Malformed`` otherwise). The size is
        checked from Orthanc's index first, so an oversized file is never read."""
        limits = self.settings.screening
        if instance.file_size > limits.max_bytes:
            try:
                syntax = self.raw.get_bytes(f"/instances/{instance.id}/metadata/TransferSyntax")
            except OrthancError:
                syntax = b""
            check_size(instance.file_size, syntax.decode("ascii", "replace"), limits)
        data = self.raw.get_bytes(f"/instances/{instance.id}/file")
        screen(data, limits)
        return data

    def _finish(self, item: WorkItem, state: str, **fields: object) -> None:
        self._db(
            lambda conn: work_queue.complete(conn, "study", item.id, state, "fetching", **fields)
        )

    def _crashed(self, item: WorkItem) -> None:
        """orthanc-anon died receiving one of the study's instances: count it against the study."""
        new_state = self._db(
            lambda conn: work_queue.record_crash(
                conn,
                "study",
                item.id,
                self.settings.max_crashes,
                self.settings.backoff_base_seconds,
            )
        )
        self.counters.add("worker_crashes")
        self.counters.add("failed" if new_state == "failed" else "retried")
        logger.warning(
            "study item %s: orthanc-anon crashed receiving it (now %s)", item.id, new_state
        )

    def _retry(self, item: WorkItem, code: str) -> None:
        new_state = self._db(
            lambda conn: work_queue.fail(
                conn,
                "study",
                item.id,
                code,
                self.settings.max_attempts,
                self.settings.backoff_base_seconds,
            )
        )
        self.counters.add("failed" if new_state == "failed" else "retried")
        logger.warning("study item %s: %s (now %s)", item.id, code, new_state)


class _Audit:
    """``vna_fetch.MoveAudit`` on the ``vna_move`` table, for one claimed study."""

    def __init__(self, worker: RawWorker, item: WorkItem) -> None:
        self.worker = worker
        self.item = item

    def requested(self, level: str) -> int:
        worker, item = self.worker, self.item
        return worker._db(
            lambda conn: study_records.record_move_intent(
                conn, item.id, item.project, worker.settings.worker_id, level
            )
        )

    def finished(
        self,
        move_id: int,
        outcome: str,
        *,
        instances: int | None = None,
        error_code: str | None = None,
    ) -> None:
        self.worker._db(
            lambda conn: study_records.record_move_outcome(
                conn, move_id, outcome, instance_count=instances, error_code=error_code
            )
        )


class AnonCrashed(Exception):
    """orthanc-anon dropped the connection while receiving an instance: it died on it."""


def _connection_refused(error: OrthancError) -> bool:
    """Whether the request never reached Orthanc (nothing listening: a replica down)."""
    return error.code == "unreachable" and not _connection_dropped(error)


def _connection_dropped(error: OrthancError) -> bool:
    """Whether the request reached Orthanc and the connection then broke without an answer (a
    crash of the receiving process), rather than being refused (a service that is down)."""
    cause = error.__context__
    return (
        isinstance(cause, requests.ConnectionError)
        and bool(cause.args)
        and isinstance(cause.args[0], urllib3.exceptions.ProtocolError)
    )
