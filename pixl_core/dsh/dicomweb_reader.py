"""``pixl verify``'s reader for DICOMweb destinations: what the research platform holds of the
studies PIXL sent it, counted there by QIDO-RS (``/studies/{uid}/instances``), never from PIXL's
own records.

Only the expected studies are asked for: the platform also holds other projects' and other
senders' studies, which are not PIXL's to call extra. A study the server does not hold comes
back with no instances and is reported missing; one holding another number of instances than
PIXL exported is reported corrupt (incomplete).
"""

from __future__ import annotations

from collections.abc import Collection

from pixl_core.config.projects import Project
from pixl_core.dsh.verify import Found, Holding, Progress
from pixl_core.transport.dicomweb import client_for_project


def read(project: Project, progress: Progress, expected: Collection[str] = ()) -> Holding:
    """Each expected (pseudonymised) StudyInstanceUID the server holds, with its instance
    count; no manifest (DICOMweb keeps none)."""
    client = client_for_project(project)
    progress.start(len(expected))
    found: dict[str, Found] = {}
    for uid in expected:
        instances = client.instances_of_study(uid)
        if instances:
            found[uid] = Found(uid, instances=len(instances))
        progress.advance()
    return Holding(found, None)
