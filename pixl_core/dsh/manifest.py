"""The images' ``manifest.json``: one document per project folder, built from PIXL's records.

Why one manifest per folder rather than one per extract: a study is exported once per project,
whatever extract asked for it, into the project's one ``dicom/`` folder, so a manifest that
lists every zip of that folder is the one document a reader of the folder can check it
against. Each zip names the extract it was exported for, and ``extracts`` summarises each
(id, the extract's datetime and OMOP ES commit, counts): what an IG reviewer or the DSH team
needs to see an extract's share.

Only pseudonymised names, digests and counts are in it: no identifier, and no original UID.
``generated_at`` is when it was written; everything else is a function of the records, so the
same records give the same ``zips``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata

from pixl_core.db.exported_studies import ExportedSnapshot

MANIFEST_NAME = "manifest.json"
FORMAT = "pixl-image-manifest/1"
IMAGES_FOLDER = "dicom"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# A zip PIXL writes is named by a pseudonymised UID (2.25.<decimal>) and nothing else.
ZIP_NAME = re.compile(r"^[0-9][0-9.]{0,63}\.zip$")


def images_folder(project: str) -> str:
    """The project's folder of image zips, relative to the DSH root."""
    return f"{project}/{IMAGES_FOLDER}"


def pixl_version() -> str:
    try:
        return metadata.version("pixl")
    except metadata.PackageNotFoundError:  # running from a checkout without an install
        return "unknown"


@dataclass(frozen=True)
class ManifestEntry:
    """One zip as a manifest lists it."""

    file: str
    sha256: str
    instances: int
    bytes: int | None = None
    extract_id: int | None = None


@dataclass(frozen=True)
class Manifest:
    """A manifest as read back: its zips by file name, and what else it says (for reports)."""

    project: str
    entries: dict[str, ManifestEntry]
    generated_at: str | None = None
    pixl_version: str | None = None


class ManifestUnreadable(ValueError):
    """The bytes are not a PIXL image manifest; the message says what is wrong, not what is in
    it."""


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def build(snapshot: ExportedSnapshot, generated_at: datetime | None = None) -> bytes:
    """The manifest of a project's exported zips, as UTF-8 JSON bytes (sorted, indented)."""
    zips = sorted(snapshot.zips, key=lambda z: z.file_name)
    per_extract: dict[int | None, list[int]] = {}
    for item in zips:
        per_extract.setdefault(item.extract_id, []).append(item.instance_count)
    extracts = [
        {
            "id": extract.id,
            "extract_datetime": _iso(extract.extract_datetime),
            "omop_es_hash": extract.omop_es_hash,
            "zips": len(per_extract.get(extract.id, [])),
            "instances": sum(per_extract.get(extract.id, [])),
        }
        for extract in snapshot.extracts
    ]
    if None in per_extract:  # studies recorded without an extract (a cohort from an older PIXL)
        extracts.append(
            {
                "id": None,
                "extract_datetime": None,
                "omop_es_hash": None,
                "zips": len(per_extract[None]),
                "instances": sum(per_extract[None]),
            }
        )
    document = {
        "format": FORMAT,
        "project": snapshot.project,
        "folder": images_folder(snapshot.project),
        "generated_at": _iso(generated_at or datetime.now(UTC)),
        "pixl_version": pixl_version(),
        "hash_algorithm": "sha256",
        "counts": {"zips": len(zips), "instances": sum(z.instance_count for z in zips)},
        "extracts": extracts,
        "zips": [
            {
                "file": item.file_name,
                "sha256": item.sha256,
                "instances": item.instance_count,
                "bytes": item.zip_bytes,
                "extract_id": item.extract_id,
                "exported_at": _iso(item.exported_at),
            }
            for item in zips
        ],
    }
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


def parse(raw: bytes) -> Manifest:
    """Read a manifest's bytes; ``ManifestUnreadable`` if they are not one PIXL wrote."""
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ManifestUnreadable("not UTF-8 JSON") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ManifestUnreadable(f"no 'format': '{FORMAT}'")
    zips = document.get("zips")
    if not isinstance(zips, list):
        raise ManifestUnreadable("no 'zips' list")
    entries: dict[str, ManifestEntry] = {}
    for number, item in enumerate(zips, start=1):
        entry = _entry(item, number)
        if entry.file in entries:
            raise ManifestUnreadable(f"zip {number} is listed twice")
        entries[entry.file] = entry
    return Manifest(
        project=str(document.get("project")),
        entries=entries,
        generated_at=_text(document.get("generated_at")),
        pixl_version=_text(document.get("pixl_version")),
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _entry(item: object, number: int) -> ManifestEntry:
    if not isinstance(item, dict):
        raise ManifestUnreadable(f"zip {number} is not an object")
    file, sha256, instances = item.get("file"), item.get("sha256"), item.get("instances")
    if not isinstance(file, str) or not ZIP_NAME.match(file):
        raise ManifestUnreadable(f"zip {number} has no valid 'file'")
    if not isinstance(sha256, str) or not _SHA256.match(sha256):
        raise ManifestUnreadable(f"zip {number} has no valid 'sha256'")
    if not isinstance(instances, int) or isinstance(instances, bool) or instances < 0:
        raise ManifestUnreadable(f"zip {number} has no valid 'instances'")
    size, extract_id = item.get("bytes"), item.get("extract_id")
    return ManifestEntry(
        file=file,
        sha256=sha256,
        instances=instances,
        bytes=size if isinstance(size, int) else None,
        extract_id=extract_id if isinstance(extract_id, int) else None,
    )


def entries_of(snapshot: ExportedSnapshot) -> dict[str, ManifestEntry]:
    """What the manifest of these records lists, keyed by file name (for comparisons)."""
    return {
        z.file_name: ManifestEntry(
            z.file_name, z.sha256, z.instance_count, z.zip_bytes, z.extract_id
        )
        for z in snapshot.zips
    }


def total_instances(entries: Iterable[ManifestEntry]) -> int:
    return sum(entry.instances for entry in entries)
