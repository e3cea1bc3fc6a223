"""Connecting to PIXL's Postgres and bringing its schema up to date.

Postgres holds all work state, so every process (CLI, Orthanc plugins, EHR module) connects
through ``connect`` and calls ``migrate`` at start-up. Schema changes are numbered SQL files in
``pixl_core/migrations/`` (``0001_initial.sql``, ``0002_….sql``), applied in order, each in its
own transaction and recorded in ``schema_migrations``. Several processes may start at once:
each migration runs under a transaction-scoped advisory lock, so exactly one of them applies it
and the others see it recorded. An applied file must never change (its checksum is recorded):
add a new file instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psycopg2
import psycopg2.errors
import psycopg2.extensions

from pixl_core.errors import DatabaseUnreachableError, PixlConfigError

DB_URL_ENV = "PIXL_DB_URL"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any constant works; it only has to be the same in every process that migrates.
_MIGRATION_LOCK_KEY = 0x7069786C  # "pixl"
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

Connection = psycopg2.extensions.connection
# What a worker meets when the database goes away (as opposed to a bad statement).
DATABASE_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError, DatabaseUnreachableError)
T = TypeVar("T")


def database_url() -> str:
    """The database URL from ``PIXL_DB_URL``, or refuse with a one-line fix."""
    url = os.environ.get(DB_URL_ENV, "").strip()
    if not url:
        raise PixlConfigError(
            f"{DB_URL_ENV} is not set: export the libpq URL of PIXL's database, e.g. "
            f"{DB_URL_ENV}=postgresql://pixl@127.0.0.1:5433/pixl "
            "(`python -m stack.postgres start` prints one)"
        )
    return url


def connect(url: str | None = None, *, application_name: str = "pixl") -> Connection:
    """Open a connection (autocommit off) to ``url`` or to ``PIXL_DB_URL``.

    A server that cannot be reached is reported in one line without the URL, which may hold a
    password.
    """
    url = url or database_url()
    try:
        return psycopg2.connect(url, application_name=application_name, connect_timeout=10)
    except psycopg2.OperationalError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else "unreachable"
        raise DatabaseUnreachableError(
            f"cannot connect to PIXL's database ({reason}): check {DB_URL_ENV} and that the "
            "server is running"
        ) from None


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files in version order; a badly named or duplicated number is refused."""
    migrations: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise PixlConfigError(
                f"migration {path.name} is badly named: use NNNN_lowercase_words.sql"
            )
        version = int(match.group(1))
        if version in migrations:
            raise PixlConfigError(
                f"migrations {migrations[version].name} and {path.name} share number {version}: "
                "renumber the newer one"
            )
        migrations[version] = Migration(version, path.name, path.read_text())
    return [migrations[v] for v in sorted(migrations)]


_CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def migrate(url: str | None = None, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply the migrations not yet applied; return the names of those applied now.

    Idempotent, and safe when several processes migrate the same database at once.
    """
    applied_now: list[str] = []
    migrations = available_migrations(directory)
    conn = connect(url, application_name="pixl-migrate")
    try:
        if _all_applied(conn, migrations):
            return applied_now
        for migration in migrations:
            with conn, conn.cursor() as cur:
                # Serialises the check-then-apply below across processes; released at commit.
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
                cur.execute(_CREATE_MIGRATIONS_TABLE)
                cur.execute(
                    "SELECT checksum FROM schema_migrations WHERE version = %s",
                    (migration.version,),
                )
                row = cur.fetchone()
                if row is not None:
                    if row[0] != migration.checksum:
                        raise PixlConfigError(
                            f"migration {migration.name} changed after it was applied: restore "
                            "it and put the change in a new numbered migration"
                        )
                    continue
                cur.execute(migration.sql)
                cur.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, migration.checksum),
                )
                applied_now.append(migration.name)
    finally:
        conn.close()
    return applied_now


def _all_applied(conn: Connection, migrations: list[Migration]) -> bool:
    """Whether every migration is recorded with its checksum, read in one query without the
    lock: the common case (every `pixl` command migrates first) then costs one round trip
    instead of a locked transaction per migration. Anything else (a table not there yet, a
    migration missing or changed) takes the locked path, which applies or refuses as before."""
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT version, checksum FROM schema_migrations")
            recorded = dict(cur.fetchall())
    except psycopg2.errors.UndefinedTable:
        return False
    return all(recorded.get(m.version) == m.checksum for m in migrations)


def migrate_when_ready(url: str, stop: threading.Event, logger: logging.Logger) -> bool:
    """Bring the schema up to date, waiting for Postgres if it is not up yet.

    Services (the Orthanc plugins, the EHR module) may start before Postgres; they call this
    first. Returns False if ``stop`` was set before the database answered.
    """
    while not stop.is_set():
        try:
            migrate(url)
            return True
        except Exception as exc:
            logger.warning("database not ready (%s); retrying", type(exc).__name__)
            stop.wait(2)
    return False


class ThreadConnections:
    """One connection per thread, checked before each use and reopened after a failure.

    psycopg2 connections must not be shared between threads that run transactions at the same
    time; the workers run several threads (fetches in flight, export threads, Orthanc's
    callback threads), each with its own connection.

    After a Postgres restart every one of those connections is dead, but psycopg2 only notices
    when one is used, so each thread used to fail once on its own (fault F4). Two checks avoid
    that: ``get`` looks at an idle connection's socket without a round trip (an idle connection
    has nothing to read unless the server closed it or sent a termination notice) and reopens
    it if so; and ``reset``, called by whichever thread meets a database error first, makes
    every thread of this set reconnect on its next ``get``.
    """

    def __init__(self, url: str, application_name: str) -> None:
        self.url = url
        self.application_name = application_name
        self._local = threading.local()
        self._generation = 0

    def get(self) -> Connection:
        conn: Connection | None = getattr(self._local, "conn", None)
        stale = getattr(self._local, "generation", -1) != self._generation
        if conn is not None and (stale or conn.closed or not _idle_and_open(conn)):
            _close_quietly(conn)
            conn = None
        if conn is None:
            conn = connect(self.url, application_name=self.application_name)
            self._local.conn = conn
            self._local.generation = self._generation
        return conn

    def run(self, action: Callable[[Connection], T], retry_seconds: float) -> T:
        """Run one database step on this thread's connection, reconnecting through a Postgres
        restart for up to ``retry_seconds``: a worker that has reached an outcome records it
        rather than leaving it to a lease, and an answer that depends on the database waits for
        it rather than guessing."""
        return _through_restarts(lambda: action(self.get()), self.reset, retry_seconds)

    def reset(self) -> None:
        """Forget this thread's connection and have every other thread reconnect too (after a
        database error, which usually means the server went away for all of them)."""
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            _close_quietly(conn)
        self._generation += 1


class ConnectionPool:
    """Connections lent to whichever thread asks, for code that Orthanc calls on its own threads.

    ``ThreadConnections`` keeps one connection per Python thread, which does not hold for
    Orthanc's callbacks: the Python plugin gives each call a fresh thread state, so its
    ``threading.local`` is empty every time and each received instance opened (and, with
    scram-sha-256, authenticated) a Postgres connection of its own: about a third of
    orthanc-anon's time in the database and most of Postgres's CPU in the pipeline benchmark.
    Here a call borrows an idle connection (checked as ``ThreadConnections.get`` checks one),
    runs its step, and gives it back; at most ``max_idle`` wait between calls.
    """

    def __init__(self, url: str, application_name: str, max_idle: int = 8) -> None:
        self.url = url
        self.application_name = application_name
        self.max_idle = max_idle
        self._idle: list[tuple[Connection, int]] = []
        self._lock = threading.Lock()
        self._generation = 0

    def _borrow(self) -> tuple[Connection, int]:
        while True:
            with self._lock:
                if not self._idle:
                    generation = self._generation
                    break
                conn, generation = self._idle.pop()
            if generation == self._generation and not conn.closed and _idle_and_open(conn):
                return conn, generation
            _close_quietly(conn)
        return connect(self.url, application_name=self.application_name), generation

    def _give_back(self, conn: Connection, generation: int) -> None:
        if conn.get_transaction_status() != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
            try:  # a step that left a transaction open: the next borrower starts clean
                conn.rollback()
            except psycopg2.Error:
                _close_quietly(conn)
                return
        with self._lock:
            if generation == self._generation and len(self._idle) < self.max_idle:
                self._idle.append((conn, generation))
                return
        _close_quietly(conn)

    def run(self, action: Callable[[Connection], T], retry_seconds: float) -> T:
        """Run one database step on a borrowed connection, reconnecting through a Postgres
        restart for up to ``retry_seconds`` (as ``ThreadConnections.run``)."""
        return _through_restarts(lambda: self._lent(action), self.reset, retry_seconds)

    def _lent(self, action: Callable[[Connection], T]) -> T:
        """``action`` on a borrowed connection, given back after it; closed if it failed."""
        conn, generation = self._borrow()
        try:
            result = action(conn)
        except BaseException:
            _close_quietly(conn)
            raise
        self._give_back(conn, generation)
        return result

    def reset(self) -> None:
        """Close every idle connection; those lent out now are closed when given back."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._generation += 1
        for conn, _ in idle:
            _close_quietly(conn)


def _through_restarts(
    attempt: Callable[[], T], reset: Callable[[], None], retry_seconds: float
) -> T:
    """``attempt()``, tried again every second through database errors (after ``reset``) for up
    to ``retry_seconds``; the last error is raised after that."""
    deadline = time.monotonic() + retry_seconds
    while True:
        try:
            return attempt()
        except DATABASE_ERRORS:
            reset()
            if time.monotonic() >= deadline:
                raise
            time.sleep(1.0)


def _idle_and_open(conn: Connection) -> bool:
    """Whether an idle connection still looks usable: its socket has nothing to read (a server
    that shut down or was restarted has sent a notice or closed it). No round trip."""
    if conn.get_transaction_status() != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
        return conn.get_transaction_status() != psycopg2.extensions.TRANSACTION_STATUS_UNKNOWN
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError, psycopg2.InterfaceError):
        return False
    return not readable


def _close_quietly(conn: Connection) -> None:
    with contextlib.suppress(psycopg2.Error):
        conn.close()
