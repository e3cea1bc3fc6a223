"""The CLI's one way to reach PIXL's database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from pixl_core.errors import PixlConfigError

if TYPE_CHECKING:
    from pixl_core.db import Connection


def connect() -> Connection:
    """Connect and bring the schema up to date (migrations are idempotent and locked)."""
    from pixl_core import db  # psycopg2: only for the commands that reach the database

    url = db.database_url()
    try:
        db.migrate(url)
        return db.connect(url, application_name="pixl-cli")
    except Exception as exc:
        if isinstance(exc, PixlConfigError):
            raise
        raise PixlConfigError(
            f"cannot reach the PIXL database ({type(exc).__name__}): check PIXL_DB_URL and that "
            "Postgres is running (`make demo` starts one)"
        ) from None


@contextmanager
def connection() -> Iterator[Connection]:
    """``connect()`` for the length of a ``with`` block, closed at its end whatever happens."""
    conn = connect()
    try:
        yield conn
    finally:
        conn.close()
