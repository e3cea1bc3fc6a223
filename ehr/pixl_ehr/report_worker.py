"""The EHR module's worker: fetch each study's report from EMAP, de-identify it, check it.

It runs the same loop as orthanc-raw's worker (``pixl_core.db.polling.run_loop``): Postgres is
the queue, rows are claimed with a lease (``work_queue.claim``), so a crashed worker's reports
are taken again once the lease runs out, and failures go back to the queue with exponential
backoff (``work_queue.fail``) until ``max_attempts``, then end ``failed`` with a short error code.

For each claimed report (state ``fetching``):

1. EMAP (``emap.fetch_report``): no report → ``missing`` (terminal, not an error).
2. ``deidentifying`` while the Cogstack de-identification API is called, one bulk request for
   the whole round when there are several reports. If Cogstack is down the reports go back to
   the queue (``cogstack_<code>``, one attempt used) and the worker claims nothing more until
   Cogstack answers a probe again, so an outage of any length leaves them queued, not failed.
3. The second, independent method (``pixl_core.text.checker.check_report``) looks for the patient's
   own identifiers (EMAP's, plus the MRN and accession number of the work item) and identifier
   patterns in the de-identified text. Nothing found → ``checked`` (ready for export);
   anything found → ``flagged`` (withheld until a person approves or rejects it). The
   de-identified text, the verdict and the findings as kinds and offsets (never the matched
   text) are stored; each round that checks reports adds a ``check_run`` row per project with
   the share flagged by kind.

Fail closed: an unexpected error anywhere between EMAP and the checker sends the report back to
the queue (and eventually to ``failed``) with a code; nothing unchecked is ever marked
``checked``. Log lines carry work-item ids, counts and error codes only: never report text or
identifiers.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import psycopg2
from psycopg2.extras import Json

from pixl_core import db
from pixl_core.db import work_queue
from pixl_core.db.polling import Counters, run_loop
from pixl_core.db.work_queue import WorkItem
from pixl_core.env import Number, env_number
from pixl_core.errors import PixlConfigError, PixlError
from pixl_ehr.emap import EmapReport, emap_url, fetch_report, load_report_query
from pixl_ehr.report_check import Checker, IdentifiersFactory, check_text

logger = logging.getLogger("pixl.ehr.worker")
TABLE = "report"
# What the worker sends Cogstack to learn whether it is back after an outage: no patient data.
PROBE_TEXT = "PA chest radiograph. No acute cardiopulmonary abnormality."


class Deidentifier(Protocol):
    """What the worker needs of the Cogstack client (``pixl_ehr.cogstack.CogstackClient``)."""

    def deidentify(self, text: str) -> str: ...

    def deidentify_bulk(self, texts: list[str]) -> list[str]: ...


@dataclass
class ReportWorkerSettings:
    """How the report worker claims and retries; every field can be set from the environment
    (``from_env``) so system tests can shorten leases and backoffs."""

    worker_id: str
    batch_size: int = 8
    lease_seconds: float = 300.0
    max_attempts: int = 5
    backoff_base_seconds: float = 10.0
    max_backoff_seconds: float = 3600.0
    poll_seconds: float = 1.0

    @classmethod
    def from_env(cls, worker_id: str) -> ReportWorkerSettings:
        """``PIXL_REPORT_BATCH``, ``PIXL_REPORT_LEASE_SECONDS``, ``PIXL_REPORT_MAX_ATTEMPTS``,
        ``PIXL_REPORT_BACKOFF_SECONDS``, ``PIXL_REPORT_POLL_SECONDS`` (defaults above)."""

        def number(name: str, default: Number, kind: type[Number]) -> Number:
            return env_number(name, default, kind, positive=True)

        return cls(
            worker_id=worker_id,
            batch_size=number("PIXL_REPORT_BATCH", cls.batch_size, int),
            lease_seconds=number("PIXL_REPORT_LEASE_SECONDS", cls.lease_seconds, float),
            max_attempts=number("PIXL_REPORT_MAX_ATTEMPTS", cls.max_attempts, int),
            backoff_base_seconds=number(
                "PIXL_REPORT_BACKOFF_SECONDS", cls.backoff_base_seconds, float
            ),
            poll_seconds=number("PIXL_REPORT_POLL_SECONDS", cls.poll_seconds, float),
        )


# What this worker counts since it started, for ``GET /status`` (counts and a code only).
COUNTERS = (
    "claimed",
    "missing",
    "checked",
    "flagged",
    "retried",
    "failed",
    "rounds",
    "cogstack_probes_failed",
)


@dataclass
class RoundResult:
    """Outcome of one ``run_once``: how many reports ended in each state (or were retried)."""

    claimed: int = 0
    states: Counter[str] = field(default_factory=Counter)
    cogstack_error: str | None = None


def error_code(prefix: str, raw: object) -> str:
    """A work-queue error code (``^[a-z][a-z0-9_.-]{0,63}$``) from an arbitrary short code."""
    cleaned = re.sub(r"[^a-z0-9_.-]+", "_", str(raw).lower()).strip("_") or "error"
    if cleaned.startswith(prefix + "_"):  # CogstackError codes already say "cogstack_…"
        return cleaned[:64]
    return f"{prefix}_{cleaned}"[:64]


def _default_checker() -> tuple[Checker, IdentifiersFactory, str | None]:
    from pixl_core.text import checker

    version = getattr(checker, "CHECKER_VERSION", None) or getattr(checker, "__version__", None)
    return checker.check_report, checker.PatientIdentifiers, version


class ReportWorker:
    """Claims report work items and takes each from EMAP to ``checked``/``flagged``/``missing``.

    ``deidentifier`` is the Cogstack client (a fake in unit tests); ``checker`` and
    ``identifiers_factory`` default to ``pixl_core.text.checker``'s ``check_report`` and
    ``PatientIdentifiers``.
    """

    def __init__(
        self,
        db_url: str,
        deidentifier: Deidentifier,
        settings: ReportWorkerSettings,
        *,
        emap_db_url: str | None = None,
        report_query: str | None = None,
        checker: Checker | None = None,
        identifiers_factory: IdentifiersFactory | None = None,
        checker_version: str | None = None,
        cogstack_errors: tuple[type[BaseException], ...] | None = None,
    ) -> None:
        self.db_url = db_url
        self.emap_db_url = emap_db_url or emap_url()
        self.report_query = report_query if report_query is not None else load_report_query()
        self.deidentifier = deidentifier
        self.settings = settings
        if checker is None or identifiers_factory is None:
            default_check, default_ids, default_version = _default_checker()
            checker = checker or default_check
            identifiers_factory = identifiers_factory or default_ids
            checker_version = checker_version or default_version
        self.checker = checker
        self.identifiers_factory = identifiers_factory
        self.checker_version = checker_version
        self.cogstack_errors = cogstack_errors or _cogstack_error_types()
        self.counters = Counters(*COUNTERS)
        self.counters.set("last_error_code", None)
        self._conn_obj: db.Connection | None = None
        self._emap_conn_obj: db.Connection | None = None
        # Pause before the next claim after Cogstack failed, growing while it stays down.
        self._outage_rounds = 0

    # --- connections ------------------------------------------------------------------------

    def _conn(self) -> db.Connection:
        if self._conn_obj is None or self._conn_obj.closed:
            self._conn_obj = db.connect(self.db_url, application_name=self.settings.worker_id)
        return self._conn_obj

    def _emap(self) -> db.Connection:
        if self._emap_conn_obj is None or self._emap_conn_obj.closed:
            conn = db.connect(self.emap_db_url, application_name=self.settings.worker_id)
            conn.set_session(readonly=True)
            self._emap_conn_obj = conn
        return self._emap_conn_obj

    def close(self) -> None:
        for conn in (self._conn_obj, self._emap_conn_obj):
            if conn is not None and not conn.closed:
                conn.close()
        self._conn_obj = self._emap_conn_obj = None

    # --- loop -------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Process reports until ``stop`` is set. Survives Postgres and Cogstack outages.

        Once a round finds Cogstack failing, no report is claimed until a probe (a fixed text
        with no patient data) goes through again: claims count towards ``max_attempts``, so
        claiming during an outage would turn a long outage into failed reports. The pause
        between probes doubles from ``backoff_base_seconds`` up to ``max_backoff_seconds``.
        """
        try:
            run_loop(
                stop,
                name="report worker",
                logger=logger,
                db_url=self.db_url,
                ready=self._cogstack_ready,
                claim=self._claim,
                process=self._process_round,
                reset=self.close,
                poll_seconds=self.settings.poll_seconds,
            )
        finally:
            self.close()

    def _cogstack_ready(self, stop: threading.Event) -> bool:
        """False (after pausing) while Cogstack is known to be down and still fails a probe."""
        if not self._outage_rounds:
            return True
        if not self._cogstack_answers():
            self._outage_rounds += 1
            stop.wait(self._outage_pause())
            return False
        logger.info("Cogstack answers again; claiming reports")
        self._outage_rounds = 0
        return True

    def _process_round(self, items: list[WorkItem]) -> float | None:
        """Process one claimed round; after a Cogstack failure, the pause before the next."""
        result = self.process(items)
        if result.cogstack_error:
            self._outage_rounds = 1
            return self._outage_pause()
        return None

    def _cogstack_answers(self) -> bool:
        """Whether the de-identification API works again, asked with a text that names no one."""
        try:
            self.deidentifier.deidentify(PROBE_TEXT)
        except Exception as exc:
            self.counters.add("cogstack_probes_failed")
            logger.info("Cogstack still failing (%s)", type(exc).__name__)
            return False
        return True

    def _outage_pause(self) -> float:
        exponent = min(self._outage_rounds - 1, 16)
        return min(
            self.settings.backoff_base_seconds * 2**exponent, self.settings.max_backoff_seconds
        )

    def run_once(self, project: str | None = None) -> RoundResult:
        """Claim up to ``batch_size`` reports and take each as far as it goes; return counts."""
        return self.process(self._claim(project))

    def _claim(self, project: str | None = None) -> list[WorkItem]:
        return work_queue.claim(
            self._conn(),
            TABLE,
            self.settings.worker_id,
            self.settings.batch_size,
            self.settings.lease_seconds,
            project,
            max_attempts=self.settings.max_attempts,
        )

    def process(self, items: Sequence[WorkItem]) -> RoundResult:
        """Take each claimed report as far as it goes; return how many ended in each state."""
        result = RoundResult(claimed=len(items))
        if not items:
            return result
        self._count("claimed", len(items))
        self._count("rounds")
        started = datetime.now(UTC)
        fetched = self._fetch_all(items, result)
        if fetched:
            texts = self._deidentify_all(fetched, result)
            if texts is not None:
                self._check_all(fetched, texts, result, started)
        logger.info(
            "report round: %d claimed, %s",
            len(items),
            ", ".join(f"{state} {n}" for state, n in sorted(result.states.items())) or "nothing",
        )
        return result

    # --- steps ------------------------------------------------------------------------------

    def _fetch_all(
        self, items: Sequence[WorkItem], result: RoundResult
    ) -> list[tuple[WorkItem, EmapReport]]:
        fetched: list[tuple[WorkItem, EmapReport]] = []
        for item in items:
            try:
                emap = self._emap()
            except (psycopg2.Error, PixlError):  # EMAP unreachable: back to the queue
                self._retry(item, "emap_unavailable", result)
                continue
            try:
                report = fetch_report(emap, item.mrn, item.accession_number, self.report_query)
            except PixlConfigError:
                self._retry(item, "emap_query_error", result)
                continue
            except psycopg2.Error as exc:
                self._drop_emap()
                self._retry(item, error_code("emap", type(exc).__name__), result)
                continue
            if report is None:
                if self._complete(item, "missing", "fetching", last_error_code=None):
                    self._note(result, "missing")
                continue
            if self._complete(
                item, "deidentifying", "fetching", lease_seconds=self.settings.lease_seconds
            ):
                fetched.append((item, report))
        return fetched

    def _deidentify_all(
        self, fetched: Sequence[tuple[WorkItem, EmapReport]], result: RoundResult
    ) -> list[str] | None:
        """De-identified texts in the order of ``fetched``, or None after sending all back."""
        texts = [report.text for _item, report in fetched]
        try:
            if len(texts) == 1:
                out = [self.deidentifier.deidentify(texts[0])]
            else:
                out = list(self.deidentifier.deidentify_bulk(texts))
        except self.cogstack_errors as exc:
            code = error_code("cogstack", getattr(exc, "code", None) or type(exc).__name__)
            result.cogstack_error = code
            for item, _report in fetched:
                self._retry(item, code, result)
            return None
        except Exception as exc:  # fail closed: whatever went wrong, nothing goes forward
            code = error_code("cogstack", type(exc).__name__)
            logger.warning("de-identification failed unexpectedly (%s)", type(exc).__name__)
            result.cogstack_error = code
            for item, _report in fetched:
                self._retry(item, code, result)
            return None
        if len(out) != len(texts) or not all(isinstance(text, str) for text in out):
            for item, _report in fetched:
                self._retry(item, "cogstack_bad_response", result)
            return None
        return out

    def _check_all(
        self,
        fetched: Sequence[tuple[WorkItem, EmapReport]],
        texts: Sequence[str],
        result: RoundResult,
        started: datetime,
    ) -> None:
        runs: dict[str, Counter[str]] = {}
        for (item, report), text in zip(fetched, texts, strict=True):
            try:
                flagged, findings = self._check(text, item, report)
            except Exception as exc:  # fail closed: an unchecked report never goes forward
                logger.warning("checker failed on report item %s (%s)", item.id, type(exc).__name__)
                self._retry(item, "checker_error", result)
                continue
            state = "flagged" if flagged else "checked"
            applied = self._complete(
                item,
                state,
                "deidentifying",
                deidentified_text=text,
                check_flagged=flagged,
                check_findings=findings,
                checked_at=datetime.now(UTC),
                released_text=None,  # a new text: an earlier review's release no longer applies
                last_error_code=None,
            )
            if not applied:  # the lease ran out and another worker took it: its verdict counts
                continue
            self._note(result, state)
            run = runs.setdefault(item.project, Counter())
            run["__checked__"] += 1
            if flagged:
                run["__flagged__"] += 1
                for kind in {finding["kind"] for finding in findings}:
                    run[kind] += 1
        for project, run in runs.items():
            self._record_check_run(project, run, started)

    def _check(
        self, text: str, item: WorkItem, report: EmapReport
    ) -> tuple[bool, list[dict[str, Any]]]:
        """The checker's verdict (``pixl_ehr.report_check.check_text``, shared with review)."""
        return check_text(
            text,
            item.mrn,
            item.accession_number,
            report.identifiers,
            self.checker,
            self.identifiers_factory,
        )

    def _record_check_run(self, project: str, run: Counter[str], started: datetime) -> None:
        checked = run.pop("__checked__", 0)
        flagged = run.pop("__flagged__", 0)
        try:
            with self._conn() as conn, conn.cursor() as cur:
                cur.execute(
                    "INSERT INTO check_run (project, checker_version, started_at, finished_at, "
                    "reports_checked, reports_flagged, flagged_by_kind) "
                    "VALUES (%s, %s, %s, now(), %s, %s, %s)",
                    (
                        project,
                        self.checker_version,
                        started,
                        checked,
                        flagged,
                        Json(dict(sorted(run.items()))),
                    ),
                )
        except psycopg2.Error as exc:  # the metric is lost, the verdicts are already stored
            logger.warning("could not record the check run (%s)", type(exc).__name__)

    # --- state changes ----------------------------------------------------------------------

    def _complete(self, item: WorkItem, state: str, expected: str, **fields: Any) -> bool:
        return work_queue.complete(self._conn(), TABLE, item.id, state, expected, **fields)

    def _retry(self, item: WorkItem, code: str, result: RoundResult) -> None:
        new_state = work_queue.fail(
            self._conn(),
            TABLE,
            item.id,
            code,
            self.settings.max_attempts,
            self.settings.backoff_base_seconds,
            max_backoff_seconds=self.settings.max_backoff_seconds,
        )
        outcome = "failed" if new_state == "failed" else "retried"
        self._note(result, outcome)
        self.counters.set("last_error_code", code)
        logger.warning("report item %s: %s (now %s)", item.id, code, new_state)

    def _drop_emap(self) -> None:
        conn, self._emap_conn_obj = self._emap_conn_obj, None
        if conn is not None and not conn.closed:
            conn.close()

    def _note(self, result: RoundResult, state: str) -> None:
        result.states[state] += 1
        self._count(state)

    def _count(self, name: str, amount: int = 1) -> None:
        self.counters.add(name, amount)

    def snapshot(self) -> dict[str, Any]:
        return self.counters.snapshot()


def _cogstack_error_types() -> tuple[type[BaseException], ...]:
    try:
        from pixl_ehr.cogstack import CogstackError
    except ImportError:
        return (PixlError,)
    return (CogstackError,)
