"""A small client for Orthanc's REST API.

The Orthanc plugins use it to talk to their own Orthanc (authorised with the token Orthanc
generates for plugins), the CLI and the tests use it from outside with a user and password, and
unit tests pass a stand-in with the same three methods. Errors never carry response bodies,
which can echo DICOM values.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import requests
import urllib3

from pixl_core.errors import PixlError


class OrthancError(PixlError):
    """An Orthanc REST call failed; ``code`` is a short reason usable as an error code."""

    def __init__(
        self,
        message: str,
        code: str = "orthanc_error",
        status: int | None = None,
        orthanc_status: int | None = None,
    ):
        super().__init__(message)
        self.code = code
        self.status = status
        # Orthanc's own error code from the answer's body (11: its database), for the logs.
        self.orthanc_status = orthanc_status


class OrthancApi(Protocol):
    """What the fetch and export logic needs from an Orthanc."""

    def get(self, path: str) -> Any: ...

    def get_bytes(self, path: str) -> bytes: ...

    def post(self, path: str, body: Any = None, *, timeout: float | None = None) -> Any: ...

    def post_bytes(self, path: str, data: bytes) -> Any: ...

    def delete(self, path: str) -> None: ...


# Orthanc's ErrorCode_Database, and ErrorCode_BadSequenceOfCalls, which its PostgreSQL index
# raised on a transaction whose connection broke (seen in the Postgres drill, then 11 and 503).
ORTHANC_DATABASE_ERRORS = frozenset({11, 6})


def _orthanc_status(response: requests.Response) -> int | None:
    """Orthanc's own error code (``OrthancStatus``) in an error answer's body, if any."""
    try:
        body = response.json()
    except ValueError:
        return None
    status = body.get("OrthancStatus") if isinstance(body, dict) else None
    return status if isinstance(status, int) else None


def _database_unavailable(response: requests.Response) -> bool:
    """Orthanc could not reach its database for this request (worth asking again shortly)."""
    if response.status_code == 503:
        return True
    return response.status_code == 500 and _orthanc_status(response) in ORTHANC_DATABASE_ERRORS


class OrthancClient:
    """``OrthancApi`` over HTTP with ``requests``."""

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()
        # DICOM files are large and mostly incompressible pixels: gzip on a local link costs
        # far more CPU than it saves (it was most of orthanc-raw's time in the benchmark).
        self._session.headers["Accept-Encoding"] = "identity"
        if username is not None and password is not None:
            self._session.auth = (username, password)
        if token:
            self._session.headers["Authorization"] = token

    # Orthanc answers 503 when its database is unavailable, and 500 with its error code 11
    # ("Error with the database engine", or 6 from a transaction left broken) when a connection
    # of its PostgreSQL index broke under a request: with the index in PostgreSQL, each of its pooled connections fails once after
    # a Postgres restart before it reconnects. Such a request is tried again after these pauses
    # instead of failing the work it serves (a study being handed on when Postgres restarted
    # lost a try to it, seen in the Postgres drill), except
    # one that starts a C-MOVE (a retrieve): asking the VNA again is the fetch worker's decision
    # (audited, at most once per project), never a transport's.
    UNAVAILABLE_PAUSES = (0.5, 1.0, 2.0, 4.0)

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        retriable = not path.rstrip("/").endswith(("/retrieve", "/move"))
        response = self._send(method, path, **kwargs)
        for pause in self.UNAVAILABLE_PAUSES if retriable else ():
            if not _database_unavailable(response):
                break
            response.close()
            time.sleep(pause)
            response = self._send(method, path, **kwargs)
        if response.status_code >= 400:
            orthanc_status = _orthanc_status(response)
            response.close()
            code = "not_found" if response.status_code == 404 else f"http_{response.status_code}"
            raise OrthancError(
                f"Orthanc at {self.url} answered {response.status_code} to {method} "
                f"{path.split('/')[1] if '/' in path else path}"
                + (f" (Orthanc error {orthanc_status})" if orthanc_status is not None else ""),
                code,
                response.status_code,
                orthanc_status,
            )
        return response

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        try:
            return self._session.request(method, self.url + path, **kwargs)
        except requests.Timeout:
            raise OrthancError(f"Orthanc at {self.url} timed out on {method}", "timeout") from None
        except requests.ConnectionError:
            raise OrthancError(f"Orthanc at {self.url} is not reachable", "unreachable") from None

    def get(self, path: str) -> Any:
        return self._request("GET", path).json()

    def get_bytes(self, path: str) -> bytes:
        """The body in one read: ``Response.content`` joins 10 KiB chunks, which for an 8 MB
        instance cost four times the CPU (about 6 ms each, on every file the hand-off and the
        exporter read)."""
        response = self._request("GET", path, stream=True)
        try:
            data = response.raw.read(decode_content=True)
        except (urllib3.exceptions.HTTPError, OSError):
            response.close()
            raise OrthancError(
                f"Orthanc at {self.url} broke off its answer to GET", "unreachable"
            ) from None
        response.raw.release_conn()  # read to the end: the connection serves the next request
        return data

    def post(self, path: str, body: Any = None, *, timeout: float | None = None) -> Any:
        kwargs: dict[str, Any] = {"json": body}
        if timeout is not None:
            kwargs["timeout"] = timeout
        response = self._request("POST", path, **kwargs)
        return response.json() if response.content else None

    def post_bytes(self, path: str, data: bytes) -> Any:
        response = self._request(
            "POST", path, data=data, headers={"Content-Type": "application/dicom"}
        )
        return response.json() if response.content else None

    def delete(self, path: str) -> None:
        self._request("DELETE", path)
