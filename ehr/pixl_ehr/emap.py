"""Read one radiology report and its patient's identifiers from EMAP.

The query lives in a SQL file (``sql/report.sql`` by default, or the file named by
``PIXL_EMAP_REPORT_SQL``) because EMAP's schema is the hospital's, not ours: a site adapts the
query, not the code. Its contract is written at the top of ``sql/report.sql``: named parameters
``%(mrn)s`` and ``%(accession_number)s``, one row per part of the text with ``section_kind`` and
``section_text``, and the patient's identifiers repeated on every row.

The identifiers are fetched only so that the second-method checker can look for them in the
de-identified text; they are never stored, logged, or put in an exception message, and
``EmapReport``'s ``repr`` leaves them (and the text) out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cache
from pathlib import Path
from typing import Any

from psycopg2.extras import RealDictCursor

from pixl_core.db.connection import DB_URL_ENV, Connection, database_url
from pixl_core.errors import PixlConfigError

EMAP_URL_ENV = "PIXL_EMAP_URL"
REPORT_SQL_ENV = "PIXL_EMAP_REPORT_SQL"
DEFAULT_REPORT_SQL = Path(__file__).parent / "sql" / "report.sql"
SECTION_KINDS = ("narrative", "impression", "addendum")
IDENTIFIER_COLUMNS = (
    "name",
    "given_name",
    "family_name",
    "nhs_number",
    "date_of_birth",
    "address",
    "postcode",
    "phone",
)
# Blank line between parts, so the report reads as it does in the radiology system.
PART_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class EmapReport:
    """The parts of one report, in reading order, and what EMAP knows about the patient.

    ``parts`` is ``[(kind, text), ...]`` ordered narrative, impression, addenda; ``identifiers``
    maps the names in ``IDENTIFIER_COLUMNS`` to text (dates as ``YYYY-MM-DD``) or None.
    """

    parts: tuple[tuple[str, str], ...] = field(repr=False)
    identifiers: dict[str, str | None] = field(repr=False)

    @property
    def text(self) -> str:
        """The whole report as one text: narrative, impression, then each addendum."""
        return PART_SEPARATOR.join(text for _kind, text in self.parts)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds of the parts, in order (safe to log)."""
        return tuple(kind for kind, _text in self.parts)


def emap_url() -> str:
    """EMAP's libpq URL: ``PIXL_EMAP_URL``, else PIXL's own database (the demo's EMAP schema)."""
    url = os.environ.get(EMAP_URL_ENV, "").strip()
    if url:
        return url
    try:
        return database_url()
    except PixlConfigError:
        raise PixlConfigError(
            f"neither {EMAP_URL_ENV} nor {DB_URL_ENV} is set: export the libpq URL of EMAP "
            f"as {EMAP_URL_ENV}"
        ) from None


def report_sql_path() -> Path:
    value = os.environ.get(REPORT_SQL_ENV, "").strip()
    return Path(value) if value else DEFAULT_REPORT_SQL


@cache
def _read_query(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        raise PixlConfigError(
            f"{REPORT_SQL_ENV} names {path}, which cannot be read: point it at the EMAP report "
            "query (see ehr/pixl_ehr/sql/report.sql)"
        ) from None


def load_report_query(path: Path | None = None) -> str:
    """The EMAP report query (read once per path per process)."""
    return _read_query(Path(path) if path is not None else report_sql_path())


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    text = str(value).strip()
    return text or None


def fetch_report(
    conn: Connection, mrn: str, accession_number: str, query: str | None = None
) -> EmapReport | None:
    """The report for (MRN, accession number), or None if EMAP has none (or only blank text).

    Parts are put in reading order by kind (narrative, impression, addenda) whatever order the
    query returns; within a kind the query's order is kept, so addenda stay in sequence.
    """
    query = query if query is not None else load_report_query()
    with conn, conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(query, {"mrn": mrn, "accession_number": accession_number})
        rows = cur.fetchall()
    if not rows:
        return None
    missing = {"section_kind", "section_text"} - set(rows[0])
    if missing:
        raise PixlConfigError(
            f"the EMAP report query returns no column {sorted(missing)[0]}: see the contract at "
            "the top of ehr/pixl_ehr/sql/report.sql"
        )
    parts: list[tuple[int, int, str, str]] = []
    for position, row in enumerate(rows):
        kind = str(row["section_kind"]).strip().lower()
        if kind == "addenda":
            kind = "addendum"
        if kind not in SECTION_KINDS:
            raise PixlConfigError(
                "the EMAP report query returned a section_kind other than narrative, "
                "impression or addendum: fix the query"
            )
        text = row["section_text"]
        if text is None or not str(text).strip():
            continue
        parts.append((SECTION_KINDS.index(kind), position, kind, str(text).strip()))
    if not parts:
        return None
    parts.sort()
    first = rows[0]
    identifiers = {column: _as_text(first.get(column)) for column in IDENTIFIER_COLUMNS}
    return EmapReport(
        parts=tuple((kind, text) for _rank, _pos, kind, text in parts),
        identifiers=identifiers,
    )
