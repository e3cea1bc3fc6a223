"""Errors that carry a one-line message for the operator.

A ``PixlConfigError`` is raised for anything the operator must fix (a missing secret, an invalid
allow-list, an unknown project). The CLI prints its message alone, without a traceback, and exits
2. Messages must never contain an identifier taken from patient data.
"""


class PixlError(Exception):
    """Base class for PIXL errors whose message is safe to show and to log."""


class PixlConfigError(PixlError):
    """Configuration or usage problem: the message names the problem and the fix."""
