"""The EHR module's HTTP service: runs the report worker and answers over HTTP.

Run with ``python -m pixl_ehr.service --port N [--host 127.0.0.1]`` (the local stack does, under
supervisord). The report worker (``pixl_ehr.report_worker``) runs in a background thread from
start-up to shut-down; the HTTP side answers:

- ``GET /health`` → 200 while the process is up (what the stack's health check waits for);
- ``GET /status`` → report counts by state per project, and the worker's counters;
- ``POST /export/{project}[?extract_id=N]`` → pushes the extract's public parquet files and the
  radiology parquet over FTPS to the project's DSH, then a manifest (``pixl_ehr.dsh_export``);
  answers with counts only.

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
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

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


@dataclass
class ServiceConfig:
    """What the service runs against; every default comes from the environment.

    ``deidentifier`` defaults to ``CogstackClient(CogstackSettings.from_env())``; ``ftps``
    makes the FTPS client for a project (default: the server its project file names);
    ``start_worker=False`` serves HTTP only (tests of the export).
    """

    db_url: str
    start_worker: bool = True
    deidentifier: Deidentifier | None = None
    ftps: Callable[[str], FtpsClient] = dsh_client
    worker_settings: ReportWorkerSettings | None = None
    worker_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> ServiceConfig:
        return cls(db_url=db.database_url())


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


def create_app(config: ServiceConfig | None = None) -> FastAPI:
    """The FastAPI app; ``config`` defaults to ``ServiceConfig.from_env()`` at start-up."""

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

    app = FastAPI(title="PIXL EHR module", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def invalid_parameter(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default answer lists every error with the value sent: one line instead.
        return JSONResponse(status_code=422, content={"detail": _one_line(exc)})

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/status")
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

    @app.post("/export/{project}")
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pixl_ehr.service", description="PIXL's EHR module (reports)."
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("PIXL_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    import uvicorn

    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
