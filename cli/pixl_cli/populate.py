"""``pixl populate``'s work: stage an extract's public files, then record its work items."""

from __future__ import annotations

from pathlib import Path

from pixl_cli.extract_reader import Extract, stage_public_files
from pixl_core.db.connection import Connection
from pixl_core.db.work_items import PopulateResult, ProgressCallback, record_extract


def populate(
    conn: Connection,
    extract: Extract,
    staging_dir: Path,
    on_progress: ProgressCallback | None = None,
) -> PopulateResult:
    """Stage the public parquet files, then record the extract and its work items."""
    staging_path = stage_public_files(extract, staging_dir)
    return record_extract(conn, extract, staging_path, on_progress)
