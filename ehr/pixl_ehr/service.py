"""The EHR module's HTTP service: runs the report worker and answers over HTTP.

Run with ``python -m pixl_ehr.service --port N [--host 127.0.0.1]`` (the local stack does, under
supervisord). The report worker (``pixl_ehr.report_worker``) runs in a background thread from
start-up to shut-down; the HTTP side answers:

- ``GET /health`` → 200 while the process is up (what the stack's health check waits for);
- ``GET /status`` → report counts by state per project, and the worker's counters;
- ``POST /export/{project}[?extract_id=N]`` → pushes the extract's public parquet files and the
  radiology parquet over FTPS to the project's DSH, then a manifest (``pixl_ehr.dsh_export``);
  answers with counts only.

Who may ask (issue 8, finding 6). An export sends a cohort's data out of the hospital, so:

- every endpoint but ``/health`` needs ``Authorization: Bearer <PIXL_EHR_TOKEN>``; the service
  refuses to start without the token (``pixl export-patient-data`` sends the same variable);
- a request that carries an ``Origin`` header comes from a web page, never from the CLI, and is
  refused (403) before anything runs; no CORS header is ever sent, so a page on another origin
  cannot read an answer or send the token either;
- it listens on 127.0.0.1 unless ``--host`` or ``PIXL_EHR_HOST`` says otherwise;
- ``/docs``, ``/redoc`` and ``/openapi.json`` exist only with ``PIXL_EHR_DOCS=true``, a
  development setting.

This module is only the HTTP layer: it turns what the export and the worker raise into status
codes. Errors are one line: unknown project or extract → 404; nothing to export, or an export
of the project already running → 409; a public file that may not leave → 422; the DSH
unreachable → 503 with the FTPS error; PIXL's database unreachable → 503; configuration missing
(hash key, the project's destination or its FTPS password) → 500.

Parameters are checked before anything else runs, and a bad one is a 4xx with one line that
never echoes it: a project that is not a slug (at most 64 characters) → 404, an ``extract_id``
that is not a whole number from 1 to 2^63-1 or a ``/status?project=`` that is not a slug → 422.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import logging
import os
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from pixl_core import db
from pixl_core.config.projects import SLUG_MAX_LENGTH, SLUG_RULE, is_valid_slug, load_project
from pixl_core.db import work_queue
from pixl_core.errors import PixlConfigError, PixlError
from pixl_core.hashing import ProjectHasher
from pixl_core.transport.ftps import FtpsClient, FtpsError
from pixl_ehr.dsh_export import ExportRefused, dsh_client, export_project
from pixl_ehr.report_worker import Deidentifier, ReportWorker, ReportWorkerSettings

logger = logging.getLogger("pixl.ehr.service")

EXTRACT_ID_MAX = 2**63 - 1  # extract.id is a bigint
TOKEN_ENV = "PIXL_EHR_TOKEN"
HOST_ENV = "PIXL_EHR_HOST"
DOCS_ENV = "PIXL_EHR_DOCS"
MIN_TOKEN_LENGTH = 16


@dataclass
class ServiceConfig:
    """What the service runs against; every default comes from the environment.

    ``deidentifier`` defaults to ``CogstackClient(CogstackSettings.from_env())``; ``ftps``
    makes the FTPS client for a project (default: the server its project file names);
    ``start_worker=False`` serves HTTP only (tests of the export). ``token`` is the bearer token
    every request but ``/health`` must carry: :meth:`from_env` (what the service runs with)
    always sets one, and only a config built in code for an in-process test may leave it None,
    which answers without checking.
    """

    db_url: str
    start_worker: bool = True
    deidentifier: Deidentifier | None = None
    ftps: Callable[[str], FtpsClient] = dsh_client
    worker_settings: ReportWorkerSettings | None = None
    worker_options: dict[str, Any] = field(default_factory=dict)
    token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls) -> ServiceConfig:
        return cls(db_url=db.database_url(), token=token_from_env())


def token_from_env(environ: dict[str, str] | None = None) -> str:
    """``PIXL_EHR_TOKEN``, required and at least 16 characters; never echoed."""
    env = os.environ if environ is None else environ
    token = env.get(TOKEN_ENV, "").strip()
    if not token:
        raise PixlConfigError(
            f"{TOKEN_ENV} is not set: generate a random token (python3 -c 'import secrets; "
            "print(secrets.token_hex(24))') and give it to the EHR service and to the pixl CLI",
            code="ehr_token_missing",
        )
    if len(token) < MIN_TOKEN_LENGTH:
        raise PixlConfigError(
            f"{TOKEN_ENV} is shorter than {MIN_TOKEN_LENGTH} characters: generate a longer random "
            "token",
            code="ehr_token_short",
        )
    return token


def docs_enabled(environ: dict[str, str] | None = None) -> bool:
    """``PIXL_EHR_DOCS=true`` serves /docs, /redoc and /openapi.json (development only)."""
    env = os.environ if environ is None else environ
    value = env.get(DOCS_ENV, "").strip().lower()
    if value not in {"", "true", "false"}:
        raise PixlConfigError(f"{DOCS_ENV} must be true or false; unset it in production")
    return value == "true"


def require_token(request: Request) -> None:
    """Refuse a request without the service's bearer token (constant-time comparison)."""
    expected: str | None = request.app.state.config.token
    if expected is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), expected.encode()
    ):
        raise HTTPException(
            401,
            f"missing or wrong bearer token: send Authorization: Bearer ${TOKEN_ENV}",
            headers={"WWW-Authenticate": "Bearer"},
        )


class RefuseBrowserOrigins:
    """Refuse every request that carries an ``Origin`` header, before any route runs.

    Browsers add ``Origin`` to cross-site requests (and to CORS preflights); the CLI and the
    stack never send one. A form on any web page could otherwise POST an export to a service on
    the operator's machine; no CORS header is ever added, so such a page cannot read answers.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and any(name == b"origin" for name, _ in scope["headers"]):
            response = JSONResponse(
                {"detail": "requests from web pages are refused: use the pixl CLI"},
                status_code=403,
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _WorkerThread:
    """The report worker and the thread it runs in."""

    def __init__(self) -> None:
        self.worker: ReportWorker | None = None
        self.thread: threading.Thread | None = None
        self.stop = threading.Event()
        self.error: str | None = None

    def start(self, config: ServiceConfig) -> None:
        try:
            deidentifier = config.deidentifier
            if deidentifier is None:
                from pixl_ehr.cogstack import CogstackClient, CogstackSettings

                deidentifier = CogstackClient(CogstackSettings.from_env())
            worker_id = f"ehr:{socket.gethostname()}:{os.getpid()}"
            settings = config.worker_settings or ReportWorkerSettings.from_env(worker_id)
            self.worker = ReportWorker(
                config.db_url, deidentifier, settings, **config.worker_options
            )
        except (PixlError, ImportError) as exc:
            # Keep serving /health and /export: the operator sees why in /status and the log.
            self.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            logger.error("report worker not started: %s", self.error)
            return
        self.thread = threading.Thread(
            target=self.worker.run, args=(self.stop,), name="pixl-report-worker", daemon=True
        )
        self.thread.start()

    def shutdown(self, timeout: float = 30.0) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout)

    def status(self) -> dict[str, Any]:
        running = self.thread is not None and self.thread.is_alive()
        counters = self.worker.snapshot() if self.worker else {}
        return {"running": running, "error": self.error, **counters}


def _connect(config: ServiceConfig) -> db.Connection:
    try:
        return db.connect(config.db_url, application_name="pixl-ehr")
    except PixlConfigError as exc:
        raise HTTPException(503, str(exc)) from None


def _one_line(exc: RequestValidationError) -> str:
    """The first invalid parameter, named with pydantic's rule and never with its value."""
    errors = exc.errors()
    if not errors:
        return "the request is not valid"
    first = errors[0]
    location = [str(part) for part in first.get("loc", ())]
    where = f"{location[0]} parameter {'.'.join(location[1:])}" if location else "a parameter"
    rule = str(first.get("msg", "not valid")).splitlines()[0][:200]
    return f"{where} is not valid: {rule}"


def create_app(config: ServiceConfig | None = None, *, docs: bool | None = None) -> FastAPI:
    """The FastAPI app; ``config`` defaults to ``ServiceConfig.from_env()`` at start-up.

    ``docs`` (default: ``PIXL_EHR_DOCS``) serves the interactive API pages and the schema.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.config = config or ServiceConfig.from_env()
        app.state.worker = _WorkerThread()
        if app.state.config.start_worker:
            app.state.worker.start(app.state.config)
        try:
            yield
        finally:
            app.state.worker.shutdown()

    if docs is None:
        docs = docs_enabled()
    app = FastAPI(
        title="PIXL EHR module",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.add_middleware(RefuseBrowserOrigins)

    @app.exception_handler(RequestValidationError)
    async def invalid_parameter(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default answer lists every error with the value sent: one line instead.
        return JSONResponse(status_code=422, content={"detail": _one_line(exc)})

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/status", dependencies=[Depends(require_token)])
    def status(
        request: Request,
        project: str | None = Query(
            default=None, max_length=SLUG_MAX_LENGTH, pattern=r"^[a-z0-9][a-z0-9-]*$"
        ),
    ) -> dict[str, Any]:
        conn = _connect(request.app.state.config)
        try:
            counts = work_queue.counts_by_state(conn, project, table="report")
        except Exception as exc:
            raise HTTPException(
                503, f"cannot read report states ({type(exc).__name__}): is the schema migrated?"
            ) from None
        finally:
            conn.close()
        return {"reports": counts, "worker": request.app.state.worker.status()}

    @app.post("/export/{project}", dependencies=[Depends(require_token)])
    def export(
        request: Request,
        project: str,
        extract_id: int | None = Query(default=None, ge=1, le=EXTRACT_ID_MAX),
    ) -> dict[str, Any]:
        config: ServiceConfig = request.app.state.config
        if not is_valid_slug(project):
            raise HTTPException(404, f"unknown project: a project is a slug ({SLUG_RULE})")
        try:
            load_project(project)
        except PixlConfigError as exc:
            raise HTTPException(404, str(exc)) from None
        conn = _connect(config)
        try:
            hasher = ProjectHasher.for_project(project)
            result = export_project(conn, project, config.ftps, hasher, extract_id)
        except ExportRefused as exc:
            raise HTTPException(exc.status, str(exc)) from None
        except FtpsError as exc:
            logger.warning("export of %s: %s", project, exc)
            raise HTTPException(503, str(exc)) from None
        except PixlConfigError as exc:
            raise HTTPException(500, str(exc)) from None
        finally:
            conn.close()
        return asdict(result)

    return app


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pixl_ehr.service", description="PIXL's EHR module (reports)."
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--host",
        default=os.environ.get(HOST_ENV, "").strip() or "127.0.0.1",
        help=f"address to listen on (default: ${HOST_ENV}, else 127.0.0.1)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("PIXL_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = ServiceConfig.from_env()
        docs = docs_enabled()
    except PixlConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not _is_loopback(args.host):
        logger.warning(
            "listening on %s, not loopback: every request but /health needs the token; keep "
            "the port behind the host's firewall",
            args.host,
        )
    if docs:
        logger.warning(
            "%s=true: /docs, /redoc and /openapi.json are served (development)", DOCS_ENV
        )
    import uvicorn

    uvicorn.run(create_app(config, docs=docs), host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
