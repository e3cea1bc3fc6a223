"""Read and validate an OMOP ES extract (or a CSV cohort): the first step of the flow.

An OMOP ES extract is a folder::

    EXTRACT_DIR/
      extract_summary.json
      public/PROCEDURE_OCCURRENCE.parquet     sequential ids only; exported to the DSH as is
      public/*.parquet                         the other OMOP tables, exported as is
      private/PERSON_LINKS.parquet             person_id ↔ PrimaryMrn
      private/PROCEDURE_OCCURRENCE_LINKS.parquet
                                               procedure_occurrence_id ↔ AccessionNumber
                                               (and, optionally, procedure_date and
                                               StudyInstanceUID)

``PROCEDURE_OCCURRENCE.parquet`` needs ``procedure_occurrence_id`` and ``person_id`` (integers)
and a date: ``procedure_datetime``, else ``procedure_date``, else the links' ``procedure_date``
(the first that is set wins).

Public files leave the hospital unchanged, so each must be a table of the OMOP CDM that PIXL
exports, holding only that table's CDM columns (an allow-list, ``pixl_core.public_scan``): a
``Surname`` or ``nhs_no`` column is refused whatever its name. The columns that may hold an
identifier (every ``*_source_value``...) and the scan of every public value against the
identifiers of the private files are checked when the files are staged
(``stage_public_files``), because the project's file says which of those columns it lets out.

Cohort identifiers (MRN, accession number) are what PIXL asks the archive for, so they must be
exact: a value with a DICOM wildcard (``*``, ``?``), a backslash (DICOM's value separator) or a
control character, or longer than 64 characters (DICOM's LO), is refused with the file, row
and column (never the value). Rows are counted from 1 in a parquet file, and as a spreadsheet
shows them (the header is row 1) in a CSV file. A Study Instance UID, when the cohort knows it
(``StudyInstanceUID`` in the procedure links, ``study_uid`` in a CSV), is what the archive is
asked for instead of the accession number and MRN, so it must be a DICOM UID: digits in
components separated by dots, no leading zero in a component, at most 64 characters.

``extract_summary.json`` is the OMOP ES log; PIXL reads three facts from it::

    {
      "datetime": "2024-03-01T10:15:00",       # when OMOP ES ran; or "extract_datetime"
      "project_name": "Chest X-ray",           # or "settings": {"cdm_source_name": ...}
      "omop_es_hash": "9f1c2e…"                # or "repository_hash", at top level or in "settings"
    }

The project slug is the project name lowercased with runs of spaces or underscores turned into
``-`` ("Chest X-ray" → ``chest-x-ray``); the caller checks it names a file in ``projects/``. A
datetime without a UTC offset is taken as UTC, so a log always maps to the same instant.

A CSV cohort (``read_csv_cohort``) is the plain alternative: a header line and the columns

    mrn, accession_number, study_datetime   required (study_datetime as ISO 8601, may be blank)
    procedure_occurrence_id                 optional, integer
    study_uid                               optional, a DICOM UID (may be blank)
    project                                 optional; if present must equal the project given

Reading yields one row per (project, mrn, accession_number, procedure_occurrence_id,
study_datetime), exact duplicates dropped. Rows without an MRN or accession number are skipped
and counted. Every validation error is a ``PixlConfigError`` of one line naming the file, the
column and the fix, never a value from a row.

``stage_public_files`` checks the public parquet files (columns and values, see above), copies
them to ``STAGING/<project>/<YYYY-MM-DDTHH-MM-SS>/public/`` for the later export to the DSH and
records what it checked next to them. Recording the work items is
``pixl_core.db.work_items.record_extract``'s job (``pixl_cli.populate`` joins the two): this
module only reads and stages.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pixl_core.config.projects import SLUG_MAX_LENGTH, SLUG_RULE, is_valid_slug
from pixl_core.errors import PixlConfigError
from pixl_core.public_scan import (
    Identifiers,
    check_columns,
    check_public_file,
    link_identifiers,
    printable,
    sha256_of,
    write_scan_record,
)

SUMMARY_FILE = "extract_summary.json"
PROCEDURES_FILE = "public/PROCEDURE_OCCURRENCE.parquet"
PERSON_LINKS_FILE = "private/PERSON_LINKS.parquet"
PROCEDURE_LINKS_FILE = "private/PROCEDURE_OCCURRENCE_LINKS.parquet"
COHORT_COLUMNS = [
    "project",
    "mrn",
    "accession_number",
    "procedure_occurrence_id",
    "study_datetime",
    "study_uid",
]

_REEXPORT = "re-export the extract with OMOP ES"
# What a cohort identifier may not hold: DICOM's wildcards, its value separator, control
# characters (C0, DEL, C1). Each would turn an exact C-FIND into a pattern or break a protocol.
IDENTIFIER_MAX_LENGTH = 64
_WILDCARD = re.compile(r"[*?]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_WHOLE_NUMBER = re.compile(r"[+-]?\d{1,19}(\.0*)?")
_INT64 = (-(2**63), 2**63 - 1)
_HASH = re.compile(r"[A-Za-z0-9._+-]{1,64}")
# A DICOM UID (PS3.5 9.1): numeric components, no leading zero but "0" itself, at most 64.
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")
UID_MAX_LENGTH = 64


@dataclass(frozen=True, eq=False)
class Extract:
    """A validated cohort: its project, when it was extracted, and one row per study.

    ``cohort`` has the columns of ``COHORT_COLUMNS`` and holds identifiers: it is left out of
    ``repr`` so that logging an ``Extract`` leaks none.
    """

    source_path: Path
    project: str
    extract_datetime: datetime
    omop_es_hash: str | None
    cohort: pd.DataFrame = field(repr=False)
    public_files: tuple[Path, ...] = ()
    rows_without_links: int = 0
    duplicate_rows: int = 0
    # Every MRN, NHS number and accession number of the private files: what public values are
    # scanned against when they are staged.
    identifiers: Identifiers = field(default_factory=Identifiers, repr=False)

    @property
    def staging_name(self) -> str:
        """The extract's folder name under the project's staging folder."""
        return self.extract_datetime.strftime("%Y-%m-%dT%H-%M-%S")


def project_slug(name: str, source: str = SUMMARY_FILE) -> str:
    """The project slug for a project name: lowercase, spaces and underscores become '-'."""
    slug = re.sub(r"[\s_]+", "-", name.strip().lower())
    if not is_valid_slug(slug):
        # The name is echoed only when it is short and printable: it may be anything.
        shown = f" {name!r}" if len(name) <= SLUG_MAX_LENGTH and name.isprintable() else ""
        raise PixlConfigError(
            f"{source}: project name{shown} does not make a valid slug ({SLUG_RULE}; spaces "
            "and '_' become '-'): fix the project name"
        )
    return slug


# --- extract_summary.json ---------------------------------------------------------------------


def _first(mapping: dict[str, Any], *paths: tuple[str, ...]) -> Any:
    for path in paths:
        node: Any = mapping
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node not in (None, ""):
            return node
    return None


def _read_summary(extract_dir: Path) -> tuple[str, datetime, str]:
    path = extract_dir / SUMMARY_FILE
    if not path.is_file():
        raise PixlConfigError(
            f"{SUMMARY_FILE} is missing from the extract folder: copy the OMOP ES log next to "
            "public/ and private/"
        )
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        where = f" (line {error.lineno})" if isinstance(error, json.JSONDecodeError) else ""
        raise PixlConfigError(
            f"{SUMMARY_FILE} is not valid JSON{where}: copy the log again from the OMOP ES run"
        ) from None
    if not isinstance(summary, dict):
        raise PixlConfigError(f"{SUMMARY_FILE} must hold a JSON object: see pixl_core/extract.py")

    name = _first(summary, ("project_name",), ("settings", "cdm_source_name"))
    if not isinstance(name, str):
        raise PixlConfigError(
            f'{SUMMARY_FILE} has no project name: add "project_name" (or settings.cdm_source_name)'
        )
    raw_datetime = _first(summary, ("datetime",), ("extract_datetime",))
    if not isinstance(raw_datetime, str):
        raise PixlConfigError(
            f'{SUMMARY_FILE} has no "datetime": add the ISO 8601 time the extract was made'
        )
    try:
        extract_datetime = datetime.fromisoformat(raw_datetime)
    except ValueError:
        raise PixlConfigError(
            f'{SUMMARY_FILE} field "datetime" is not ISO 8601: write it like 2024-03-01T10:15:00'
        ) from None
    if extract_datetime.tzinfo is None:
        extract_datetime = extract_datetime.replace(tzinfo=UTC)
    omop_es_hash = _first(
        summary,
        ("omop_es_hash",),
        ("repository_hash",),
        ("settings", "omop_es_hash"),
        ("settings", "repository_hash"),
    )
    if not isinstance(omop_es_hash, str):
        raise PixlConfigError(
            f'{SUMMARY_FILE} has no "omop_es_hash" (or "repository_hash"): add the OMOP ES '
            "commit the extract was made with, so researchers can reproduce it"
        )
    if not _HASH.fullmatch(omop_es_hash):
        # It goes to the DSH in the manifest: a commit id, nothing else.
        raise PixlConfigError(
            f'{SUMMARY_FILE} field "omop_es_hash" must be a commit id (letters, digits, ".", '
            '"_", "+" or "-", at most 64 characters): copy it from the OMOP ES log'
        )
    return project_slug(name), extract_datetime, omop_es_hash


# --- parquet ----------------------------------------------------------------------------------


def _schema(extract_dir: Path, relative: str) -> pa.Schema:
    path = extract_dir / relative
    if not path.is_file():
        raise PixlConfigError(
            f"{relative} is missing from the extract: copy the whole extract folder, or {_REEXPORT}"
        )
    try:
        return pq.read_schema(path)
    except (pa.ArrowException, OSError):
        raise PixlConfigError(
            f"{relative} is not a readable parquet file: {_REEXPORT} (the copy may be incomplete)"
        ) from None


def _require(schema: pa.Schema, relative: str, column: str, kind: str) -> None:
    if column not in schema.names:
        raise PixlConfigError(
            f"{relative} is missing column {column}: {_REEXPORT} (a version that writes it)"
        )
    arrow_type = schema.field(column).type
    is_integer = pa.types.is_integer(arrow_type)
    is_text = pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
    is_date = (
        pa.types.is_timestamp(arrow_type) or pa.types.is_date(arrow_type) or is_text
    )  # text dates are parsed and checked later
    allowed = {
        "id": is_integer,
        "identifier": is_integer or is_text,
        "date": is_date,
        "text": is_text,
    }[kind]
    if not allowed:
        wanted = {"id": "integer ids", "identifier": "text", "date": "dates", "text": "text"}[kind]
        raise PixlConfigError(
            f"{relative} column {column} must hold {wanted} (found {arrow_type}): {_REEXPORT}"
        )


def _read_columns(extract_dir: Path, relative: str, columns: list[str]) -> pd.DataFrame:
    try:
        return pd.read_parquet(
            extract_dir / relative, columns=columns, dtype_backend="numpy_nullable"
        )
    except (pa.ArrowException, OSError, ValueError):
        raise PixlConfigError(
            f"{relative} is not a readable parquet file: {_REEXPORT} (the copy may be incomplete)"
        ) from None


def _check_public_files(extract_dir: Path) -> tuple[Path, ...]:
    """The public files, each an OMOP CDM table PIXL exports with only its CDM columns."""
    public = extract_dir / "public"
    if not public.is_dir():
        raise PixlConfigError(f"the extract has no public/ folder: {_REEXPORT}")
    files = tuple(sorted(public.glob("*.parquet")))
    for path in files:
        relative = f"public/{path.name}"
        check_columns(
            f"public/{printable(path.name)}", path.name, _schema(extract_dir, relative).names
        )
    return files


def _as_datetime(values: pd.Series, relative: str, column: str) -> pd.Series:
    """Naive local wall-clock datetimes (NaT where missing); unparseable text is refused."""
    if pd.api.types.is_string_dtype(values) or values.dtype == object:
        text = values.astype("string").str.strip().replace("", pd.NA)
        parsed = pd.to_datetime(text, errors="coerce", format="ISO8601")
        bad = int((parsed.isna() & text.notna()).sum())
        if bad:
            raise PixlConfigError(
                f"{relative} column {column} has {bad} value(s) that are not ISO 8601 dates: "
                "fix them (e.g. 2024-01-31 or 2024-01-31T09:30:00)"
            )
        values = parsed
    else:
        values = pd.to_datetime(values)
    if getattr(values.dt, "tz", None) is not None:
        values = values.dt.tz_localize(None)
    return values.astype("datetime64[us]")


def _as_identifier(values: pd.Series, source: str, column: str, first_row: int) -> pd.Series:
    """Stripped identifiers (NA where blank); the first that PIXL may not ask for is refused
    with its row (``first_row`` is the number of the series' first row), never its value."""
    text = values.astype("string").str.strip()
    text = text.mask(text == "", pd.NA)
    present = text.dropna()
    bad = (
        present.str.contains(_WILDCARD)
        | present.str.contains(_CONTROL)
        | present.str.contains("\\", regex=False)
        | (present.str.len() > IDENTIFIER_MAX_LENGTH)
    )
    if bad.any():
        first = bad.to_numpy().argmax()
        value = str(present.iloc[first])
        row = text.index.get_loc(present.index[first]) + first_row
        if _WILDCARD.search(value):
            problem = "holds a DICOM wildcard ('*' or '?')"
        elif "\\" in value:
            problem = "holds a backslash (DICOM's value separator)"
        elif _CONTROL.search(value):
            problem = "holds a control character"
        else:
            problem = f"is longer than {IDENTIFIER_MAX_LENGTH} characters"
        raise PixlConfigError(
            f"{source} row {row} column {column} {problem}: correct that row; PIXL asks the "
            "archive for exact identifiers only, never a pattern",
            code="invalid_cohort_value",
        )
    return text


def _as_study_uid(values: pd.Series, source: str, column: str, first_row: int) -> pd.Series:
    """Study Instance UIDs (NA where blank); the first that is not a DICOM UID is refused with
    its row (``first_row`` is the number of the series' first row), never its value: a UID is
    asked of the archive as is, and a wrong one would ask for the wrong study or a pattern."""
    text = values.astype("string").str.strip()
    text = text.mask(text == "", pd.NA)
    present = text.dropna()
    bad = ~present.map(lambda v: len(v) <= UID_MAX_LENGTH and bool(_UID.fullmatch(v))).astype(bool)
    if bad.any():
        first = bad.to_numpy().argmax()
        row = text.index.get_loc(present.index[first]) + first_row
        raise PixlConfigError(
            f"{source} row {row} column {column} is not a DICOM UID (digits and dots, no "
            f"leading zeros, at most {UID_MAX_LENGTH} characters): correct or blank that row",
            code="invalid_cohort_value",
        )
    return text


def _finish(frame: pd.DataFrame, project: str) -> tuple[pd.DataFrame, int, int]:
    """Keep rows with both identifiers, drop exact duplicates; return (cohort, skipped, dups)."""
    frame = frame.assign(project=project)[COHORT_COLUMNS]
    linked = frame["mrn"].notna() & frame["accession_number"].notna()
    skipped = int((~linked).sum())
    frame = frame[linked]
    before = len(frame)
    frame = frame.drop_duplicates().reset_index(drop=True)
    return frame, skipped, before - len(frame)


def read_extract(extract_dir: Path) -> Extract:
    """Validate an OMOP ES extract folder and join its links into one row per study."""
    extract_dir = Path(extract_dir)
    if not extract_dir.is_dir():
        raise PixlConfigError(f"extract folder {extract_dir} does not exist: check the path")
    project, extract_datetime, omop_es_hash = _read_summary(extract_dir)
    public_files = _check_public_files(extract_dir)
    identifiers = link_identifiers(extract_dir / "private")

    procedures_schema = _schema(extract_dir, PROCEDURES_FILE)
    persons_schema = _schema(extract_dir, PERSON_LINKS_FILE)
    links_schema = _schema(extract_dir, PROCEDURE_LINKS_FILE)
    _require(procedures_schema, PROCEDURES_FILE, "procedure_occurrence_id", "id")
    _require(procedures_schema, PROCEDURES_FILE, "person_id", "id")
    _require(persons_schema, PERSON_LINKS_FILE, "person_id", "id")
    _require(persons_schema, PERSON_LINKS_FILE, "PrimaryMrn", "identifier")
    _require(links_schema, PROCEDURE_LINKS_FILE, "procedure_occurrence_id", "id")
    _require(links_schema, PROCEDURE_LINKS_FILE, "AccessionNumber", "identifier")

    date_sources = [
        (relative, column)
        for relative, schema, column in (
            (PROCEDURES_FILE, procedures_schema, "procedure_datetime"),
            (PROCEDURES_FILE, procedures_schema, "procedure_date"),
            (PROCEDURE_LINKS_FILE, links_schema, "procedure_date"),
        )
        if column in schema.names
    ]
    if not date_sources:
        raise PixlConfigError(
            f"{PROCEDURES_FILE} is missing column procedure_datetime (or procedure_date): "
            f"{_REEXPORT}"
        )
    schemas = {PROCEDURES_FILE: procedures_schema, PROCEDURE_LINKS_FILE: links_schema}
    for relative, column in date_sources:
        _require(schemas[relative], relative, column, "date")

    procedure_dates = [c for r, c in date_sources if r == PROCEDURES_FILE]
    link_dates = [c for r, c in date_sources if r == PROCEDURE_LINKS_FILE]
    procedures = _read_columns(
        extract_dir, PROCEDURES_FILE, ["procedure_occurrence_id", "person_id", *procedure_dates]
    )
    persons = _read_columns(extract_dir, PERSON_LINKS_FILE, ["person_id", "PrimaryMrn"])
    persons["PrimaryMrn"] = _as_identifier(
        persons["PrimaryMrn"], PERSON_LINKS_FILE, "PrimaryMrn", first_row=1
    )
    link_uids = ["StudyInstanceUID"] if "StudyInstanceUID" in links_schema.names else []
    if link_uids:
        _require(links_schema, PROCEDURE_LINKS_FILE, "StudyInstanceUID", "text")
    links = _read_columns(
        extract_dir,
        PROCEDURE_LINKS_FILE,
        ["procedure_occurrence_id", "AccessionNumber", *link_dates, *link_uids],
    )
    links["AccessionNumber"] = _as_identifier(
        links["AccessionNumber"], PROCEDURE_LINKS_FILE, "AccessionNumber", first_row=1
    )
    if link_uids:
        links["StudyInstanceUID"] = _as_study_uid(
            links["StudyInstanceUID"], PROCEDURE_LINKS_FILE, "StudyInstanceUID", first_row=1
        )
    links = links.rename(columns={"procedure_date": "link_procedure_date"})

    study_datetime = pd.Series(pd.NaT, index=procedures.index, dtype="datetime64[us]")
    for column in reversed(procedure_dates):  # procedure_datetime wins over procedure_date
        parsed = _as_datetime(procedures[column], PROCEDURES_FILE, column)
        study_datetime = parsed.where(parsed.notna(), study_datetime)
    procedures = procedures.assign(study_datetime=study_datetime)

    joined = procedures.merge(persons, on="person_id", how="left").merge(
        links, on="procedure_occurrence_id", how="left"
    )
    if link_dates:
        fallback = _as_datetime(
            joined["link_procedure_date"], PROCEDURE_LINKS_FILE, "procedure_date"
        )
        joined["study_datetime"] = joined["study_datetime"].where(
            joined["study_datetime"].notna(), fallback
        )
    frame = pd.DataFrame(
        {
            "mrn": joined["PrimaryMrn"].astype("string"),
            "accession_number": joined["AccessionNumber"].astype("string"),
            "procedure_occurrence_id": joined["procedure_occurrence_id"].astype("Int64"),
            "study_datetime": joined["study_datetime"],
            "study_uid": (
                joined["StudyInstanceUID"].astype("string")
                if link_uids
                else pd.Series(pd.NA, index=joined.index, dtype="string")
            ),
        }
    )
    cohort, skipped, duplicates = _finish(frame, project)
    if cohort.empty:
        raise PixlConfigError(
            f"no procedure in {PROCEDURES_FILE} has both an MRN and an accession number in "
            f"private/: check the links files belong to this extract"
        )
    return Extract(
        source_path=extract_dir.absolute(),
        project=project,
        extract_datetime=extract_datetime,
        omop_es_hash=omop_es_hash,
        cohort=cohort,
        public_files=public_files,
        rows_without_links=skipped,
        duplicate_rows=duplicates,
        identifiers=identifiers,
    )


def _as_ids(values: pd.Series, name: str) -> pd.Series:
    """Whole numbers that fit in 64 bits (NA where blank), else the first bad row is named."""
    text = values.str.strip().replace("", pd.NA)
    numbers: list[Any] = []
    for position, value in enumerate(text):
        if value is pd.NA:
            numbers.append(pd.NA)
            continue
        number = int(value.split(".")[0]) if _WHOLE_NUMBER.fullmatch(value) else None
        if number is None or not _INT64[0] <= number <= _INT64[1]:
            raise PixlConfigError(
                f"{name} row {position + 2} column procedure_occurrence_id must hold a whole "
                "number that fits in 64 bits: fix or blank it"
            )
        numbers.append(number)
    return pd.Series(numbers, index=values.index, dtype="Int64")


def read_csv_cohort(path: Path, project: str) -> Extract:
    """Read a CSV cohort (columns in the module docstring) for ``project``.

    A CSV has no OMOP ES log: the extract datetime is the file's modification time (so loading
    the same file again is recognised) and there is no hash and no public file to stage.
    """
    path = Path(path)
    name = path.name
    slug = project_slug(project, source="--project")
    if slug != project:
        raise PixlConfigError(f"--project must be a project slug: use {slug!r}")
    if not path.is_file():
        raise PixlConfigError(f"cohort file {name} does not exist: check the path")
    try:
        table = pd.read_csv(path, dtype="string", keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        raise PixlConfigError(
            f"{name} is not a readable CSV file: save it as UTF-8 CSV with a header line"
        ) from None
    table.columns = [str(c).strip() for c in table.columns]
    for column in ("mrn", "accession_number", "study_datetime"):
        if column not in table.columns:
            raise PixlConfigError(
                f"{name} is missing column {column}: the header must name mrn, "
                "accession_number and study_datetime"
            )
    if "project" in table.columns and (table["project"].str.strip() != project).any():
        raise PixlConfigError(
            f"{name} column project has rows for other projects: split the file per project "
            f"or pass the matching --project"
        )
    procedure_ids = pd.Series(pd.NA, index=table.index, dtype="Int64")
    if "procedure_occurrence_id" in table.columns:
        procedure_ids = _as_ids(table["procedure_occurrence_id"], name)
    frame = pd.DataFrame(
        {
            "mrn": _as_identifier(table["mrn"], name, "mrn", first_row=2),
            "accession_number": _as_identifier(
                table["accession_number"], name, "accession_number", first_row=2
            ),
            "procedure_occurrence_id": procedure_ids,
            "study_datetime": _as_datetime(table["study_datetime"], name, "study_datetime"),
            "study_uid": (
                _as_study_uid(table["study_uid"], name, "study_uid", first_row=2)
                if "study_uid" in table.columns
                else pd.Series(pd.NA, index=table.index, dtype="string")
            ),
        }
    )
    cohort, skipped, duplicates = _finish(frame, project)
    if cohort.empty:
        raise PixlConfigError(f"{name} has no row with both mrn and accession_number: fill them in")
    modified = datetime.fromtimestamp(int(path.stat().st_mtime), tz=UTC)
    return Extract(
        source_path=path.absolute(),
        project=project,
        extract_datetime=modified,
        omop_es_hash=None,
        cohort=cohort,
        rows_without_links=skipped,
        duplicate_rows=duplicates,
    )


# --- staging ----------------------------------------------------------------------------------


def stage_public_files(
    extract: Extract, staging_dir: Path, allow_omop_columns: Mapping[str, str] | None = None
) -> Path | None:
    """Check the public parquet files, copy them to ``staging_dir/<project>/<datetime>/public/``.

    Each file is copied under a temporary name and checked there (columns against the
    allow-list and the project's ``allow_omop_columns``, values against
    ``extract.identifiers``); only once all passed are they renamed. So what is staged is
    exactly what was checked, and neither a half-copied file nor any file of a refused extract
    ever sits under its real name (a refusal raises ``PublicFileRefused``). A parquet file
    staged earlier for the same extract but no longer in it is removed. The SHA-256 of every
    staged file goes into the scan record next to the folder, which the export requires.
    Returns the folder, or None when there is nothing to stage.
    """
    if not extract.public_files:
        return None
    target = Path(staging_dir).absolute() / extract.project / extract.staging_name / "public"
    target.mkdir(parents=True, exist_ok=True)
    partials: dict[str, Path] = {}
    try:
        for source in extract.public_files:
            partial = partials[source.name] = target / f".{source.name}.partial"
            shutil.copyfile(source, partial)
            check_public_file(
                partial,
                f"public/{printable(source.name)}",
                extract.project,
                allow_omop_columns or {},
                extract.identifiers,
                file_name=source.name,
            )
    except BaseException:
        for partial in partials.values():
            partial.unlink(missing_ok=True)
        raise
    digests = {name: sha256_of(partial) for name, partial in partials.items()}
    for name, partial in partials.items():
        os.replace(partial, target / name)
    for stale in target.glob("*.parquet"):
        if stale.name not in digests:
            stale.unlink()
    write_scan_record(target.parent, digests, extract.identifiers)
    return target
