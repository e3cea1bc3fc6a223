"""Client for CogStack's medcat-service de-identification API (the first de-identifier).

The hospital's medcat-service (https://github.com/CogStack/MedCATservice), run with its
DEID_MODE on, returns each document with identifiers redacted. The request is the service's
ordinary one:

- ``POST {url}/api/process`` with ``{"content": {"text": ...}}`` answers
  ``{"result": {"text": <redacted>, "annotations": ..., "success": true, "timestamp": ...},
  "medcat_info": {...}}``;
- ``POST {url}/api/process_bulk`` with ``{"content": [{"text": ...}, ...]}`` answers
  ``{"result": [{"text": ..., ...}, ...], "medcat_info": {...}}``.

Fail closed: any answer that is not exactly that shape (no ``result``, a ``text`` that is not a
string, ``"success": false``, a bulk result of the wrong length) raises, so no report is ever
forwarded without having been through the service. The service being DEID-configured is its
deployment's responsibility; the second, independent check in PIXL catches one that is not.

Transport: reports travel identifiable, so the URL must be ``https://`` (certificate and
hostname checked, against ``PIXL_COGSTACK_CA_FILE`` when the service's CA is private). A plain
``http://`` URL is refused unless ``PIXL_COGSTACK_ALLOW_PLAIN_HTTP=true`` says so explicitly
(a service on the same host, reached over loopback); every client built under that setting logs
a warning saying that report text travels in clear.

Errors: connection failures, timeouts and 5xx answers are retried with exponential backoff
(they are usually a restarting or overloaded service); 4xx answers mean PIXL sent something the
service refuses, which trying again cannot fix, so they are raised at once. A
:class:`CogstackError` names the service's ``host:port`` and the failure only, never the report
or the response body, both of which can hold identifiers.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import requests

from pixl_core.errors import PixlConfigError, PixlError

logger = logging.getLogger(__name__)

# Longest pause between two attempts, whatever the backoff and attempt number.
MAX_BACKOFF_SECONDS = 60.0
ALLOW_PLAIN_HTTP_ENV = "PIXL_COGSTACK_ALLOW_PLAIN_HTTP"
CA_FILE_ENV = "PIXL_COGSTACK_CA_FILE"


class CogstackError(PixlError):
    """The de-identification API failed; safe to log (host:port, failure and code only).

    ``code`` is one of ``cogstack_unreachable``, ``cogstack_timeout``, ``cogstack_http_<status>``
    or ``cogstack_bad_response``, for metrics and for recording why a report was dropped.
    """

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle with both arguments so the error survives crossing process boundaries."""
        return (CogstackError, (self.code, str(self)))


@dataclass(frozen=True)
class CogstackSettings:
    """Where the API is and how hard to try.

    ``retries`` is the number of further attempts after a transient failure of the first; the
    pause before attempt n+1 is ``backoff_seconds * 2**(n-1)``, capped at a minute. The optional
    user and password are sent as HTTP basic auth (for a service behind an authenticating
    proxy); the password is kept out of ``repr`` so settings can be logged. ``ca_file`` is the
    PEM file of the CA that signed the service's certificate (none: the system CAs).
    ``allow_plain_http`` is the explicit off-switch for TLS; see the module's docstring.
    """

    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 30
    retries: int = 3
    backoff_seconds: float = 1.0
    ca_file: str | None = None
    allow_plain_http: bool = False

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise PixlConfigError(
                "Cogstack settings: the URL must look like https://host:port; fix PIXL_COGSTACK_URL"
            )
        if parts.scheme == "http" and not self.allow_plain_http:
            raise PixlConfigError(
                "PIXL_COGSTACK_URL is http://, which would send report text in clear: use the "
                f"service's https:// URL, or set {ALLOW_PLAIN_HTTP_ENV}=true only for a "
                "service on this host",
                code="cogstack_plain_http",
            )
        if self.ca_file is not None and not Path(self.ca_file).is_file():
            raise PixlConfigError(
                f"{CA_FILE_ENV} names no file: set it to the PEM file of the CA that signed the "
                "Cogstack service's certificate, or unset it to use the system CAs",
                code="cogstack_ca_file_missing",
            )
        if not self.timeout > 0:
            raise PixlConfigError("Cogstack settings: timeout must be a positive number of seconds")
        if self.retries < 0:
            raise PixlConfigError("Cogstack settings: retries must be 0 or more")
        if self.backoff_seconds < 0:
            raise PixlConfigError("Cogstack settings: backoff_seconds must be 0 or more")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CogstackSettings:
        """Read ``PIXL_COGSTACK_URL`` (required), ``PIXL_COGSTACK_USER``,
        ``PIXL_COGSTACK_PASSWORD``, ``PIXL_COGSTACK_TIMEOUT`` (seconds),
        ``PIXL_COGSTACK_CA_FILE`` and ``PIXL_COGSTACK_ALLOW_PLAIN_HTTP`` (``true``/``false``).

        The password comes only from the environment so it never sits in a file or on a
        command line.
        """
        env: Mapping[str, str] = os.environ if environ is None else environ
        url = env.get("PIXL_COGSTACK_URL", "").strip()
        if not url:
            raise PixlConfigError(
                "PIXL_COGSTACK_URL is not set; set it to the Cogstack de-identification API, "
                "e.g. https://cogstack-host:5000"
            )
        timeout_text = env.get("PIXL_COGSTACK_TIMEOUT", "").strip()
        try:
            timeout = float(timeout_text) if timeout_text else 30.0
        except ValueError:
            raise PixlConfigError(
                "PIXL_COGSTACK_TIMEOUT is not a number; set it to a timeout in seconds"
            ) from None
        allow_text = env.get(ALLOW_PLAIN_HTTP_ENV, "").strip().lower()
        if allow_text not in {"", "true", "false"}:
            raise PixlConfigError(
                f"{ALLOW_PLAIN_HTTP_ENV} must be true or false; unset it to require https://"
            )
        return cls(
            url=url.rstrip("/"),
            username=env.get("PIXL_COGSTACK_USER") or None,
            password=env.get("PIXL_COGSTACK_PASSWORD") or None,
            timeout=timeout,
            ca_file=env.get(CA_FILE_ENV, "").strip() or None,
            allow_plain_http=allow_text == "true",
        )

    @property
    def host_port(self) -> str:
        """``host:port`` of the service, for messages (never credentials or a path)."""
        parts = urlsplit(self.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"{parts.hostname}:{port}"


class CogstackClient:
    """De-identifies report texts through the Cogstack API; one HTTP session per client."""

    def __init__(
        self,
        settings: CogstackSettings,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self._base = settings.url.rstrip("/")
        self._session = session or requests.Session()
        if settings.username is not None:
            self._session.auth = (settings.username, settings.password or "")
        # Passed with every request: a session-wide verify is overridden by REQUESTS_CA_BUNDLE.
        self._verify: str | bool = settings.ca_file or True
        if urlsplit(settings.url).scheme == "http":
            # Only reachable with allow_plain_http: say so loudly, every time a client is built.
            logger.warning(
                "TLS OFF: Cogstack API %s is reached over plain http:// (%s=true): report text "
                "crosses the network unencrypted; use https:// unless the service is on this host",
                settings.host_port,
                ALLOW_PLAIN_HTTP_ENV,
            )
        self._sleep = sleep

    @classmethod
    def from_env(cls) -> CogstackClient:
        return cls(CogstackSettings.from_env())

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> CogstackClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def deidentify(self, text: str) -> str:
        """The de-identified text of one report."""
        payload = self._post("/api/process", {"content": {"text": text}})
        result = payload.get("result") if isinstance(payload, dict) else None
        return self._result_text(result, "/api/process")

    def deidentify_bulk(self, texts: list[str]) -> list[str]:
        """The de-identified texts of several reports, in the order given.

        Blank texts are returned as they are without being sent: medcat-service answers blank
        documents out of order (after all the others), which would misalign the results, and
        whitespace holds no identifier.
        """
        to_send = [index for index, text in enumerate(texts) if text.strip()]
        output = list(texts)
        if not to_send:
            return output
        payload = self._post(
            "/api/process_bulk", {"content": [{"text": texts[index]} for index in to_send]}
        )
        results = payload.get("result") if isinstance(payload, dict) else None
        if not isinstance(results, list) or len(results) != len(to_send):
            raise self._bad_response("/api/process_bulk", "result is not a list of one per text")
        for index, result in zip(to_send, results, strict=True):
            output[index] = self._result_text(result, "/api/process_bulk")
        return output

    # --- internals ------------------------------------------------------------------------

    def _result_text(self, result: object, path: str) -> str:
        if not isinstance(result, dict):
            raise self._bad_response(path, "no result object")
        if result.get("success") is False:
            raise self._bad_response(path, "the service reported the document as failed")
        text = result.get("text")
        if not isinstance(text, str):
            raise self._bad_response(path, "result text missing or not a string")
        return text

    def _bad_response(self, path: str, reason: str) -> CogstackError:
        return CogstackError(
            "cogstack_bad_response",
            f"Cogstack API {self.settings.host_port}{path}: unexpected response ({reason})",
        )

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        """POST with retries; the parsed JSON body of a 2xx answer."""
        settings = self.settings
        attempts = settings.retries + 1
        where = f"Cogstack API {settings.host_port}{path}"
        last: CogstackError | None = None
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                pause = min(settings.backoff_seconds * 2 ** (attempt - 2), MAX_BACKOFF_SECONDS)
                self._sleep(pause)
            try:
                response = self._session.post(
                    self._base + path, json=body, timeout=settings.timeout, verify=self._verify
                )
            except requests.Timeout:
                last = CogstackError(
                    "cogstack_timeout",
                    f"{where}: no answer within {settings.timeout:g} s",
                )
            except requests.RequestException as exc:
                # The exception class only: its text can include the request or its URL.
                last = CogstackError(
                    "cogstack_unreachable", f"{where}: unreachable ({type(exc).__name__})"
                )
            else:
                status = response.status_code
                if 200 <= status < 300:
                    try:
                        return response.json()
                    except ValueError:
                        raise CogstackError(
                            "cogstack_bad_response", f"{where}: the answer is not JSON"
                        ) from None
                error = CogstackError(f"cogstack_http_{status}", f"{where}: HTTP {status}")
                if status < 500:
                    raise error
                last = error
            logger.warning("%s (attempt %d of %d)", last, attempt, attempts)
        assert last is not None
        raise CogstackError(last.code, f"{last} (gave up after {attempts} attempts)")
