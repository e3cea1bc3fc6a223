"""``pixl populate``'s work: check and stage an extract's public files, then record its work items.

Staging comes first: a public file that may not leave (a column off the OMOP allow-list, a value
equal to a cohort identifier) stops the run before anything is recorded, so no study of a
refused extract is ever asked of the archive.
"""

from __future__ import annotations

from pathlib import Path

from pixl_cli.extract_reader import Extract, stage_public_files
from pixl_core.config.projects import load_project
from pixl_core.db.connection import Connection
from pixl_core.db.work_items import PopulateResult, ProgressCallback, record_extract


def populate(
    conn: Connection,
    extract: Extract,
    staging_dir: Path,
    on_progress: ProgressCallback | None = None,
    *,
    priority: int = 0,
    reprioritise: bool = False,
) -> PopulateResult:
    """Check and stage the public parquet files, then record the extract and its work items
    (at ``priority``; with ``reprioritise``, the cohort's items still queued take it too)."""
    allowed = load_project(extract.project).allow_omop_columns if extract.public_files else {}
    staging_path = stage_public_files(extract, staging_dir, allowed)
    return record_extract(
        conn, extract, staging_path, on_progress, priority=priority, reprioritise=reprioritise
    )
