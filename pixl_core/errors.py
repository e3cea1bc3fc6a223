"""Errors that carry a one-line message for the operator and a short code for the database.

Every ``PixlError`` has a ``code``: a short lowercase word such as ``unknown_project`` or
``ftps_login`` that a worker records on the work item (``last_error_code``) and counts in its
metrics, so what went wrong is named precisely and never with an identifier. A
``PixlConfigError`` is raised for anything the operator must fix (a missing secret, an invalid
allow-list, an unknown project); the CLI prints its message alone, without a traceback, and
exits 2. Messages must never contain an identifier taken from patient data.

Workers record ``exc.code`` rather than a code of their own choosing, so the subclasses below
exist for the codes: a broken allow-list is recorded as ``invalid_allowlist``, not as the
``unknown_project`` it used to be mistaken for. Codes match the schema's
``^[a-z][a-z0-9_.-]{0,63}$``.
"""

from __future__ import annotations


class PixlError(Exception):
    """Base class for PIXL errors whose message is safe to show and to log.

    ``code`` defaults to the class's own; a raise site may give a more precise one.
    """

    code: str = "pixl_error"

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class PixlConfigError(PixlError):
    """Configuration or usage problem: the message names the problem and the fix."""

    code = "config_error"


class DatabaseUnreachableError(PixlConfigError):
    """PIXL's Postgres does not answer. For a command the operator must check the URL or the
    server; a worker waits and tries again (it must never record it as a study's failure)."""

    code = "database_unreachable"


class UnknownProjectError(PixlConfigError):
    """A work item or command names a project that has no ``projects/<slug>.yaml``."""

    code = "unknown_project"


class InvalidProjectError(PixlConfigError):
    """A ``projects/<slug>.yaml`` exists but is not valid (YAML, keys, values)."""

    code = "invalid_project"


class InvalidAllowlistError(PixlConfigError):
    """A tag allow-list file is missing, not valid, or conflicts with another one."""

    code = "invalid_allowlist"


class HashKeyError(PixlConfigError):
    """``PIXL_HASH_KEY`` is missing (``hash_key_missing``) or too short (``hash_key_short``)."""

    code = "hash_key_missing"
