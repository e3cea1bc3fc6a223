"""DICOMweb client that stores de-identified instances at a research platform (STOW-RS) and
counts what it holds (QIDO-RS).

Why plain ``requests`` rather than ``dicomweb-client`` (PyPI): that library takes pydicom
``Dataset`` objects and writes them out again, so the bytes PIXL de-identified would be parsed
and re-encoded on their way out (CPU per instance, and a chance of changing what the allow-list
let through); and its errors carry the request URL, which holds study UIDs. What STOW-RS needs
is one ``multipart/related; type="application/dicom"`` body of the exact bytes orthanc-anon
holds, which :func:`multipart_related` builds in a few lines; QIDO-RS is a JSON GET. Retries,
backoff, TLS and error messages are then ours, and match the FTPS client's.

Everything here is plain functions and one class over a ``requests.Session``, so unit tests
pass a fake session and the system tests a real Orthanc with the DICOMweb plugin.

Error messages name only ``host:port``, the step (connect, TLS, STOW-RS, QIDO-RS) and an HTTP
status or error class, never a URL path (it holds UIDs) or a server's reply text.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests

from pixl_core.env import env_number
from pixl_core.errors import PixlConfigError, PixlError
from pixl_core.transport.ftps import project_variable

if TYPE_CHECKING:
    from pixl_core.config.projects import Project

logger = logging.getLogger(__name__)

PASSWORD_VARIABLE = "PIXL_DICOMWEB_PASSWORD"
TOKEN_VARIABLE = "PIXL_DICOMWEB_TOKEN"
CA_FILE_VARIABLE = "PIXL_DICOMWEB_CA_FILE"
MAX_BACKOFF_SECONDS = 60.0
# HTTP statuses after which the same request may succeed later (the server is busy or away).
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
# DICOM JSON tags of a STOW-RS response (PS3.18 table 10.5.3-1).
REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
SOP_INSTANCE_UID = "00080018"
SERIES_INSTANCE_UID = "0020000E"


class DicomwebError(PixlError):
    """A DICOMweb step failed; the message names host:port, the step and the reason only.

    ``transient``: trying again later may succeed. ``unreachable``: the server did not answer
    at all (connection refused, timed out, TLS handshake failed), so the exporter pauses the
    project's destination instead of spending a study's tries. ``code`` is ``dicomweb_<step>``.
    """

    def __init__(
        self,
        where: str,
        step: str,
        reason: str,
        *,
        transient: bool = False,
        unreachable: bool = False,
        status: int | None = None,
        attempts: int | None = None,
    ) -> None:
        self.where = where
        self.step = step
        self.reason = reason
        self.transient = transient
        self.unreachable = unreachable
        self.status = status
        self.attempts = attempts
        message = f"DICOMweb {where}: {step} failed: {reason}"
        if attempts is not None and attempts > 1:
            message += f" (gave up after {attempts} attempts)"
        short = "".join(c if c.isalnum() else "_" for c in step.lower())
        super().__init__(message, code=f"dicomweb_{short}"[:60])

    def __reduce__(self) -> tuple[Any, ...]:
        keywords = {
            "transient": self.transient,
            "unreachable": self.unreachable,
            "status": self.status,
            "attempts": self.attempts,
        }
        return (partial(DicomwebError, **keywords), (self.where, self.step, self.reason))


@dataclass(frozen=True)
class DicomwebSettings:
    """Where and how to reach a DICOMweb service; ``url`` is its root (``.../dicom-web``).

    ``retries`` further attempts after a transient failure, the pause before attempt n+1 being
    ``backoff_seconds * 2**(n-1)`` (capped at a minute). TLS is always verified: against
    ``ca_file`` when given, else the system CAs.
    """

    url: str
    auth: str = "basic"
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    batch_size: int = 20
    timeout: float = 60.0
    retries: int = 3
    backoff_seconds: float = 1.0

    @property
    def where(self) -> str:
        """``host:port`` of the service, the only part of its URL an error message names."""
        parts = urlsplit(self.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"{parts.hostname}:{port}"

    @classmethod
    def for_project(
        cls, project: Project, environ: Mapping[str, str] | None = None
    ) -> DicomwebSettings:
        """Settings for ``project``'s ``destination: dicomweb:``: the one place they are built.

        The URL, auth scheme, user and batch size are read from the project file, which a
        reviewer sees. Secrets come from the environment, per project first, then global:
        ``PIXL_DICOMWEB_PASSWORD__<SLUG>`` / ``PIXL_DICOMWEB_PASSWORD`` (auth: basic),
        ``PIXL_DICOMWEB_TOKEN__<SLUG>`` / ``PIXL_DICOMWEB_TOKEN`` (auth: bearer). The CA file,
        a deployment path: ``PIXL_DICOMWEB_CA_FILE__<SLUG>``, the file's ``ca_file:``,
        ``PIXL_DICOMWEB_CA_FILE``, else the system CAs. Tuning is global:
        ``PIXL_DICOMWEB_TIMEOUT``, ``_RETRIES``, ``_BACKOFF_SECONDS``.
        """
        env: Mapping[str, str] = os.environ if environ is None else environ
        slug, web = project.slug, project.dicomweb
        if web is None:
            raise PixlConfigError(
                f"projects/{slug}.yaml has no 'destination: dicomweb:'; add one with url: "
                "(the https:// service root) and auth:",
                code="no_destination",
            )
        password = token = None
        if web.auth in ("basic", "bearer"):
            base = PASSWORD_VARIABLE if web.auth == "basic" else TOKEN_VARIABLE
            own = project_variable(base, slug)
            secret = (env.get(own) or "").strip() or (env.get(base) or "").strip() or None
            if secret is None:
                what = "password of the account" if web.auth == "basic" else "bearer token"
                raise PixlConfigError(
                    f"neither {own} nor {base} is set: export one with the {what} of project "
                    f"{slug}'s DICOMweb destination (read only from the environment)",
                    code="dicomweb_secret_missing",
                )
            password, token = (secret, None) if web.auth == "basic" else (None, secret)
        own_ca = project_variable(CA_FILE_VARIABLE, slug)
        ca_file = None
        for source, value in (
            (own_ca, (env.get(own_ca) or "").strip()),
            (f"projects/{slug}.yaml 'dicomweb: ca_file:'", web.ca_file),
            (CA_FILE_VARIABLE, (env.get(CA_FILE_VARIABLE) or "").strip()),
        ):
            if value:
                if not Path(value).is_file():
                    raise PixlConfigError(
                        f"{source} names no file: set it to the PEM file of the CA that signed "
                        f"project {slug}'s DICOMweb certificate, or unset it to use the system "
                        "CAs",
                        code="dicomweb_ca_file_missing",
                    )
                ca_file = value
                break
        return cls(
            url=web.url,
            auth=web.auth,
            user=web.user,
            password=password,
            token=token,
            ca_file=ca_file,
            batch_size=web.batch_size,
            timeout=env_number("PIXL_DICOMWEB_TIMEOUT", 60.0, float, environ=env, positive=True),
            retries=env_number("PIXL_DICOMWEB_RETRIES", 3, int, environ=env),
            backoff_seconds=env_number("PIXL_DICOMWEB_BACKOFF_SECONDS", 1.0, float, environ=env),
        )


def multipart_related(parts: Sequence[bytes], boundary: str | None = None) -> tuple[bytes, str]:
    """The STOW-RS request body for ``parts`` (DICOM Part 10 files) and its Content-Type.

    PS3.18 §10.5: ``multipart/related; type="application/dicom"``, each part with its own
    ``Content-Type: application/dicom``. The boundary is random per request; a boundary that
    occurs inside a part (a chance of 2^-128) is drawn again rather than trusted.
    """
    while True:
        mark = boundary or f"pixl-{secrets.token_hex(16)}"
        if not any(mark.encode() in part for part in parts):
            break
        if boundary is not None:
            raise ValueError("the boundary occurs inside a part")
    delimiter = b"--" + mark.encode()
    chunks: list[bytes] = []
    for part in parts:
        chunks += [delimiter, b"\r\nContent-Type: application/dicom\r\n\r\n", part, b"\r\n"]
    chunks += [delimiter, b"--\r\n"]
    content_type = f'multipart/related; type="application/dicom"; boundary={mark}'
    return b"".join(chunks), content_type


@dataclass(frozen=True)
class StowResult:
    """What the server says it stored of one request (SOP Instance UIDs) and how many it
    refused, with their failure reasons (DICOM status codes, never identifiers)."""

    stored: frozenset[str]
    failed: int = 0
    failure_reasons: tuple[int, ...] = ()


def parse_stow_response(body: Any) -> StowResult:
    """Read a STOW-RS response dataset (DICOM JSON): ReferencedSOPSequence and
    FailedSOPSequence. Items without a UID are counted as failures, never as stored."""
    if not isinstance(body, dict):
        return StowResult(frozenset())
    stored = set()
    for item in body.get(REFERENCED_SOP_SEQUENCE, {}).get("Value", []) or []:
        values = item.get(REFERENCED_SOP_INSTANCE_UID, {}).get("Value") or []
        if values:
            stored.add(str(values[0]))
    failed = body.get(FAILED_SOP_SEQUENCE, {}).get("Value", []) or []
    reasons = tuple(
        int(value[0])
        for item in failed
        if (value := item.get(FAILURE_REASON, {}).get("Value")) and str(value[0]).isdigit()
    )
    return StowResult(frozenset(stored), len(failed), reasons)


def batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """``items`` in consecutive slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


class DicomwebClient:
    """STOW-RS and QIDO-RS against one service, with retries and backoff.

    ``session`` is any ``requests.Session``-like object (a fake in unit tests); ``sleep`` is
    the pause between attempts (a recorder in unit tests). One client per thread.
    """

    def __init__(
        self,
        settings: DicomwebSettings,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.session = session if session is not None else requests.Session()
        self.sleep = sleep
        if settings.auth == "basic":
            self.session.auth = (settings.user or "", settings.password or "")
        elif settings.auth == "bearer":
            self.session.headers["Authorization"] = f"Bearer {settings.token}"

    def __enter__(self) -> DicomwebClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()

    # --- STOW-RS -------------------------------------------------------------------------------

    def stow(self, parts: Sequence[bytes]) -> StowResult:
        """Store ``parts`` (Part 10 files) with one STOW-RS request (retried as a whole: a
        server stores an instance it already holds once, and the exporter asks QIDO-RS before
        a retry of a study anyway)."""
        body, content_type = multipart_related(parts)
        headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
        response = self._request(
            "STOW-RS", "POST", "/studies", data=body, headers=headers, ok=(200, 202, 409)
        )
        result = parse_stow_response(_json(response))
        if response.status_code == 409 or result.failed:
            reasons = ", ".join(f"0x{r:04X}" for r in sorted(set(result.failure_reasons)))
            raise DicomwebError(
                self.settings.where,
                "STOW-RS",
                f"HTTP {response.status_code}: {result.failed} of {len(parts)} instance(s) "
                f"refused" + (f" (failure reason {reasons})" if reasons else ""),
                status=response.status_code,
            )
        return result

    def stow_batched(
        self,
        uids: Sequence[str],
        read: Callable[[str], bytes],
        on_stored: Callable[[frozenset[str]], None],
        before_batch: Callable[[], None] | None = None,
    ) -> int:
        """STOW the instances ``uids`` (SOP Instance UIDs; ``read`` gives each one's bytes) in
        requests of ``batch_size``. Only one batch is in memory at a time. ``before_batch`` runs
        before each request (the exporter checks its lease there and raises to stop); after
        each, ``on_stored`` gets the UIDs the server confirmed, so a crash loses at most one
        batch's record, which QIDO-RS then recovers. Returns how many were confirmed."""
        confirmed = 0
        for batch_uids in batches(list(uids), self.settings.batch_size):
            if before_batch is not None:
                before_batch()
            batch = [(uid, read(uid)) for uid in batch_uids]
            result = self.stow([data for _, data in batch])
            wanted = set(batch_uids)
            stored = result.stored & wanted
            if len(stored) < len(wanted):
                raise DicomwebError(
                    self.settings.where,
                    "STOW-RS",
                    f"the server confirmed {len(stored)} of {len(wanted)} instance(s)",
                )
            on_stored(frozenset(stored))
            confirmed += len(stored)
        return confirmed

    # --- QIDO-RS -------------------------------------------------------------------------------

    def instances_of_study(self, study_uid: str) -> dict[str, str]:
        """SOP Instance UID → Series Instance UID of every instance of a study the server
        holds (QIDO-RS ``/studies/{uid}/instances``); empty when it holds none."""
        response = self._request(
            "QIDO-RS",
            "GET",
            f"/studies/{study_uid}/instances",
            params={"includefield": f"{SOP_INSTANCE_UID},{SERIES_INSTANCE_UID}"},
            headers={"Accept": "application/dicom+json"},
            ok=(200, 204, 404),
        )
        if response.status_code != 200:
            return {}
        found = {}
        for item in _json(response) or []:
            sop = (item.get(SOP_INSTANCE_UID, {}).get("Value") or [None])[0]
            series = (item.get(SERIES_INSTANCE_UID, {}).get("Value") or [""])[0]
            if sop:
                found[str(sop)] = str(series)
        return found

    def probe(self) -> None:
        """One cheap QIDO-RS request: raises ``DicomwebError`` unless the service answers (and
        accepts the credentials). No retries: the exporter probes again later by itself."""
        self._request(
            "QIDO-RS",
            "GET",
            "/studies",
            params={"limit": "1"},
            headers={"Accept": "application/dicom+json"},
            ok=(200, 204),
            retries=0,
        )

    # --- one request, retried ------------------------------------------------------------------

    def _request(
        self,
        step: str,
        method: str,
        path: str,
        *,
        ok: tuple[int, ...],
        retries: int | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        settings = self.settings
        tries = 1 + (settings.retries if retries is None else retries)
        for attempt in range(1, tries + 1):
            try:
                # verify on every request: requests lets REQUESTS_CA_BUNDLE override a
                # session's verify, and the CA file must win. Never off.
                response = self.session.request(
                    method,
                    settings.url + path,
                    timeout=settings.timeout,
                    verify=settings.ca_file or True,
                    **kwargs,
                )
            except requests.RequestException as exc:
                error = _connection_error(settings.where, exc, settings.timeout)
            else:
                if response.status_code in ok:
                    return response
                error = _status_error(settings.where, step, response.status_code)
            if not error.transient or attempt == tries:
                raise DicomwebError(
                    error.where,
                    error.step,
                    error.reason,
                    transient=error.transient,
                    unreachable=error.unreachable,
                    status=error.status,
                    attempts=attempt,
                )
            pause = min(settings.backoff_seconds * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS)
            logger.warning("%s; attempt %d of %d, next in %.1f s", error, attempt, tries, pause)
            self.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover


def _json(response: requests.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _status_error(where: str, step: str, status: int) -> DicomwebError:
    if status in (401, 403):
        return DicomwebError(where, "login", f"HTTP {status} (credentials refused)", status=status)
    return DicomwebError(
        where, step, f"HTTP {status}", transient=status in TRANSIENT_STATUSES, status=status
    )


def _connection_error(where: str, exc: requests.RequestException, timeout: float) -> DicomwebError:
    """The step and reason of a failed connection, with no URL in it (requests' own messages
    quote the URL, which holds UIDs)."""
    if isinstance(exc, requests.exceptions.SSLError):
        text = str(exc)
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
            # Retrying cannot make an untrusted certificate trusted, but the server is there.
            return DicomwebError(where, "TLS", "certificate verification failed")
        return DicomwebError(where, "TLS", "TLS handshake failed", transient=True, unreachable=True)
    if isinstance(exc, requests.exceptions.Timeout):
        return DicomwebError(
            where, "connect", f"timed out after {timeout:g} s", transient=True, unreachable=True
        )
    if isinstance(exc, requests.exceptions.ConnectionError):
        return DicomwebError(
            where, "connect", "connection failed", transient=True, unreachable=True
        )
    return DicomwebError(where, "connect", type(exc).__name__, transient=True, unreachable=True)


def study_counts(client: DicomwebClient, study_uids: Iterable[str]) -> dict[str, dict[str, int]]:
    """For ``pixl verify`` on a DICOMweb project: per (pseudonymised) StudyInstanceUID, what the
    destination holds, counted by QIDO-RS on the server, not from PIXL's records:
    ``{"studies": 0|1, "series": n, "instances": n}``."""
    counts = {}
    for uid in study_uids:
        found = client.instances_of_study(uid)
        counts[uid] = {
            "studies": 1 if found else 0,
            "series": len(set(found.values())),
            "instances": len(found),
        }
    return counts


def client_for_project(project: Project) -> DicomwebClient:
    """A client for ``project``'s DICOMweb destination (secrets from the environment)."""
    return DicomwebClient(DicomwebSettings.for_project(project))
