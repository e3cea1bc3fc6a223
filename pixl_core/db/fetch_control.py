"""Whether orthanc-raw may ask the VNA now: pausing and the VNA's hours, stored in Postgres.

Why in Postgres and not in a process: every orthanc-raw replica, the CLI (``pixl pause``,
``pixl resume``, ``pixl hours``, ``pixl status``) and the operator's page (``/pixl/ui/``) must
see the same answer, and a pause must survive a restart. The table is ``fetch_control``
(migration 0008): one row for ``'*'`` (all of orthanc-raw's asking) and one for each project
with settings of its own. A project may be asked for only when neither its own row nor ``'*'``
holds it back, like the rates of ``fetch_rate``.

A worker that is held back claims nothing: the queued studies stay queued and lose no try
(``Gate``). What holds a project back is said in words with the time it ends
(``Hold.describe``), for the CLI and the page alike.

A secondary archive (a PACS asked only when the VNA has no such study) has hours, a pause and
a rate of its own, in the same tables under the scope ``archive:<name>`` (``archive_scope``;
migration 0010): a slug cannot hold ``:``, so such a row is never a project's. ``gate`` leaves
them out of the projects; ``archive_gate`` reads one.

Hours are a daily window ``"HH:MM-HH:MM"`` in the local time of the machine running
orthanc-raw (set ``TZ``), which may run over midnight (``"20:00-07:00"``), plus, if
``weekends`` is set, all of Saturday and Sunday.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta

from pixl_core.db.connection import Connection
from pixl_core.errors import PixlConfigError

ALL = "*"
ARCHIVE_PREFIX = "archive:"
# A secondary archive's rate until one is stored (orthanc-raw may be given another default).
DEFAULT_ARCHIVE_STUDIES_PER_SECOND = 0.1
_WINDOW = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-3]):([0-5][0-9])$")
_WHO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}$")
HOURS_RULE = 'a window "HH:MM-HH:MM" in 24-hour local time, e.g. "20:00-07:00"'


@dataclass(frozen=True)
class HoursWindow:
    """The hours in which the VNA may be asked: ``start``-``end`` daily (over midnight when
    ``end <= start``), plus all weekend if ``weekends``."""

    start: time
    end: time
    weekends: bool = False

    @classmethod
    def parse(cls, text: str, weekends: bool = False) -> HoursWindow:
        match = _WINDOW.match(text.strip())
        if match is None:
            raise PixlConfigError(f"VNA hours must be {HOURS_RULE} (or `off`)")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if (h1, m1) == (h2, m2):
            raise PixlConfigError(
                "VNA hours must not start and end at the same minute: use `off` for any time"
            )
        return cls(time(h1, m1), time(h2, m2), weekends)

    @property
    def text(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    def describe(self) -> str:
        return self.text + (" and weekends" if self.weekends else "")

    def is_open(self, now: datetime) -> bool:
        if self.weekends and now.weekday() >= 5:
            return True
        moment = now.time().replace(second=0, microsecond=0)
        if self.start < self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end

    def next_change(self, now: datetime) -> datetime:
        """When the window next opens (if closed now) or closes (if open), to the minute."""
        state = self.is_open(now)
        moment = now.replace(second=0, microsecond=0)
        for _ in range(8 * 24 * 60):  # a week and a day of minutes always holds a change
            moment += timedelta(minutes=1)
            if self.is_open(moment) != state:
                return moment
        return moment


@dataclass(frozen=True)
class Control:
    """One row of ``fetch_control``."""

    project: str
    paused: bool = False
    paused_at: datetime | None = None
    paused_by: str | None = None
    hours: HoursWindow | None = None

    def hold(self, now: datetime) -> Hold | None:
        """What holds this row's asking back now, if anything."""
        if self.paused:
            return Hold("paused", self.project, since=self.paused_at, by=self.paused_by)
        if self.hours is not None and not self.hours.is_open(now):
            return Hold(
                "outside_hours", self.project, until=self.hours.next_change(now), hours=self.hours
            )
        return None

    def as_json(self, now: datetime) -> dict[str, object]:
        hold = self.hold(now)
        return {
            "paused": self.paused,
            "paused_at": self.paused_at.isoformat() if self.paused_at else None,
            "paused_by": self.paused_by,
            "vna_hours": self.hours.text if self.hours else None,
            "vna_weekends": self.hours.weekends if self.hours else False,
            "hold": hold.reason if hold else None,
            "until": hold.until.isoformat() if hold and hold.until else None,
            "says": hold.describe() if hold else "asking the VNA",
        }


@dataclass(frozen=True)
class Hold:
    """Why asking is held back: ``paused`` (until resumed) or ``outside_hours`` (until the
    window opens), set on ``scope`` (``'*'`` or a project)."""

    reason: str
    scope: str
    since: datetime | None = None
    until: datetime | None = None
    hours: HoursWindow | None = None
    by: str | None = None

    def describe(self) -> str:
        if self.reason == "paused":
            since = f" since {self.since.astimezone():%a %H:%M}" if self.since else ""
            by = f" by {self.by}" if self.by else ""
            resume = "pixl resume" + ("" if self.scope == ALL else f" {self.scope}")
            return f"PAUSED{since}{by}, until `{resume}`"
        where = "" if self.scope == ALL else " (this project)"
        assert self.until is not None and self.hours is not None
        return (
            f"OUTSIDE VNA HOURS{where} {self.hours.describe()}, claiming nothing until "
            f"{self.until:%a %H:%M}"
        )


@dataclass(frozen=True)
class Gate:
    """What a worker may claim now: nothing (``everything`` says why) or every project but
    those in ``projects``."""

    everything: Hold | None
    projects: dict[str, Hold]

    def hold_for(self, scope: str) -> Hold | None:
        """What holds ``scope`` back: a project (by ``'*'`` or its own row), or ``'*'``."""
        return self.everything or (None if scope == ALL else self.projects.get(scope))


def now_local() -> datetime:
    """The local wall-clock time the hours are read in (naive, the process's ``TZ``)."""
    return datetime.now().astimezone().replace(tzinfo=None)


def controls(conn: Connection) -> dict[str, Control]:
    """Every row of ``fetch_control``, by project (``'*'`` included when set)."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "SELECT project, paused, paused_at, paused_by, vna_hours, vna_weekends "
            "FROM fetch_control"
        )
        rows = cur.fetchall()
    result = {}
    for project, paused, paused_at, paused_by, hours, weekends in rows:
        window = HoursWindow.parse(hours, weekends) if hours else None
        result[project] = Control(project, paused, paused_at, paused_by, window)
    return result


def archive_scope(archive: str) -> str:
    """The ``fetch_control`` / ``fetch_rate`` scope of an archive's own hours, pause and rate."""
    return ARCHIVE_PREFIX + archive


def archive_gate(rows: dict[str, Control], archive: str, now: datetime) -> Hold | None:
    """What holds asking ``archive`` back now (its own row only: the VNA's hours and pause,
    the ``'*'`` row, hold everything anyway)."""
    control = rows.get(archive_scope(archive))
    return control.hold(now) if control is not None else None


def set_default_hours(conn: Connection, scope: str, window: HoursWindow) -> None:
    """Set ``scope``'s hours only if it has no row yet: a deployment's configured default
    (e.g. the secondary archive's), which the operator's later changes outlive."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO fetch_control (project, vna_hours, vna_weekends) VALUES (%s, %s, %s) "
            "ON CONFLICT (project) DO NOTHING",
            (scope, window.text, window.weekends),
        )


def gate(rows: dict[str, Control], now: datetime) -> Gate:
    everything = rows[ALL].hold(now) if ALL in rows else None
    projects = {}
    for project, control in rows.items():
        if project == ALL or project.startswith(ARCHIVE_PREFIX):
            continue
        hold = control.hold(now)
        if hold is not None:
            projects[project] = hold
    return Gate(everything, projects)


def current_gate(conn: Connection, now: datetime | None = None) -> Gate:
    return gate(controls(conn), now or now_local())


def _check_who(who: str) -> str:
    """A staff user name or ``page:<service>``; anything else is stored as ``unknown``."""
    return who if _WHO.match(who) else "unknown"


def set_paused(conn: Connection, project: str, paused: bool, who: str) -> None:
    """Pause or resume asking for ``project`` (or ``'*'``). Pausing what is paused keeps the
    first pause's time and author."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO fetch_control (project, paused, paused_at, paused_by) "
            "VALUES (%(p)s, %(paused)s, CASE WHEN %(paused)s THEN now() END, "
            "CASE WHEN %(paused)s THEN %(who)s END) "
            "ON CONFLICT (project) DO UPDATE SET paused = EXCLUDED.paused, "
            "paused_at = CASE WHEN fetch_control.paused = EXCLUDED.paused "
            "THEN fetch_control.paused_at ELSE EXCLUDED.paused_at END, "
            "paused_by = CASE WHEN fetch_control.paused = EXCLUDED.paused "
            "THEN fetch_control.paused_by ELSE EXCLUDED.paused_by END, updated_at = now()",
            {"p": project, "paused": paused, "who": _check_who(who)},
        )


def is_paused(conn: Connection, project: str) -> bool:
    with conn, conn.cursor() as cur:
        cur.execute("SELECT paused FROM fetch_control WHERE project = %s", (project,))
        row = cur.fetchone()
    return bool(row and row[0])


def set_hours(conn: Connection, project: str, window: HoursWindow | None) -> None:
    """Set (or with None, lift) the VNA hours of ``project`` or of ``'*'``."""
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO fetch_control (project, vna_hours, vna_weekends) VALUES (%s, %s, %s) "
            "ON CONFLICT (project) DO UPDATE SET vna_hours = EXCLUDED.vna_hours, "
            "vna_weekends = EXCLUDED.vna_weekends, updated_at = now()",
            (project, window.text if window else None, window.weekends if window else False),
        )
