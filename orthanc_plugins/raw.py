"""orthanc-raw plugin: wires the fetch worker into Orthanc. Logic: pixl_imaging.fetch_worker.

There is deliberately no received-instance callback here: on the VNA's C-STORE, Orthanc 1.10.1
has DCMTK parse the whole dataset off the network before any plugin sees it (a file nested
10,000 sequences deep kills orthanc-raw before the callback runs), so a callback could not
screen anything in time. The fetch worker screens every instance before handing it on
(``pixl_core.dicom.screening``); see "Malformed files" in the README for what is left.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import json

import orthanc
import plugin_support

from pixl_core.db.fetch_control import HoursWindow
from pixl_core.dicom.screening import ScreeningLimits
from pixl_core.env import env_number
from pixl_imaging import operator_view
from pixl_imaging.archives import (
    DEFAULT_SECONDARY_STUDIES_PER_SECOND,
    SECONDARY_MODALITY,
    secondary_from_env,
)
from pixl_imaging.fetch_worker import RawWorker, RawWorkerSettings
from pixl_imaging.vna_fetch import FetchSettings

plugin_support.setup_logging()
threads = plugin_support.BackgroundThreads()
worker: RawWorker | None = None


def _secondary_archive() -> str | None:
    """Register the secondary archive (PIXL_SECONDARY_AET/HOST/PORT) as a modality of this
    Orthanc, with the VNA's rights only; return its modality name, or None if there is none."""
    peer = secondary_from_env(os.environ)
    if peer is None:
        return None
    orthanc.RestApiPut(f"/modalities/{SECONDARY_MODALITY}", json.dumps(peer.modality()))
    return SECONDARY_MODALITY


def _start() -> None:
    global worker
    hours = os.environ.get("PIXL_SECONDARY_HOURS", "").strip()
    settings = RawWorkerSettings(
        worker_id=f"raw:{socket.gethostname()}:{os.getpid()}",
        lease_seconds=env_number(
            "PIXL_FETCH_LEASE_SECONDS", RawWorkerSettings.lease_seconds, float, positive=True
        ),
        backoff_base_seconds=env_number("PIXL_FETCH_BACKOFF_SECONDS", 10.0, float, positive=True),
        poll_seconds=env_number(
            "PIXL_FETCH_POLL_SECONDS", RawWorkerSettings.poll_seconds, float, positive=True
        ),
        vna_probe_seconds=env_number(
            "PIXL_VNA_PROBE_SECONDS", RawWorkerSettings.vna_probe_seconds, float, positive=True
        ),
        fetch=FetchSettings(
            vna_modality=os.environ.get("PIXL_VNA_MODALITY", "vna"),
            own_aet=os.environ.get("PIXL_RAW_AET", "PIXLRAW"),
        ),
        secondary_modality=_secondary_archive(),
        secondary_studies_per_second=env_number(
            "PIXL_SECONDARY_STUDIES_PER_SECOND",
            DEFAULT_SECONDARY_STUDIES_PER_SECOND,
            float,
            positive=True,
        ),
        secondary_default_hours=(
            HoursWindow.parse(hours, os.environ.get("PIXL_SECONDARY_WEEKENDS", "") == "true")
            if hours
            else None
        ),
        screening=ScreeningLimits(
            max_bytes=env_number("PIXL_SCREEN_MAX_MB", 512, int, positive=True) << 20,
            max_depth=env_number("PIXL_SCREEN_MAX_DEPTH", 16, int, positive=True),
        ),
    )
    worker = RawWorker(
        os.environ["PIXL_DB_URL"],
        plugin_support.own_client(),
        plugin_support.peer_clients("PIXL_ANON_URLS", "PIXL_ANON_URL"),
        plugin_support.secret(),
        settings,
    )
    threads.start("pixl-raw-worker", worker.run)
    threads.start("pixl-raw-metrics", _publish_metrics)


def _counters() -> dict[str, int]:
    return worker.counters.snapshot() if worker else {}


def _publish_metrics(stop) -> None:  # type: ignore[no-untyped-def]
    while not stop.wait(5):
        plugin_support.publish_metrics("raw", _counters())


def on_change(change_type: int, level: int, resource_id: str) -> None:
    if change_type == orthanc.ChangeType.ORTHANC_STARTED:
        _start()
    elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
        threads.shutdown()


orthanc.RegisterOnChangeCallback(on_change)
page_database = plugin_support.PageDatabase("raw-page")
plugin_support.register_status(
    "orthanc-raw",
    plugin_support.with_database(
        page_database,
        lambda: {"running": worker is not None, **_counters()},
        operator_view.raw_status,
    ),
)
plugin_support.register_control(page_database, operator_view.apply_control)
plugin_support.register_page()
