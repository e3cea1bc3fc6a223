"""``pixl verify``'s reader for FTPS destinations: what ``<project>/dicom/`` holds, read back.

Every file of the folder is listed and every one but the manifest is downloaded as a stream
and hashed (SHA-256): a zip whose bytes changed on the DSH is found even when its size did not.
The manifest (and PIXL's own temporary ``.manifest.json.part``, a write under way) is not an
item. Nothing is kept on disk.
"""

from __future__ import annotations

from collections.abc import Collection

from pixl_core.config.projects import Project
from pixl_core.dsh import manifest
from pixl_core.dsh.verify import Found, Holding, Progress
from pixl_core.transport.ftps import FtpsClient, FtpsSettings

_OWN_FILES = frozenset({manifest.MANIFEST_NAME, f".{manifest.MANIFEST_NAME}.part"})


def _client(project: Project) -> FtpsClient:
    return FtpsClient(FtpsSettings.for_project(project))


def read(project: Project, progress: Progress, expected: Collection[str] = ()) -> Holding:
    """The zips (and anything else) in the project's images folder, each hashed, and the
    manifest's bytes (None if there is none). The whole folder is read whatever ``expected``
    says: it is the project's own, so anything else there is extra."""
    folder = manifest.images_folder(project.slug)
    with _client(project) as client:
        names = client.list_dir(folder) if client.exists(folder) else []
        raw = (
            client.read_bytes(f"{folder}/{manifest.MANIFEST_NAME}")
            if manifest.MANIFEST_NAME in names
            else None
        )
        items = [name for name in names if name not in _OWN_FILES]
        progress.start(len(items))
        found: dict[str, Found] = {}
        for name in items:
            digest = client.sha256(f"{folder}/{name}")
            if digest is None:  # a folder, or gone since the listing
                found[name] = Found(name)
            else:
                found[name] = Found(name, sha256=digest[0], size=digest[1])
            progress.advance()
    return Holding(found, raw)


def remove(project: Project, names: list[str]) -> None:
    """Delete these zips from the project's images folder (found corrupt, about to be exported
    again: the exporter would otherwise take a zip of the right size for a complete upload)."""
    folder = manifest.images_folder(project.slug)
    with _client(project) as client:
        for name in names:
            client.delete(f"{folder}/{name}")
