"""PIXL's Postgres: the one source of truth for work state, and the queue.

``connection`` opens connections and applies ``migrations/``; ``states`` names every state and
which are busy or terminal; ``work_queue`` claims, leases, completes and backs off work items of
every table (the exporter's ``anonymising`` stage included); ``polling`` is the one loop every
worker runs around it, with its counters; ``work_items`` records extracts and their items;
``study_records`` holds what the imaging services record beside a study's state (VNA moves,
refused instances); ``exported_studies`` what reached the DSH (the images' manifest and
``pixl verify`` read it); ``leases`` keeps a worker's leases alive while it works. ``from pixl_core import db`` gives the connection helpers directly
(``db.connect``, ``db.migrate``…).
"""

from pixl_core.db.connection import (
    DATABASE_ERRORS,
    DB_URL_ENV,
    MIGRATIONS_DIR,
    Connection,
    ConnectionPool,
    ThreadConnections,
    available_migrations,
    connect,
    database_url,
    migrate,
    migrate_when_ready,
)

__all__ = [
    "DATABASE_ERRORS",
    "DB_URL_ENV",
    "MIGRATIONS_DIR",
    "Connection",
    "ConnectionPool",
    "ThreadConnections",
    "available_migrations",
    "connect",
    "database_url",
    "migrate",
    "migrate_when_ready",
]
