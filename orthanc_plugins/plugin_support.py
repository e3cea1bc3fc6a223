"""Shared wiring for the PIXL Orthanc plugins (imports ``orthanc``; keep it thin)."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

import orthanc

from pixl_core.hashing import secret_from_env
from pixl_core.transport.orthanc_rest import OrthancClient


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


def secret() -> bytes:
    return secret_from_env()


def register_status(name: str, status: Callable[[], Mapping[str, Any]]) -> None:
    def handler(output: Any, uri: str, **request: Any) -> None:
        if request.get("method") != "GET":
            output.SendMethodNotAllowed("GET")
            return
        output.AnswerBuffer(json.dumps({"service": name, **status()}), "application/json")

    orthanc.RegisterRestCallback("/pixl/status", handler)


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
