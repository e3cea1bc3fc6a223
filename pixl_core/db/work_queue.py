"""Postgres as the work queue: claim, renew, complete, back off and fail work items of every table.

There is no broker: a worker *claims* rows with ``SELECT … FOR UPDATE SKIP LOCKED``, which gives
concurrent workers disjoint rows without waiting for each other, and marks them with its id and
a lease (``claimed_until``). If the worker dies, the lease runs out and the next ``claim`` takes
the row again, from the first in-progress state (so a study left in ``fetching`` is fetched
again, which orthanc-raw answers from its cache rather than from the VNA). Every claim, of
either kind below, is the one statement in ``_claim_rows``.

Every state change is one ``UPDATE … WHERE id = %s AND state = %s``: if the row is no longer
in the expected state (another worker, or an earlier try of the same step, already moved it)
the update does not apply and the caller learns so, so a retried step cannot double-count.

Each call here is its own transaction: it commits before returning, so the lease (not an open
transaction) is what holds a claimed row.

Two ways to own an item:

- **The queue** (``claim`` → ``renew`` → ``complete`` or ``fail``): ``queued`` items whose
  ``next_attempt_at`` has come, and in-progress items whose lease ran out, move to the claimed
  state. ``attempts`` counts claims. ``fail`` puts the item back in the queue with exponential
  backoff until ``attempts`` reaches ``max_attempts``, then marks it ``failed``.
- **A stage** (``claim_stage`` → ``renew(state=…)`` → ``complete``, ``defer`` or ``requeue``):
  a state in which a second kind of worker takes items over without moving them, declared as a
  ``Stage`` of the queue. A study in ``anonymising`` belongs to orthanc-anon's exporter: only a
  worker whose id starts with ``anon:`` claims it, once orthanc-raw has recorded
  ``instances_sent``, and orthanc-raw's ``claim`` never takes it back. ``defer`` is the stage's
  backoff: the item keeps its state (a destination that is down for hours loses nothing and
  fails nothing), its own try counter (``export_attempts``) grows, and the lease is the wait.
  ``requeue`` sends it back to ``queued`` when the stage finds its input incomplete.

Crashes are counted per item where the table has a crash column (studies): a lease that ran
out means the worker holding it died, so ``claim(max_crashes=…)`` counts a crash before taking
the item again, ``record_crash`` counts one a worker saw happen under it (orthanc-anon dying
mid-upload), and an item that crashed a worker ``max_crashes`` times ends ``failed`` with
``worker_crashed`` instead of crashing it again.

Both backoffs are ``_backoff``: ``base * 2 ** tries`` seconds, capped. Error codes are short
lowercase strings such as ``vna_timeout`` (``PixlError.code``) and never identifiers; this
module and the schema refuse anything else.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg2 import sql
from psycopg2.extensions import cursor
from psycopg2.extras import Json, RealDictCursor

from pixl_core.db import rate_slot
from pixl_core.db.connection import Connection
from pixl_core.db.states import REPORT_STATES, STUDY_STATES


@dataclass(frozen=True)
class Stage:
    """A state in which a second kind of worker owns the items, claiming them in place.

    Only workers whose id starts with ``worker_prefix`` claim here, and only items whose
    ``ready_column`` is set; ``tries_column`` counts their failed tries for ``defer``'s backoff.
    Column names come from this module, never from callers.
    """

    state: str
    worker_prefix: str
    ready_column: str
    tries_column: str


@dataclass(frozen=True)
class QueueSpec:
    """The states of one work-item table and how its queue moves through them."""

    table: str
    states: tuple[str, ...]
    claimed_state: str
    in_progress_states: tuple[str, ...]
    columns: frozenset[str]
    stages: tuple[Stage, ...] = ()
    # Counts the items' worker crashes (``claim(max_crashes=…)``, ``record_crash``), if set.
    crash_column: str | None = None
    # A column set while a claimed item no longer counts against ``claim(in_progress_cap=…)``
    # (a study handed on after its fetch, ``mark_off_cap``); every claim clears it.
    off_cap_column: str | None = None


# Columns ``complete`` may set (state and lease columns are managed by this module).
_COMMON_COLUMNS = frozenset(
    {
        "project",
        "extract_id",
        "procedure_occurrence_id",
        "mrn",
        "accession_number",
        "study_datetime",
        "last_error_code",
        "exported_at",
        "claimed_by",
        "attempts",
        "next_attempt_at",
    }
)

QUEUES: dict[str, QueueSpec] = {
    "study": QueueSpec(
        table="study",
        states=STUDY_STATES,
        claimed_state="fetching",
        # orthanc-raw only ever reclaims what it was fetching: 'anonymising' is a stage.
        in_progress_states=("fetching",),
        columns=_COMMON_COLUMNS
        | {
            "study_uid",
            "pseudo_study_uid",
            "instances_sent",
            "instance_count",
            "sha256",
            "zip_bytes",
            "source_archive",
            "awaiting_archive",
        },
        # orthanc-anon's exporter (pixl_imaging.export) takes a study over once orthanc-raw
        # has handed every instance on and recorded how many.
        stages=(
            Stage(
                state="anonymising",
                worker_prefix="anon:",
                ready_column="instances_sent",
                tries_column="export_attempts",
            ),
        ),
        crash_column="crash_count",
        off_cap_column="fetched_at",
    ),
    "report": QueueSpec(
        table="report",
        states=REPORT_STATES,
        claimed_state="fetching",
        in_progress_states=("fetching", "deidentifying"),
        columns=_COMMON_COLUMNS
        | frozenset(
            {
                "study_id",
                "deidentified_text",
                "released_text",
                "check_flagged",
                "check_findings",
                "checked_at",
                "reviewed_by",
                "reviewed_at",
            }
        ),
    ),
}

DEFAULT_LEASE_SECONDS = 300.0
_ERROR_CODE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class WorkItem:
    """A claimed row. Identifiers are left out of ``repr`` so that logging an item leaks none."""

    table: str
    id: int
    project: str
    state: str
    attempts: int
    claimed_by: str | None
    claimed_until: datetime | None
    procedure_occurrence_id: int | None
    study_datetime: datetime | None
    mrn: str = field(repr=False)
    accession_number: str = field(repr=False)
    row: Mapping[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_row(cls, table: str, row: Mapping[str, Any]) -> WorkItem:
        return cls(
            table=table,
            id=row["id"],
            project=row["project"],
            state=row["state"],
            attempts=row["attempts"],
            claimed_by=row["claimed_by"],
            claimed_until=row["claimed_until"],
            procedure_occurrence_id=row["procedure_occurrence_id"],
            study_datetime=row["study_datetime"],
            mrn=row["mrn"],
            accession_number=row["accession_number"],
            row=dict(row),
        )


def _spec(table: str) -> QueueSpec:
    try:
        return QUEUES[table]
    except KeyError:
        raise ValueError(f"no work queue named {table!r}: use one of {sorted(QUEUES)}") from None


def _check_state(spec: QueueSpec, state: str) -> None:
    if state not in spec.states:
        raise ValueError(f"{state!r} is not a {spec.table} state: use one of {spec.states}")


def _stage(spec: QueueSpec, state: str) -> Stage:
    for stage in spec.stages:
        if stage.state == state:
            return stage
    names = [stage.state for stage in spec.stages] or "none"
    raise ValueError(f"{state!r} is not a stage of the {spec.table} queue: use one of {names}")


def check_error_code(error_code: str) -> None:
    """Refuse anything but a short lowercase code (``PixlError.code``) before it is stored."""
    if not _ERROR_CODE.match(error_code):
        # The code itself is not echoed: if it is malformed it may be an identifier.
        raise ValueError("error codes are short lowercase words like 'vna_timeout'")


def _backoff(tries: sql.Composable) -> sql.Composable:
    """The one backoff: ``%(base)s * 2 ** tries`` seconds, capped at ``%(cap)s`` (an interval).

    The exponent is capped too, so a counter that grows for days never overflows.
    """
    return sql.SQL(
        "make_interval(secs => LEAST(%(cap)s, %(base)s * power(2, LEAST(GREATEST({n}, 0), 16))))"
    ).format(n=tries)


def _claim_rows(
    cur: cursor,
    spec: QueueSpec,
    claimable: sql.Composable,
    order: sql.Composable,
    changes: sql.Composable,
    params: dict[str, Any],
) -> list[WorkItem]:
    """The one claim statement, run on ``cur`` (a ``RealDictCursor`` in the caller's
    transaction): lock up to ``%(limit)s`` claimable rows that no other transaction holds (SKIP
    LOCKED), apply ``changes`` and take them for ``%(worker_id)s`` with a lease of
    ``%(lease)s`` seconds."""
    statement = sql.SQL(
        """
        WITH picked AS (
            SELECT id FROM {t}
            WHERE {claimable}
            ORDER BY {order}
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
        )
        UPDATE {t} AS w
        SET {changes}
            claimed_by = %(worker_id)s,
            claimed_until = now() + make_interval(secs => %(lease)s)
        FROM picked
        WHERE w.id = picked.id
        RETURNING w.*
        """
    ).format(t=sql.Identifier(spec.table), claimable=claimable, order=order, changes=changes)
    cur.execute(statement, params)
    return sorted(
        (WorkItem.from_row(spec.table, row) for row in cur.fetchall()), key=lambda i: i.id
    )


def claim(
    conn: Connection,
    table: str,
    worker_id: str,
    limit: int,
    lease_seconds: float,
    project: str | None = None,
    *,
    max_attempts: int | None = None,
    max_crashes: int | None = None,
    held: Collection[int] = (),
    exclude_projects: Collection[str] = (),
    exclude_awaiting: Collection[str] = (),
    in_progress_cap: int | None = None,
    project_rates: Mapping[str, FetchRate] | None = None,
) -> list[WorkItem]:
    """Claim up to ``limit`` items for ``worker_id``, highest ``priority`` first and then oldest
    due, and move them to the
    claimed state with a lease of ``lease_seconds``.

    Claimable: ``queued`` items whose ``next_attempt_at`` has come, and in-progress items whose
    lease has expired. With ``max_attempts``, an expired item that has already been claimed that
    many times is marked ``failed`` (``lease_expired``) instead of claimed again, so an item that
    kills its worker cannot cycle for ever. With ``max_crashes`` (tables with a crash column),
    an expired lease counts as a crash of the worker that held it: the item goes back to
    ``queued``, or ends ``failed`` (``worker_crashed``) at ``max_crashes`` crashes or
    ``max_attempts`` claims.

    ``held`` names the items ``worker_id`` is still working on (its heartbeat's): they are never
    taken back from it, even if their lease ran out while Postgres was away; and an expired
    lease of ``worker_id``'s own is no crash (the worker is alive: it is claiming). Items of
    ``exclude_projects`` are not claimed (projects the operator holds back), nor studies
    waiting for an archive named in ``exclude_awaiting`` (outside its hours, or at its rate).

    ``in_progress_cap`` bounds the items in progress under a live lease *of every worker
    together* (the in-flight limit shared by orthanc-raw replicas): claims of the table are
    serialised on a transaction-level advisory lock, so two workers cannot both read the same
    count and both claim; each sees the other's committed claims. Items marked off the cap
    (``mark_off_cap``: studies fetched and being handed on) do not count, on this limit or on
    a project's own.

    ``project_rates`` are the limits of projects that have their own (``pixl rate --project``;
    the study queue), also of every worker together: such a project is claimed only while its
    start slot (``fetch_rate_slot``, ``rate_slot``) has come and fewer than its
    ``max_in_flight`` are in progress under a live lease, and claiming one of its items takes
    the slot, in the same transaction and under the same lock as ``in_progress_cap``. Items
    are then claimed one at a time, each seeing the slots and counts the one before changed.
    """
    spec = _spec(table)
    if limit <= 0:
        return []
    own = dict(project_rates or {})
    in_progress = tuple(spec.in_progress_states)
    awaiting = (
        sql.SQL("AND (awaiting_archive IS NULL OR NOT awaiting_archive = ANY(%(awaiting)s)) ")
        if exclude_awaiting
        else sql.SQL("")
    )
    with conn, conn.cursor(cursor_factory=RealDictCursor) as cur:
        if in_progress_cap is not None or own:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"pixl-claim:{spec.table}",))
        if in_progress_cap is not None:
            limit = min(limit, in_progress_cap - _count_on_cap(cur, spec))
            if limit <= 0:
                return []
        if max_crashes is not None and spec.crash_column is not None:
            _count_crashes(cur, spec, in_progress, project, max_crashes, max_attempts, worker_id)
        elif max_attempts is not None:
            cur.execute(
                sql.SQL(
                    "UPDATE {t} SET state = 'failed', last_error_code = 'lease_expired', "
                    "claimed_by = NULL, claimed_until = NULL "
                    "WHERE state IN %(in_progress)s AND claimed_until < now() "
                    "AND attempts >= %(max_attempts)s "
                    "AND NOT (claimed_by = %(worker_id)s AND id = ANY(%(held)s)) "
                    "AND (%(project)s::text IS NULL OR project = %(project)s)"
                ).format(t=sql.Identifier(spec.table)),
                {
                    "in_progress": in_progress,
                    "max_attempts": max_attempts,
                    "project": project,
                    "worker_id": worker_id,
                    "held": sorted(held),
                },
            )
        claimable = sql.SQL(
            "((state = 'queued' AND next_attempt_at <= now()) "
            "OR (state IN %(in_progress)s AND claimed_until < now() "
            "AND NOT (claimed_by = %(worker_id)s AND id = ANY(%(held)s)))) "
            "AND NOT (project = ANY(%(excluded)s)) {awaiting}"
            "AND (%(project)s::text IS NULL OR project = %(project)s)"
        ).format(awaiting=awaiting)
        # Higher priority first (pixl populate --priority), then the oldest due.
        order = sql.SQL("priority DESC, next_attempt_at, id")
        changes = sql.SQL("state = %(claimed_state)s, attempts = w.attempts + 1, {off_cap}").format(
            off_cap=sql.SQL("{} = NULL,").format(sql.Identifier(spec.off_cap_column))
            if spec.off_cap_column
            else sql.SQL("")
        )
        params = {
            "in_progress": in_progress,
            "project": project,
            "limit": limit,
            "claimed_state": spec.claimed_state,
            "worker_id": worker_id,
            "held": sorted(held),
            "excluded": sorted(exclude_projects),
            "awaiting": sorted(exclude_awaiting),
            "lease": float(lease_seconds),
        }
        if not own:
            return _claim_rows(cur, spec, claimable, order, changes, params)
        claimed: list[WorkItem] = []
        for _ in range(limit):
            at_limit = _at_own_limits(conn, spec, in_progress, own)
            params.update(limit=1, excluded=sorted(set(exclude_projects) | at_limit))
            items = _claim_rows(cur, spec, claimable, order, changes, params)
            if not items:
                break
            rate = own.get(items[0].project)
            if rate is not None:
                with conn.cursor() as plain:
                    rate_slot.advance(plain, items[0].project, 1.0 / rate.studies_per_second)
            claimed.extend(items)
        return sorted(claimed, key=lambda i: i.id)


def _at_own_limits(
    conn: Connection, spec: QueueSpec, in_progress: tuple[str, ...], own: Mapping[str, FetchRate]
) -> set[str]:
    """Of the projects with limits of their own, those that may not be claimed now (in the
    claim's transaction): their start slot has not come (``rate_slot.due_locked``, which keeps
    the rows locked until the claim commits), or as many of their items are in progress under
    a live lease, by any worker, as their ``max_in_flight``."""
    with conn.cursor() as cur:
        due = rate_slot.due_locked(cur, own)
        cur.execute(
            sql.SQL(
                "SELECT project, count(*) FROM {t} WHERE state IN %s AND claimed_until > now() "
                "{off_cap} AND project = ANY(%s) GROUP BY project"
            ).format(t=sql.Identifier(spec.table), off_cap=_counted_on_cap(spec)),
            (in_progress, sorted(own)),
        )
        busy = dict(cur.fetchall())
    return {
        name
        for name, rate in own.items()
        if name not in due or busy.get(name, 0) >= rate.max_in_flight
    }


def _counted_on_cap(spec: QueueSpec) -> sql.Composable:
    """The condition, after ``WHERE … AND``, that an in-progress item counts on the cap."""
    if spec.off_cap_column is None:
        return sql.SQL("")
    return sql.SQL("AND {} IS NULL").format(sql.Identifier(spec.off_cap_column))


def in_progress_on_cap(conn: Connection, table: str) -> int:
    """Items in progress under a live lease that count on ``claim(in_progress_cap=…)``, of
    every worker together (for waiting before a claim; the claim itself counts under a lock)."""
    with conn, conn.cursor(cursor_factory=RealDictCursor) as cur:
        return _count_on_cap(cur, _spec(table))


def _count_on_cap(cur: cursor, spec: QueueSpec) -> int:
    """The count behind ``in_progress_on_cap``, on ``cur`` (a ``RealDictCursor``)."""
    cur.execute(
        sql.SQL(
            "SELECT count(*) AS n FROM {t} WHERE state IN %(in_progress)s "
            "AND claimed_until > now() {off_cap}"
        ).format(t=sql.Identifier(spec.table), off_cap=_counted_on_cap(spec)),
        {"in_progress": tuple(spec.in_progress_states)},
    )
    return int(cur.fetchone()["n"])


def mark_off_cap(conn: Connection, table: str, item_id: int, worker_id: str) -> bool:
    """Stop counting ``worker_id``'s claimed item on the in-progress cap (a study fetched and
    now being handed on); False if the item is no longer its claim."""
    spec = _spec(table)
    if spec.off_cap_column is None:
        raise ValueError(f"{spec.table} has no off-cap column")
    with conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "UPDATE {t} SET {c} = now() WHERE id = %s AND claimed_by = %s AND state = %s"
            ).format(t=sql.Identifier(spec.table), c=sql.Identifier(spec.off_cap_column)),
            (item_id, worker_id, spec.claimed_state),
        )
        return cur.rowcount == 1


def _count_crashes(
    cur: cursor,
    spec: QueueSpec,
    in_progress: tuple[str, ...],
    project: str | None,
    max_crashes: int,
    max_attempts: int | None,
    worker_id: str,
) -> None:
    """Count a crash on every in-progress item whose lease ran out under another worker, and
    requeue or fail it (in the claim's transaction, so an expired item is counted once, by one
    claimer)."""
    assert spec.crash_column is not None
    cur.execute(
        sql.SQL(
            "UPDATE {t} SET {c} = {c} + 1, "
            "state = CASE WHEN {c} + 1 >= %(max_crashes)s OR attempts >= %(max_attempts)s "
            "THEN 'failed' ELSE 'queued' END, "
            "last_error_code = 'worker_crashed', claimed_by = NULL, claimed_until = NULL "
            "WHERE state IN %(in_progress)s AND claimed_until < now() "
            "AND claimed_by IS DISTINCT FROM %(worker_id)s "
            "AND (%(project)s::text IS NULL OR project = %(project)s)"
        ).format(t=sql.Identifier(spec.table), c=sql.Identifier(spec.crash_column)),
        {
            "in_progress": in_progress,
            "max_crashes": max_crashes,
            "max_attempts": max_attempts if max_attempts is not None else 2**31 - 1,
            "project": project,
            "worker_id": worker_id,
        },
    )


def claim_stage(
    conn: Connection,
    table: str,
    state: str,
    worker_id: str,
    limit: int,
    lease_seconds: float,
    project: str | None = None,
    *,
    held: Collection[int] = (),
    exclude_projects: Collection[str] = (),
) -> list[WorkItem]:
    """Claim up to ``limit`` items of a stage for ``worker_id`` (least recently changed first)
    with a lease of ``lease_seconds``, leaving their state as it is.

    Claimable: items in ``state`` whose ready column is set and which no live worker of the
    stage holds (unclaimed, claimed by a worker of another kind, or with an expired lease, which
    is also how a ``defer``red item comes due). ``attempts`` is not touched: it counts the
    queue's claims, and the stage counts its own tries. ``held`` and ``exclude_projects`` are
    as for ``claim``.
    """
    spec = _spec(table)
    stage = _stage(spec, state)
    if not worker_id.startswith(stage.worker_prefix):
        raise ValueError(
            f"only workers named {stage.worker_prefix}… claim {spec.table} items in {state!r}"
        )
    if limit <= 0:
        return []
    with conn, conn.cursor(cursor_factory=RealDictCursor) as cur:
        return _claim_rows(
            cur,
            spec,
            claimable=sql.SQL(
                "state = %(state)s AND {ready} IS NOT NULL "
                "AND (claimed_by IS NULL OR claimed_by NOT LIKE %(prefix)s "
                "OR claimed_until < now()) "
                "AND NOT (claimed_by = %(worker_id)s AND id = ANY(%(held)s)) "
                "AND NOT (project = ANY(%(excluded)s)) "
                "AND (%(project)s::text IS NULL OR project = %(project)s)"
            ).format(ready=sql.Identifier(stage.ready_column)),
            order=sql.SQL("updated_at, id"),
            changes=sql.SQL(""),
            params={
                "state": stage.state,
                "prefix": stage.worker_prefix + "%",
                "project": project,
                "limit": limit,
                "worker_id": worker_id,
                "held": sorted(held),
                "excluded": sorted(exclude_projects),
                "lease": float(lease_seconds),
            },
        )


def renew(
    conn: Connection,
    table: str,
    item_id: int,
    worker_id: str,
    lease_seconds: float,
    *,
    state: str | None = None,
) -> bool:
    """Extend the lease of an item this worker still holds; False if it no longer holds it.

    ``state`` names the stage the item is held in (``claim_stage``); by default the item must
    be in one of the queue's in-progress states.
    """
    return renew_held(conn, table, (item_id,), worker_id, lease_seconds, state=state) == 1


def renew_held(
    conn: Connection,
    table: str,
    item_ids: Collection[int],
    worker_id: str,
    lease_seconds: float,
    *,
    state: str | None = None,
) -> int:
    """``renew`` for several items at once (the heartbeat); return how many were renewed."""
    spec = _spec(table)
    states = (_stage(spec, state).state,) if state is not None else tuple(spec.in_progress_states)
    with conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "UPDATE {t} SET claimed_until = now() + make_interval(secs => %s) "
                "WHERE id = ANY(%s) AND claimed_by = %s AND state IN %s"
            ).format(t=sql.Identifier(spec.table)),
            (float(lease_seconds), sorted(item_ids), worker_id, states),
        )
        return cur.rowcount


def _value(value: Any) -> Any:
    return Json(value) if isinstance(value, dict | list) else value


def complete(
    conn: Connection,
    table: str,
    item_id: int,
    new_state: str,
    expected_state: str,
    *,
    lease_seconds: float | None = None,
    **fields: Any,
) -> bool:
    """Move an item from ``expected_state`` to ``new_state``, setting ``fields``; True if applied.

    One ``UPDATE … WHERE id AND state`` statement: if the item is not in ``expected_state`` any
    more nothing changes and this returns False. Moving into another in-progress state keeps the
    claim and renews the lease (``lease_seconds``, default 5 minutes); any other state releases
    the claim. ``exported_at`` is set to now on reaching ``exported`` unless given. Lists and
    dicts (e.g. ``check_findings``) are stored as JSON.
    """
    spec = _spec(table)
    _check_state(spec, new_state)
    _check_state(spec, expected_state)
    unknown = set(fields) - spec.columns
    if unknown:
        raise ValueError(f"{spec.table} has no settable columns {sorted(unknown)}")
    if "last_error_code" in fields and fields["last_error_code"] is not None:
        check_error_code(fields["last_error_code"])

    assignments = [sql.SQL("state = %(new_state)s")]
    params: dict[str, Any] = {"new_state": new_state, "id": item_id, "expected": expected_state}
    if new_state in spec.in_progress_states:
        assignments.append(sql.SQL("claimed_until = now() + make_interval(secs => %(lease)s)"))
        params["lease"] = float(lease_seconds or DEFAULT_LEASE_SECONDS)
    else:
        fields = {"claimed_by": None, "claimed_until": None, **fields}
    if new_state == "exported" and "exported_at" not in fields:
        assignments.append(sql.SQL("exported_at = now()"))
    for name, value in fields.items():
        key = f"f_{name}"
        assignments.append(sql.SQL("{} = {}").format(sql.Identifier(name), sql.Placeholder(key)))
        params[key] = _value(value)
    statement = sql.SQL("UPDATE {t} SET {a} WHERE id = %(id)s AND state = %(expected)s").format(
        t=sql.Identifier(spec.table), a=sql.SQL(", ").join(assignments)
    )
    with conn, conn.cursor() as cur:
        cur.execute(statement, params)
        return cur.rowcount == 1


def fail(
    conn: Connection,
    table: str,
    item_id: int,
    error_code: str,
    max_attempts: int,
    backoff_base_seconds: float,
    *,
    max_backoff_seconds: float = 3600.0,
) -> str | None:
    """Record a failed try of an in-progress item; return its new state, or None if not applied.

    Below ``max_attempts`` claims the item goes back to ``queued``, due after
    ``backoff_base_seconds * 2 ** (attempts - 1)`` (capped at ``max_backoff_seconds``); at the
    limit it becomes ``failed``. Either way ``last_error_code`` is set and the claim released.
    An item that is not in progress (already failed, completed, or re-queued by an earlier try
    of this call) is left alone.
    """
    spec = _spec(table)
    check_error_code(error_code)
    with conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                """
                UPDATE {t}
                SET state = CASE WHEN attempts >= %(max)s THEN 'failed' ELSE 'queued' END,
                    next_attempt_at = CASE WHEN attempts >= %(max)s THEN next_attempt_at
                        ELSE now() + {delay}
                        END,
                    last_error_code = %(code)s,
                    claimed_by = NULL,
                    claimed_until = NULL
                WHERE id = %(id)s AND state IN %(in_progress)s
                RETURNING state
                """
            ).format(t=sql.Identifier(spec.table), delay=_backoff(sql.SQL("attempts - 1"))),
            {
                "max": max_attempts,
                "cap": float(max_backoff_seconds),
                "base": float(backoff_base_seconds),
                "code": error_code,
                "id": item_id,
                "in_progress": tuple(spec.in_progress_states),
            },
        )
        row = cur.fetchone()
    return row[0] if row else None


def release(
    conn: Connection,
    table: str,
    item_id: int,
    worker_id: str,
    error_code: str,
    *,
    awaiting_archive: str | None = None,
) -> bool:
    """Give an in-progress item this worker holds back to the queue, due now, with its claim
    not counted (``attempts`` down by one); True if applied.

    For work that could not even be tried because something every item needs is away (the
    VNA does not answer a C-ECHO): the item is not at fault, so it must not use up its tries
    however long the outage lasts. ``last_error_code`` says why it waits.

    ``awaiting_archive`` (studies): the item waits for that archive (the primary had no such
    study and the secondary may not be asked now); ``claim(exclude_awaiting=…)`` leaves it
    queued until it may.
    """
    spec = _spec(table)
    check_error_code(error_code)
    awaiting = sql.SQL(", awaiting_archive = %(archive)s") if awaiting_archive else sql.SQL("")
    with conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "UPDATE {t} SET state = 'queued', attempts = GREATEST(attempts - 1, 0), "
                "next_attempt_at = now(), last_error_code = %(code)s, "
                "claimed_by = NULL, claimed_until = NULL{awaiting} "
                "WHERE id = %(id)s AND claimed_by = %(worker)s AND state IN %(states)s"
            ).format(t=sql.Identifier(spec.table), awaiting=awaiting),
            {
                "code": error_code,
                "id": item_id,
                "worker": worker_id,
                "states": tuple(spec.in_progress_states),
                "archive": awaiting_archive,
            },
        )
        return cur.rowcount == 1


def record_crash(
    conn: Connection,
    table: str,
    item_id: int,
    max_crashes: int,
    backoff_base_seconds: float,
    *,
    max_backoff_seconds: float = 3600.0,
) -> str | None:
    """Record that working on an in-progress item crashed a worker (this one saw another die
    under it); return the item's new state, or None if not applied.

    Like ``fail``, with the crash counted: below ``max_crashes`` the item goes back to
    ``queued`` with backoff, at ``max_crashes`` it ends ``failed``; ``last_error_code`` is
    ``worker_crashed`` either way.
    """
    spec = _spec(table)
    if spec.crash_column is None:
        raise ValueError(f"{spec.table} items do not count crashes")
    with conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                """
                UPDATE {t}
                SET {c} = {c} + 1,
                    state = CASE WHEN {c} + 1 >= %(max)s THEN 'failed' ELSE 'queued' END,
                    next_attempt_at = CASE WHEN {c} + 1 >= %(max)s THEN next_attempt_at
                        ELSE now() + {delay}
                        END,
                    last_error_code = 'worker_crashed',
                    claimed_by = NULL,
                    claimed_until = NULL
                WHERE id = %(id)s AND state IN %(in_progress)s
                RETURNING state
                """
            ).format(
                t=sql.Identifier(spec.table),
                c=sql.Identifier(spec.crash_column),
                delay=_backoff(sql.SQL("attempts - 1")),
            ),
            {
                "max": max_crashes,
                "cap": float(max_backoff_seconds),
                "base": float(backoff_base_seconds),
                "id": item_id,
                "in_progress": tuple(spec.in_progress_states),
            },
        )
        row = cur.fetchone()
    return row[0] if row else None


def defer(
    conn: Connection,
    table: str,
    state: str,
    item_id: int,
    worker_id: str,
    error_code: str,
    backoff_base_seconds: float,
    *,
    max_backoff_seconds: float = 3600.0,
) -> float | None:
    """Record a failed try of an item this worker holds in a stage; return the seconds until
    it is due again, or None if the worker no longer holds it.

    The item stays in its state, ``last_error_code`` is set and the stage's try counter grows;
    the lease is the wait: it runs for ``backoff_base_seconds * 2 ** tries`` (tries before this
    one, capped at ``max_backoff_seconds``), after which any worker of the stage may claim it.
    """
    spec = _spec(table)
    stage = _stage(spec, state)
    check_error_code(error_code)
    tries = sql.Identifier(stage.tries_column)
    with conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                """
                UPDATE {t}
                SET claimed_until = now() + {delay},
                    {tries} = {tries} + 1,
                    last_error_code = %(code)s
                WHERE id = %(id)s AND state = %(state)s AND claimed_by = %(worker_id)s
                RETURNING extract(epoch FROM claimed_until - now())::float8
                """
            ).format(t=sql.Identifier(spec.table), delay=_backoff(tries), tries=tries),
            {
                "cap": float(max_backoff_seconds),
                "base": float(backoff_base_seconds),
                "code": error_code,
                "id": item_id,
                "state": stage.state,
                "worker_id": worker_id,
            },
        )
        row = cur.fetchone()
    return float(row[0]) if row else None


def end_deferrals(
    conn: Connection, table: str, state: str, project: str, lease_seconds: float
) -> int:
    """Make a project's deferred items of a stage due now; return how many.

    For when what they waited for is back (the destination answers again), so a backoff that
    grew during a long outage does not outlast it. Only waits longer than a lease are cut: an
    item some worker is working on right now has at most a lease ahead of it, so it is never
    handed to a second worker by this.
    """
    spec = _spec(table)
    stage = _stage(spec, state)
    with conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "UPDATE {t} SET claimed_until = now() "
                "WHERE state = %s AND project = %s AND claimed_by LIKE %s "
                "AND claimed_until > now() + make_interval(secs => %s)"
            ).format(t=sql.Identifier(spec.table)),
            (stage.state, project, stage.worker_prefix + "%", float(lease_seconds)),
        )
        return cur.rowcount


def requeue(
    conn: Connection, table: str, state: str, item_id: int, worker_id: str, error_code: str
) -> bool:
    """Send an item this worker holds in a stage back to ``queued``, due now; True if applied.

    For a stage that finds its input incomplete (instances handed over that never arrived):
    the queue's first step runs again. ``attempts`` is left as it is.
    """
    spec = _spec(table)
    stage = _stage(spec, state)
    check_error_code(error_code)
    with conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "UPDATE {t} SET state = 'queued', claimed_by = NULL, claimed_until = NULL, "
                "next_attempt_at = now(), last_error_code = %s "
                "WHERE id = %s AND state = %s AND claimed_by = %s"
            ).format(t=sql.Identifier(spec.table)),
            (error_code, item_id, stage.state, worker_id),
        )
        return cur.rowcount == 1


def state_of(conn: Connection, table: str, item_id: int) -> str | None:
    """The item's current state, or None if there is no such item."""
    spec = _spec(table)
    with conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT state FROM {t} WHERE id = %s").format(t=sql.Identifier(spec.table)),
            (item_id,),
        )
        row = cur.fetchone()
    return row[0] if row else None


def counts_by_state(
    conn: Connection, project: str | None = None, table: str = "study"
) -> dict[str, dict[str, int]]:
    """Per project, the number of items in each state (every state listed, zeros included).

    This is what ``pixl status --json`` prints. With ``project``, only that project is listed,
    even when it has no items yet.
    """
    spec = _spec(table)
    with conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "SELECT project, state, count(*) FROM {t} "
                "WHERE %(project)s::text IS NULL OR project = %(project)s "
                "GROUP BY project, state ORDER BY project"
            ).format(t=sql.Identifier(spec.table)),
            {"project": project},
        )
        rows = cur.fetchall()
    counts: dict[str, dict[str, int]] = {}
    if project is not None:
        counts[project] = dict.fromkeys(spec.states, 0)
    for row_project, state, count in rows:
        counts.setdefault(row_project, dict.fromkeys(spec.states, 0))[state] = count
    return counts


@dataclass(frozen=True)
class FetchRate:
    """How fast orthanc-raw may ask the VNA for one project's studies."""

    studies_per_second: float
    max_in_flight: int


def get_fetch_rate(conn: Connection, project: str) -> FetchRate:
    """The project's own rate, else the global ('*') one: what ``pixl rate`` shows. (The fetch
    worker reads them all with ``fetch_rates`` on every round, so a change applies while it
    runs.)"""
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT studies_per_second, max_in_flight FROM fetch_rate "
            "WHERE project IN (%s, '*') ORDER BY project = '*' LIMIT 1",
            (project,),
        )
        row = cur.fetchone()
    if row is None:
        return FetchRate(studies_per_second=1.0, max_in_flight=1)
    return FetchRate(studies_per_second=row[0], max_in_flight=row[1])


def fetch_rates(conn: Connection) -> dict[str, FetchRate]:
    """Every stored rate: ``'*'`` (the limit on all of orthanc-raw's asking together) and the
    projects that have one of their own."""
    with conn, conn.cursor() as cur:
        cur.execute("SELECT project, studies_per_second, max_in_flight FROM fetch_rate")
        return {
            project: FetchRate(studies_per_second=rate, max_in_flight=in_flight)
            for project, rate, in_flight in cur.fetchall()
        }


def set_fetch_rate(
    conn: Connection, project: str, studies_per_second: float, max_in_flight: int
) -> None:
    """Set the rate of one project, or of every project without its own with ``project='*'``."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO fetch_rate (project, studies_per_second, max_in_flight) "
            "VALUES (%s, %s, %s) ON CONFLICT (project) DO UPDATE SET "
            "studies_per_second = EXCLUDED.studies_per_second, "
            "max_in_flight = EXCLUDED.max_in_flight, updated_at = now()",
            (project, studies_per_second, max_in_flight),
        )


def requeue_failed(conn: Connection, table: str, project: str) -> int:
    """Give a project's failed items a fresh start (attempts and crashes reset); returns how
    many."""
    spec = _spec(table)
    crashes = (
        sql.SQL("{} = 0, ").format(sql.Identifier(spec.crash_column))
        if spec.crash_column
        else sql.SQL("")
    )
    with conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "UPDATE {t} SET state = 'queued', attempts = 0, {crashes}next_attempt_at = now(), "
                "claimed_by = NULL, claimed_until = NULL "
                "WHERE project = %s AND state = 'failed'"
            ).format(t=sql.Identifier(spec.table), crashes=crashes),
            (project,),
        )
        return cur.rowcount
