"""Local stand-in for CogStack's medcat-service de-identification API (demo and tests).

The hospital runs medcat-service (https://github.com/CogStack/MedCATservice) with its DEID_MODE
on: it answers ``POST /api/process`` and ``POST /api/process_bulk`` with the redacted text in
``result.text``. This service answers the same requests with the same response shapes, so the
EHR module's client (:mod:`pixl_ehr.cogstack`) is exercised exactly as in production, while the
redaction itself is the rule-based :func:`stack.standins.cogstack_redactor.redact`.

Shapes, as in medcat-service::

    POST /api/process       {"content": {"text": "..."}}
      -> {"medcat_info": {...}, "result": {"text", "annotations", "success", "timestamp",
                                            "elapsed_time"[, "footer"]}}
    POST /api/process_bulk  {"content": [{"text": "..."}, ...]}
      -> {"medcat_info": {...}, "result": [{"text", "annotations", ...}, ...]}  (input order)
    GET  /api/info          -> {"service_app_name", "service_language", "service_version",
                                "service_model"}
    GET  /api/health        -> {"status": "ok"}   (used by the stack's readiness check)

A document without ``text`` gets ``{"success": false, "errors": [...], "timestamp"}`` as
medcat-service does. Annotations carry offsets and a type, never the matched text.

Invalid requests get a 400 whose body never repeats the request (FastAPI's default 422 echoes
the input, which here would be a report). Nothing here logs a report.

Run: ``python -m stack.standins.cogstack_api --host 127.0.0.1 --port 5000
[--certfile CERT.pem --keyfile KEY.pem]``. With a certificate it serves HTTPS only, as the local
stack runs it: the EHR module refuses a plain ``http://`` Cogstack unless
``PIXL_COGSTACK_ALLOW_PLAIN_HTTP=true``, and the stack exercises the production path.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from stack.standins.cogstack_redactor import redact

SERVICE_INFO: dict[str, str] = {
    "service_app_name": "PIXL Cogstack stand-in",
    "service_language": "en",
    "service_version": "1.0",
    "service_model": "pixl-standin-rules",
}


class Document(BaseModel):
    """One input document; extra keys (e.g. medcat-service's ``footer``) are accepted."""

    model_config = ConfigDict(extra="allow")

    text: str | None = None
    footer: Any = None


class ProcessRequest(BaseModel):
    content: Document


class BulkProcessRequest(BaseModel):
    content: list[Document]


def _timestamp() -> str:
    return datetime.now(tz=UTC).isoformat(timespec="milliseconds")


def process_document(document: Document) -> dict[str, Any]:
    """The medcat-service result object for one document, with its text redacted."""
    started = time.perf_counter()
    if document.text is None:
        return {
            "success": False,
            "errors": ["'text' field missing in the payload content."],
            "timestamp": _timestamp(),
        }
    text, annotations = redact(document.text)
    result: dict[str, Any] = {
        "text": text,
        "annotations": annotations,
        "success": True,
        "timestamp": _timestamp(),
        "elapsed_time": time.perf_counter() - started,
    }
    if document.footer is not None:
        result["footer"] = document.footer
    return result


def create_app() -> FastAPI:
    """Build the stand-in app (a function so tests can run fresh instances)."""
    app = FastAPI(title="PIXL Cogstack de-identification stand-in", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, _exc: RequestValidationError) -> JSONResponse:
        # Never echo the request body: it is a report.
        return JSONResponse(
            status_code=400,
            content={"detail": "Input payload should be JSON with a 'content' field"},
        )

    @app.get("/api/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/info")
    def info() -> dict[str, str]:
        return SERVICE_INFO

    @app.post("/api/process")
    def process(payload: ProcessRequest) -> dict[str, Any]:
        return {"medcat_info": SERVICE_INFO, "result": process_document(payload.content)}

    @app.post("/api/process_bulk")
    def process_bulk(payload: BulkProcessRequest) -> dict[str, Any]:
        results = [process_document(document) for document in payload.content]
        return {"medcat_info": SERVICE_INFO, "result": results}

    return app


app = create_app()


def main(argv: list[str] | None = None) -> None:
    """Serve the stand-in with uvicorn (the stack runs this under supervisord)."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--certfile", help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--keyfile", help="the certificate's private key (PEM)")
    args = parser.parse_args(argv)
    if bool(args.certfile) != bool(args.keyfile):
        parser.error("--certfile and --keyfile go together")
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        ssl_certfile=args.certfile,
        ssl_keyfile=args.keyfile,
    )


if __name__ == "__main__":
    main()
