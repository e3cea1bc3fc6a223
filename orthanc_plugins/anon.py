"""orthanc-anon plugin: wires de-identification and export into Orthanc.

Logic: pixl_imaging.ingest (per instance) and pixl_imaging.export (per study).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import orthanc
import plugin_support

from pixl_core.config.projects import load_project
from pixl_core.dicom.pixels import load_detector
from pixl_core.env import env_number
from pixl_core.transport.ftps import FtpsClient, FtpsSettings
from pixl_imaging import operator_view
from pixl_imaging.export import AnonExporter, ExportSettings
from pixl_imaging.ingest import AnonIngest, OrphanSweeper

plugin_support.setup_logging()
# The burned-in text detector (OpenCV, tesseract) at start, as before it was imported lazily for
# `pixl anonymise`: not on the first checked instance, inside a callback thread.
load_detector()
threads = plugin_support.BackgroundThreads()
ingest = AnonIngest(os.environ["PIXL_DB_URL"], plugin_support.secret())
exporter: AnonExporter | None = None
sweeper: OrphanSweeper | None = None


def on_received(received_dicom: bytes, origin: object) -> tuple[object, bytes | None]:
    """MODIFY with the de-identified bytes, or DISCARD (reason recorded by AnonIngest)."""
    result = ingest.on_received(received_dicom)
    if result is None:
        return orthanc.ReceivedInstanceAction.DISCARD, None
    return orthanc.ReceivedInstanceAction.MODIFY, result


def _ftps(project: str) -> FtpsClient:
    """A client for the server ``projects/<project>.yaml`` names (secrets from the env)."""
    return FtpsClient(FtpsSettings.for_project(load_project(project)))


def _start() -> None:
    global exporter, sweeper
    exporter = AnonExporter(
        os.environ["PIXL_DB_URL"],
        plugin_support.own_client(),
        plugin_support.secret(),
        _ftps,
        ExportSettings(
            worker_id=f"anon:{socket.gethostname()}:{os.getpid()}",
            lease_seconds=env_number(
                "PIXL_EXPORT_LEASE_SECONDS", ExportSettings.lease_seconds, float, positive=True
            ),
            backoff_base_seconds=env_number(
                "PIXL_EXPORT_BACKOFF_SECONDS", 5.0, float, positive=True
            ),
            poll_seconds=env_number(
                "PIXL_EXPORT_POLL_SECONDS", ExportSettings.poll_seconds, float, positive=True
            ),
            manifest_seconds=env_number(
                "PIXL_EXPORT_MANIFEST_SECONDS",
                ExportSettings.manifest_seconds,
                float,
                positive=True,
            ),
        ),
    )
    for number in range(env_number("PIXL_EXPORT_THREADS", 2, int, positive=True)):
        threads.start(f"pixl-anon-exporter-{number}", exporter.run)
    sweeper = OrphanSweeper(
        os.environ["PIXL_DB_URL"],
        plugin_support.own_client(),
        plugin_support.secret(),
        grace_seconds=env_number("PIXL_ANON_ORPHAN_SECONDS", 600.0, float, positive=True),
    )
    threads.start("pixl-anon-orphan-sweep", sweeper.run)
    threads.start("pixl-anon-metrics", _publish_metrics)


def _counters() -> dict[str, int]:
    values = ingest.counters.snapshot()
    if exporter is not None:
        values.update({f"export_{k}": v for k, v in exporter.counters.snapshot().items()})
    if sweeper is not None:
        values.update(sweeper.counters.snapshot())
    return values


def _publish_metrics(stop) -> None:  # type: ignore[no-untyped-def]
    while not stop.wait(5):
        plugin_support.publish_metrics("anon", _counters())


def on_change(change_type: int, level: int, resource_id: str) -> None:
    if change_type == orthanc.ChangeType.ORTHANC_STARTED:
        _start()
    elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
        threads.shutdown()


orthanc.RegisterReceivedInstanceCallback(on_received)
orthanc.RegisterOnChangeCallback(on_change)
plugin_support.register_status(
    "orthanc-anon",
    plugin_support.with_database(
        plugin_support.PageDatabase("anon-page"),
        lambda: {"running": exporter is not None, **_counters()},
        lambda conn, counters: operator_view.anon_status(
            conn, counters, exporter.destinations_down() if exporter else ()
        ),
    ),
)
plugin_support.register_page()
