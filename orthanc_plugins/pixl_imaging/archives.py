"""The archives orthanc-raw asks: the VNA (primary) and, optionally, a secondary archive.

Why a second archive: some studies are only in another archive (a departmental PACS), which
the hospital lets PIXL ask only when the VNA has no such study, out of hours and slowly. So a
study goes to the secondary archive only after the VNA's C-FIND found nothing, only while the
secondary's own hours window is open and at its own rate (``fetch_control`` and
``fetch_rate`` rows of scope ``archive:secondary``); otherwise it waits, queued, without
using a try.

The secondary archive is any DICOM Q/R peer, known like the VNA by AE title, host and port
(``PIXL_SECONDARY_AET``, ``PIXL_SECONDARY_HOST``, ``PIXL_SECONDARY_PORT``): orthanc-raw
registers it as the modality ``secondary`` when it starts, with the VNA's rights only (it may
store into orthanc-raw and answer an echo; nothing else), so an Orthanc or DCMTK's
``dcmqrscp`` can sit there alike. Its hours default to ``PIXL_SECONDARY_HOURS`` (e.g.
``20:00-07:00``) and ``PIXL_SECONDARY_WEEKENDS``, written once when no row exists, after
which ``pixl hours --archive secondary`` changes them; its rate to
``PIXL_SECONDARY_STUDIES_PER_SECOND`` (0.1, i.e. 6 studies a minute) until
``pixl rate --archive secondary`` stores one.

Studies record which archive they came from (``study.source_archive``: ``primary`` or
``secondary``, roles rather than AE titles), counted by ``pixl status``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from pixl_core.db.fetch_control import DEFAULT_ARCHIVE_STUDIES_PER_SECOND
from pixl_core.errors import PixlConfigError

PRIMARY = "primary"
SECONDARY = "secondary"
# The Orthanc modality name orthanc-raw gives the secondary archive.
SECONDARY_MODALITY = "secondary"
WAITING_FOR_SECONDARY = "waiting_for_secondary"
SECONDARY_UNREACHABLE = "secondary_unreachable"
DEFAULT_SECONDARY_STUDIES_PER_SECOND = DEFAULT_ARCHIVE_STUDIES_PER_SECOND
# An AE title: 1-16 characters of the default repertoire, no backslash or control character.
_AET = re.compile(r"[ -\[\]-~]{1,16}")
_HOST = re.compile(r"[A-Za-z0-9.:-]{1,253}")


@dataclass(frozen=True)
class ArchivePeer:
    """A DICOM Q/R peer orthanc-raw may ask (C-FIND, C-MOVE to itself)."""

    aet: str
    host: str
    port: int

    def modality(self) -> dict[str, object]:
        """Orthanc's modality entry: what the VNA's entry in raw.json allows, and no more."""
        return {
            "AET": self.aet,
            "Host": self.host,
            "Port": self.port,
            "AllowStore": True,
            "AllowEcho": True,
            "AllowFind": False,
            "AllowMove": False,
            "AllowGet": False,
            "AllowFindWorklist": False,
            "AllowStorageCommitment": False,
        }


def secondary_from_env(env: Mapping[str, str]) -> ArchivePeer | None:
    """The secondary archive named by ``PIXL_SECONDARY_AET/HOST/PORT``, or None (not set);
    a partial or malformed setting is refused in one line naming the variable."""
    aet = env.get("PIXL_SECONDARY_AET", "").strip()
    if not aet:
        return None
    if not _AET.fullmatch(aet):
        raise PixlConfigError(
            "PIXL_SECONDARY_AET must be an AE title of 1-16 printable characters, no backslash"
        )
    host = env.get("PIXL_SECONDARY_HOST", "").strip()
    if not _HOST.fullmatch(host):
        raise PixlConfigError(
            "PIXL_SECONDARY_HOST must be the secondary archive's host name or address"
        )
    port_text = env.get("PIXL_SECONDARY_PORT", "104").strip()
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise PixlConfigError("PIXL_SECONDARY_PORT must be a TCP port from 1 to 65535")
    return ArchivePeer(aet, host, int(port_text))
