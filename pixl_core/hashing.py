"""The one keyed-hash function behind every pseudonym PIXL produces.

Every pseudonym (accession number, patient id, UIDs, per-patient date offsets) comes from
HMAC-SHA256 under a per-project key derived from the secret ``PIXL_HASH_KEY``. The same input and
project give the same output on every instance and in both the imaging and the report path, so
the hashed accession number links a DICOM study to its row in the radiology parquet; different
projects get unrelated keys, so their exports cannot be joined.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from pixl_core.errors import HashKeyError

KEY_VARIABLE = "PIXL_HASH_KEY"
_MIN_KEY_LENGTH = 16


def secret_from_env() -> bytes:
    """Return the hash secret from the environment, or refuse with a one-line fix."""
    value = os.environ.get(KEY_VARIABLE, "")
    if not value:
        raise HashKeyError(
            f"{KEY_VARIABLE} is not set: export a secret of at least {_MIN_KEY_LENGTH} "
            "characters (e.g. `openssl rand -hex 32`) before running PIXL"
        )
    if len(value) < _MIN_KEY_LENGTH:
        raise HashKeyError(
            f"{KEY_VARIABLE} is too short: use at least {_MIN_KEY_LENGTH} characters "
            "(e.g. `openssl rand -hex 32`)",
            code="hash_key_short",
        )
    return value.encode()


@dataclass(frozen=True)
class ProjectHasher:
    """Keyed pseudonyms for one project.

    The project key is HMAC(secret, "pixl-project:" + slug); each pseudonym is
    HMAC(project key, domain + NUL + value) so that, for example, a UID and an accession number
    with the same characters never map to the same output.
    """

    project_key: bytes

    @classmethod
    def for_project(cls, slug: str, secret: bytes | None = None) -> ProjectHasher:
        secret = secret if secret is not None else secret_from_env()
        key = hmac.new(secret, b"pixl-project:" + slug.encode(), hashlib.sha256).digest()
        return cls(project_key=key)

    def digest(self, domain: str, value: str) -> bytes:
        message = domain.encode() + b"\x00" + value.encode()
        return hmac.new(self.project_key, message, hashlib.sha256).digest()

    def text(self, value: str, max_length: int = 64) -> str:
        """Hex pseudonym fitted to ``max_length`` (a VR's maximum); the linkage hash."""
        return self.digest("text", value).hex()[:max_length]

    def uid(self, value: str) -> str:
        """A ``2.25.`` UID (at most 44 characters) standing for ``value``."""
        return "2.25." + str(int.from_bytes(self.digest("uid", value)[:16], "big"))

    def day_offset(self, patient_key: str, max_days: int) -> int:
        """A non-zero per-patient shift in days in ``-max_days..-1`` or ``1..max_days``."""
        n = int.from_bytes(self.digest("date-shift", patient_key)[:8], "big")
        magnitude = 1 + n % max_days
        return magnitude if (n >> 32) & 1 else -magnitude


def hash_accession_number(hasher: ProjectHasher, accession_number: str) -> str:
    """The pseudonymised accession number as it appears in DICOM and in the radiology parquet.

    AccessionNumber has VR SH (16 characters), so the hash is cut to 16 hex characters.
    """
    return hasher.text(accession_number.strip(), max_length=16)
