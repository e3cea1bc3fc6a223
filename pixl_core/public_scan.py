"""What a public OMOP ES file must pass before it is staged and again before it leaves.

Public files go to the Data Safe Haven exactly as OMOP ES wrote them, so PIXL checks them twice:
``pixl populate`` when it stages them (it has the extract's private link files at hand), and the
EHR module's export just before it sends them (``pixl_ehr.dsh_export``). Each check is:

1. **Columns, by allow-list** (``check_columns``): the file must hold an OMOP CDM table PIXL
   exports and only that table's CDM columns (``pixl_core.config.omop_columns``); a column that
   may hold an identifier or free text (every ``*_source_value``...) only if the project's file
   lets it out with a justification.
2. **Values, against the cohort's identifiers** (``scan_values``): no value may equal an MRN,
   NHS number or accession number of the cohort, or contain one as a word ("MRN FAKE0001",
   "NHS 943 476 5919"). Whole-number columns are compared with numeric identifiers too, since an
   MRN can travel as an integer. Identifiers shorter than ``MIN_IDENTIFIER_LENGTH`` characters
   (after dropping spaces and dashes) are not looked for: they cannot be told from ordinary
   values. Values of a type that cannot be checked (nested, binary) refuse the column.

``populate`` scans against every identifier of the extract's private link files
(``link_identifiers``), then writes a record (``write_scan_record``) of the SHA-256 of each
file it scanned next to the staged folder. The export refuses a staged file that the record does
not vouch for (staged by an older PIXL, or changed since), and scans again against the
identifiers PIXL's database holds for the project (and the link files, when the extract folder
is still readable there).

A refusal is a ``PublicFileRefused``: one line naming the file, the table and column and the
kind of identifier, never a value, so it can be logged and shown anywhere.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pixl_core.config.omop_columns import omop_columns
from pixl_core.errors import PixlConfigError

MIN_IDENTIFIER_LENGTH = 5
SCAN_RECORD = "public_scan.json"
MRN, NHS_NUMBER, ACCESSION = "MRN", "NHS number", "accession number"
# Columns of the private link files that hold identifiers, by their name lowercased with
# underscores, spaces and dashes dropped.
LINK_COLUMN_KINDS = {
    "primarymrn": MRN,
    "mrn": MRN,
    "nhsnumber": NHS_NUMBER,
    "nhsno": NHS_NUMBER,
    "accessionnumber": ACCESSION,
}
_FIX = "remove it from the extract's public files (re-export it with OMOP ES)"
_SEPARATORS = re.compile(r"[\s\-]+")
_BETWEEN_DIGITS = re.compile(r"(?<=\d)[\s\-]+(?=\d)")
_WORDS = re.compile(r"[A-Z0-9]+")


class PublicFileRefused(PixlConfigError):
    """A public file may not leave: the message names file, table, column and why."""

    code = "public_file_refused"


def printable(name: object, limit: int = 64) -> str:
    """A file or column name safe for a one-line message: control characters escaped, cut."""
    text = str(name).encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _normalise(value: str) -> str:
    return _SEPARATORS.sub("", value).upper()


def _link_kind(column: str) -> str | None:
    return LINK_COLUMN_KINDS.get(re.sub(r"[\s_\-]", "", column).lower())


@dataclass(frozen=True, eq=False)
class Identifiers:
    """The cohort's identifiers, normalised (upper case, no spaces or dashes), with their kind.

    Holds identifiers: ``repr`` gives counts only, so logging one leaks nothing.
    """

    texts: dict[str, str] = field(default_factory=dict)
    numbers: dict[int, str] = field(default_factory=dict)

    @classmethod
    def from_values(cls, values_by_kind: Mapping[str, Iterable[object]]) -> Identifiers:
        texts: dict[str, str] = {}
        numbers: dict[int, str] = {}
        for kind, values in values_by_kind.items():
            for value in values:
                if value is None:
                    continue
                if isinstance(value, float) and value.is_integer():
                    value = int(value)  # an NHS number read from a float column
                text = _normalise(str(value))
                if len(text) < MIN_IDENTIFIER_LENGTH:
                    continue
                texts.setdefault(text, kind)
                # Leading zeros vanish in an integer column: compare the number only while it
                # is still long enough to be told from an ordinary id.
                if text.isdigit() and len(text.lstrip("0")) >= MIN_IDENTIFIER_LENGTH:
                    numbers.setdefault(int(text), kind)
        return cls(texts, numbers)

    def merged(self, other: Identifiers) -> Identifiers:
        return Identifiers({**other.texts, **self.texts}, {**other.numbers, **self.numbers})

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for kind in self.texts.values():
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    def kind_in_text(self, value: str) -> str | None:
        """The kind of identifier ``value`` equals or holds as a word; None if none."""
        whole = self.texts.get(_normalise(value))
        if whole is not None:
            return whole
        for word in _WORDS.findall(_BETWEEN_DIGITS.sub("", value.upper())):
            kind = self.texts.get(word)
            if kind is not None:
                return kind
        return None

    def __repr__(self) -> str:
        return f"Identifiers({self.counts()})"


def link_identifiers(private_dir: Path) -> Identifiers:
    """Every MRN, NHS number and accession number in the extract's private parquet files.

    Columns are found by name (``LINK_COLUMN_KINDS``). A file that cannot be read raises a
    ``PixlConfigError`` naming it: a scan that silently skipped it would vouch for nothing.
    """
    values: dict[str, list[object]] = {}
    for path in sorted(Path(private_dir).glob("*.parquet")):
        label = f"private/{printable(path.name)}"
        try:
            names = pq.read_schema(path).names
            wanted = [n for n in names if _link_kind(n)]
            table = pq.read_table(path, columns=wanted) if wanted else None
        except (pa.ArrowException, OSError):
            raise PixlConfigError(
                f"{label} is not a readable parquet file: re-export the extract with OMOP ES "
                "(the copy may be incomplete)"
            ) from None
        for name in wanted:
            assert table is not None
            column = pc.unique(table.column(name)).drop_null()
            kind = _link_kind(name)
            assert kind is not None
            values.setdefault(kind, []).extend(column.to_pylist())
    return Identifiers.from_values(values)


# --- columns ----------------------------------------------------------------------------------


def check_columns(
    label: str,
    file_name: str,
    columns: Iterable[str],
    project: str | None = None,
    allowed: Mapping[str, str] | None = None,
) -> str:
    """Refuse a file that is not an exported OMOP table or holds a column not allowed in it.

    ``allowed`` is the project's ``allow_omop_columns``; with ``project`` None the restricted
    columns are not checked (the extract reader knows only the CDM, not yet the project).
    Returns the table's name.
    """
    cdm = omop_columns()
    table = cdm.table_for_file(file_name)
    if table is None:
        raise PublicFileRefused(
            f"{label} is not a file of an OMOP CDM {cdm.cdm_version} table that PIXL exports "
            f"(see pixl_core/config/data/README.md): {_FIX}",
            code="public_table_refused",
        )
    for column in columns:
        where = f"{label}: column {table}.{printable(column)}"
        if not cdm.has_column(table, column):
            raise PublicFileRefused(
                f"{where} is not an OMOP CDM {cdm.cdm_version} column, so it may not leave: {_FIX}",
                code="public_column_refused",
            )
        reason = cdm.restriction(table, column)
        if (
            project is not None
            and reason is not None
            and f"{table}.{column}" not in (allowed or {})
        ):
            raise PublicFileRefused(
                f"{where} may hold {reason}: remove it from the public files, or let it out "
                f"in projects/{project}.yaml under allow_omop_columns: with a justification",
                code="public_column_restricted",
            )
    return table


# --- values -----------------------------------------------------------------------------------


def _int_range(arrow_type: pa.DataType) -> tuple[int, int]:
    bits = arrow_type.bit_width
    if pa.types.is_unsigned_integer(arrow_type):
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _hit(column: pa.ChunkedArray, identifiers: Identifiers) -> tuple[str, int] | None:
    """(kind of the first identifier found, distinct values that hold one), or None.

    Raises ``TypeError`` for a type that cannot be checked (nested, binary...).
    """
    arrow_type = column.type
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
        column = column.cast(arrow_type)
    if pa.types.is_null(arrow_type) or pa.types.is_boolean(arrow_type):
        return None
    if pa.types.is_temporal(arrow_type):
        return None  # dates and times: no identifier PIXL looks for is one
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        values = pc.unique(column).drop_null().to_pylist()
        kinds = [kind for kind in map(identifiers.kind_in_text, values) if kind]
        return (kinds[0], len(kinds)) if kinds else None
    numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal)
    if not any(is_type(arrow_type) for is_type in numeric):
        raise TypeError(arrow_type)
    if not identifiers.numbers:
        return None
    unique = pc.unique(column).drop_null()
    if pa.types.is_integer(arrow_type):
        # Keep only the values equal to an identifier this type can hold, in Arrow.
        low, high = _int_range(arrow_type)
        candidates = [n for n in identifiers.numbers if low <= n <= high]
        if not candidates:
            return None
        unique = unique.filter(pc.is_in(unique, pa.array(candidates, arrow_type)))
    kinds = []
    for value in unique.to_pylist():
        if not isinstance(value, int):
            number = float(value)
            if not math.isfinite(number) or not number.is_integer():
                continue
            value = int(number)
        kind = identifiers.numbers.get(value)
        if kind is not None:
            kinds.append(kind)
    return (kinds[0], len(kinds)) if kinds else None


def scan_values(path: Path, label: str, table: str, identifiers: Identifiers) -> None:
    """Refuse the file if a value of any column equals or holds one of ``identifiers``."""
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError):
        raise PublicFileRefused(f"{label} is not a readable parquet file: {_FIX}") from None
    for name in names:
        where = f"{label}: column {table}.{printable(name)}"
        try:
            column = pq.read_table(path, columns=[name]).column(0)
        except (pa.ArrowException, OSError):
            raise PublicFileRefused(f"{label} is not a readable parquet file: {_FIX}") from None
        try:
            hit = _hit(column, identifiers)
        except TypeError:
            raise PublicFileRefused(
                f"{where} has values of type {printable(column.type)}, which PIXL cannot check "
                f"for identifiers (OMOP columns hold numbers, text or dates): {_FIX}",
                code="public_column_refused",
            ) from None
        if hit is not None:
            kind, count = hit
            raise PublicFileRefused(
                f"{where} holds {count} value(s) equal to or containing an {kind} of the "
                "cohort, so the file may not leave: remove the column or fix the extract",
                code="public_identifier_found",
            )


def check_public_file(
    path: Path,
    label: str,
    project: str,
    allowed: Mapping[str, str],
    identifiers: Identifiers,
    file_name: str | None = None,
) -> None:
    """Both checks on one file; ``file_name`` is the name it is exported under."""
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError):
        raise PublicFileRefused(f"{label} is not a readable parquet file: {_FIX}") from None
    table = check_columns(label, file_name or path.name, names, project, allowed)
    scan_values(path, label, table, identifiers)


# --- the record of a scan ---------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_scan_record(folder: Path, digests: Mapping[str, str], identifiers: Identifiers) -> Path:
    """Record which files (by SHA-256) passed the scan, and against how many identifiers of
    each kind; no identifier is written. Written under a temporary name and renamed."""
    record = {
        "omop_cdm_version": omop_columns().cdm_version,
        "files": dict(sorted(digests.items())),
        "identifiers_scanned": identifiers.counts(),
    }
    target = Path(folder) / SCAN_RECORD
    partial = target.with_name(f".{SCAN_RECORD}.partial")
    partial.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    partial.replace(target)
    return target


def read_scan_record(folder: Path) -> dict[str, str]:
    """``{file name: sha256}`` of the files a scan passed; empty if there is no readable record."""
    try:
        record = json.loads((Path(folder) / SCAN_RECORD).read_text(encoding="utf-8"))
        return {str(k): str(v) for k, v in record["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
