"""Shared wiring for the PIXL Orthanc plugins (imports ``orthanc``; keep it thin)."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# Before numpy loads (through pixl_core): its OpenBLAS would start a thread per core that spins
# between calls (1.5% of each Orthanc's CPU in the pipeline benchmark) for no gain, since the
# parallelism here is Orthanc's own threads. An operator's explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import orthanc
import psycopg2

from pixl_core import db
from pixl_core.errors import PixlConfigError
from pixl_core.hashing import secret_from_env
from pixl_core.transport.orthanc_rest import OrthancClient

PAGE_DIR = Path(__file__).resolve().parent / "operator_page"
logger = logging.getLogger("pixl.page")


class OrthancLogHandler(logging.Handler):
    """Send Python logging into Orthanc's own log (and so into ``.demo/logs``)."""

    def emit(self, record: logging.LogRecord) -> None:
        message = self.format(record)
        if record.levelno >= logging.ERROR:
            orthanc.LogError(message)
        elif record.levelno >= logging.INFO:
            # Orthanc shows info lines only with --verbose; PIXL's progress lines should show.
            orthanc.LogWarning(message)
        else:
            orthanc.LogInfo(message)


def setup_logging() -> None:
    handler = OrthancLogHandler()
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root = logging.getLogger("pixl")
    root.addHandler(handler)
    root.setLevel(os.environ.get("PIXL_LOG_LEVEL", "INFO"))


def own_client() -> OrthancClient:
    """A REST session to this Orthanc, authorised with the token Orthanc issues to plugins."""
    config = json.loads(orthanc.GetConfiguration())
    port = config.get("HttpPort", 8042)
    return OrthancClient(
        f"http://127.0.0.1:{port}", token=orthanc.GenerateRestApiAuthorizationToken()
    )


def peer_client(url_env: str) -> OrthancClient:
    return OrthancClient(
        os.environ[url_env],
        username=os.environ.get("PIXL_ORTHANC_USER", "pixl"),
        password=os.environ.get("PIXL_ORTHANC_PASSWORD", ""),
    )


def peer_clients(urls_env: str, url_env: str) -> list[OrthancClient]:
    """One client per replica of a peer Orthanc: ``urls_env`` is a comma-separated list of
    their URLs (every orthanc-anon replica); without it, the one URL of ``url_env``."""
    urls = [url.strip() for url in os.environ.get(urls_env, "").split(",") if url.strip()]
    if not urls:
        return [peer_client(url_env)]
    return [
        OrthancClient(
            url,
            username=os.environ.get("PIXL_ORTHANC_USER", "pixl"),
            password=os.environ.get("PIXL_ORTHANC_PASSWORD", ""),
        )
        for url in urls
    ]


def secret() -> bytes:
    return secret_from_env()


def register_status(name: str, status: Callable[[], Mapping[str, Any]]) -> None:
    """``GET /pixl/status``: JSON for tools and for the page (behind Orthanc's authentication).
    When the database is away, the counters still answer, with ``"database": "unreachable"``."""

    def handler(output: Any, uri: str, **request: Any) -> None:
        if request.get("method") != "GET":
            output.SendMethodNotAllowed("GET")
            return
        output.AnswerBuffer(
            json.dumps({"service": name, **status()}, default=str), "application/json"
        )

    orthanc.RegisterRestCallback("/pixl/status", handler)


class PageDatabase:
    """The REST callbacks' connections to PIXL's Postgres, lent from a small pool (Orthanc's
    HTTP threads get a fresh Python thread state per call, so one per thread meant a new
    connection per request)."""

    def __init__(self, name: str) -> None:
        self._connections = db.ConnectionPool(os.environ["PIXL_DB_URL"], name, max_idle=2)
        self._migrated = False

    def run(self, action: Callable[[db.Connection], Any]) -> Any:
        return self._connections.run(action, 3.0)

    def migrated(self) -> bool:
        """Whether the schema has what the page reads (checked until it has: no query on a
        table that is not there yet, so Postgres logs no error while the stack starts)."""
        if not self._migrated:
            self._migrated = self.run(_has_fetch_control)
        return self._migrated


def _has_fetch_control(conn: db.Connection) -> bool:
    with conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('fetch_control') IS NOT NULL")
        return bool(cur.fetchone()[0])


def with_database(
    database: PageDatabase,
    counters: Callable[[], Mapping[str, Any]],
    figures: Callable[[db.Connection, Mapping[str, Any]], Mapping[str, Any]],
) -> Callable[[], Mapping[str, Any]]:
    """A status function: the database's figures, or the counters alone if it is away."""

    def status() -> Mapping[str, Any]:
        values = counters()
        try:
            if not database.migrated():  # Orthanc answers before its worker has migrated
                return {**values, "database": "not migrated yet"}
            return database.run(lambda conn: figures(conn, values))
        except (*db.DATABASE_ERRORS, psycopg2.Error) as exc:  # away, or not yet migrated
            logger.warning("/pixl/status: database away (%s)", type(exc).__name__)
            return {**values, "database": "unreachable"}

    return status


def register_page() -> None:
    """The operator's page at ``/pixl/ui/`` (plain HTML and one small script, no build step,
    nothing from the internet) and the "PIXL" button in Orthanc Explorer's top bar."""
    html = (PAGE_DIR / "index.html").read_bytes()
    script = (PAGE_DIR / "page.js").read_bytes()

    def page(output: Any, uri: str, **request: Any) -> None:
        if request.get("method") != "GET":
            output.SendMethodNotAllowed("GET")
        elif uri.endswith("/page.js"):
            output.AnswerBuffer(script, "text/javascript; charset=utf-8")
        else:
            output.AnswerBuffer(html, "text/html; charset=utf-8")

    # Orthanc matches the path without its trailing slash; the browser keeps it, so the page's
    # relative "page.js" and "../status" resolve under /pixl/ui/.
    orthanc.RegisterRestCallback("/pixl/ui/?", page)
    orthanc.RegisterRestCallback("/pixl/ui/page\\.js", page)
    orthanc.ExtendOrthancExplorer((PAGE_DIR / "explorer_button.js").read_text())


def _username(headers: Mapping[str, str]) -> str:
    """The Basic-auth user name of the request (never the password), for ``paused_by``."""
    value = headers.get("authorization", "")
    if not value.lower().startswith("basic "):
        return "page"
    try:
        user = base64.b64decode(value[6:], validate=True).decode("utf-8").split(":", 1)[0]
    except (binascii.Error, UnicodeDecodeError):
        return "page"
    return f"page:{user}"[:64]


def register_control(
    database: PageDatabase, apply: Callable[[db.Connection, object, str], Mapping[str, Any]]
) -> None:
    """``POST /pixl/control`` (JSON only, so a cross-site form cannot send one): the page's
    pause, resume, rate and hours controls. Orthanc's authentication applies; the read-only
    user ``operator`` is refused by ``operator-read-only.lua``."""

    def handler(output: Any, uri: str, **request: Any) -> None:
        if request.get("method") != "POST":
            output.SendMethodNotAllowed("POST")
            return
        headers = {k.lower(): v for k, v in (request.get("headers") or {}).items()}
        if not headers.get("content-type", "").startswith("application/json"):
            _answer(output, 400, {"error": "send the control as application/json"})
            return
        try:
            body = json.loads(request.get("body") or b"")
        except ValueError:
            _answer(output, 400, {"error": "the body is not JSON"})
            return
        who = _username(headers)
        try:
            result = database.run(lambda conn: apply(conn, body, who))
        except PixlConfigError as exc:
            _answer(output, 400, {"error": str(exc)})
            return
        except db.DATABASE_ERRORS as exc:
            _answer(output, 503, {"error": f"the PIXL database is away ({type(exc).__name__})"})
            return
        logger.warning("control from the page: %s %s", body.get("action"), result.get("project"))
        _answer(output, 200, result)

    orthanc.RegisterRestCallback("/pixl/control", handler)


def _answer(output: Any, status: int, body: Mapping[str, Any]) -> None:
    data = json.dumps(body, default=str)
    if status == 200:
        output.AnswerBuffer(data, "application/json")
    else:
        # Python plugin 4.0 takes (status, body as str, its length in bytes).
        output.SendHttpStatus(status, data, len(data.encode()))


def publish_metrics(prefix: str, values: Mapping[str, int | float]) -> None:
    for key, value in values.items():
        orthanc.SetMetricsValue(f"pixl_{prefix}_{key}", float(value), orthanc.MetricsType.DEFAULT)


class BackgroundThreads:
    """Start the plugin's loops when Orthanc has started; stop them when it stops."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self, name: str, target: Callable[[threading.Event], None]) -> None:
        thread = threading.Thread(target=target, args=(self.stop,), name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def shutdown(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)
