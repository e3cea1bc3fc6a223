"""Which kind of destination a project's images go to, as its file says.

The one place the image exporter, the manifest writer and ``pixl verify`` ask it, so a new kind
is added here and in ``pixl_core.dsh.verify.READERS`` and nowhere else.
"""

from __future__ import annotations

from pixl_core.config.projects import Project, load_project
from pixl_core.errors import PixlError

FTPS = "ftps"
DICOMWEB = "dicomweb"


def image_destination(project: Project) -> str | None:
    """``dicomweb`` when the project's images go by STOW-RS (``destination: dicomweb:``),
    ``ftps`` when its file names an FTPS server, None when it names neither."""
    if getattr(project, "dicomweb", None) is not None:
        return DICOMWEB
    return FTPS if project.destination is not None else None


def images_over_ftps(slug: str) -> bool:
    """Whether the project's images are zips on an FTPS DSH (so it has an image manifest);
    False for a project whose file cannot be read (its exports fail on their own)."""
    try:
        return image_destination(load_project(slug)) == FTPS
    except (PixlError, OSError):
        return False
