"""The OMOP CDM tables and columns a public OMOP ES file may hold, read from shipped data.

Public files leave the hospital exactly as OMOP ES wrote them, so what they may hold is decided
by an allow-list rather than a deny-list: a column nobody thought of (``Surname``, ``nhs_no``)
is refused because it is not in the CDM, not let through because nobody listed it as bad. The
list is data (``data/omop_cdm_v5.4_columns.yaml``, from the published CDM v5.4 field
definitions; see ``data/README.md``) so that moving to a new CDM version is a reviewed change of
one file.

Two kinds of entry, both read here:

- ``tables``: every table PIXL may export and every column the CDM gives it. A public file is
  named after its table (``public/PERSON.parquet``; the name's case is ignored).
- ``restricted``: PIXL's own policy, columns of those tables that may hold a local identifier,
  a direct identifier or free text (every ``*_source_value``, a date of birth, an address...).
  They are refused unless the project's file lets each one out by name with a justification
  (``allow_omop_columns:`` in ``projects/<slug>.yaml``, read by ``pixl_core.config.projects``).

The checks themselves (and the scan of values against the cohort's identifiers) are in
``pixl_core.public_scan``; this module only answers questions about the list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from pixl_core.config.yaml_file import safe_load

DATA_FILE = Path(__file__).resolve().parent / "data" / "omop_cdm_v5.4_columns.yaml"
SOURCE_VALUE_SUFFIX = "_source_value"
_SOURCE_VALUE_RULE = "*" + SOURCE_VALUE_SUFFIX


@dataclass(frozen=True)
class OmopColumns:
    """The allow-list: ``tables`` maps each table to its columns; ``restricted`` maps
    ``TABLE.column`` (or ``*_source_value``) to why it is refused by default."""

    cdm_version: str
    tables: Mapping[str, frozenset[str]]
    restricted: Mapping[str, str]

    def table_for_file(self, file_name: str) -> str | None:
        """The table a public file holds (``person.parquet`` → ``PERSON``), or None."""
        table = Path(file_name).stem.upper()
        return table if table in self.tables else None

    def has_column(self, table: str, column: str) -> bool:
        return column in self.tables.get(table, frozenset())

    def restriction(self, table: str, column: str) -> str | None:
        """Why ``table.column`` is refused unless a project lets it out; None if it is not."""
        reason = self.restricted.get(f"{table}.{column}")
        if reason is None and column.endswith(SOURCE_VALUE_SUFFIX):
            reason = self.restricted.get(_SOURCE_VALUE_RULE)
        return reason


@cache
def omop_columns() -> OmopColumns:
    """The shipped allow-list (read once per process)."""
    return load_omop_columns(DATA_FILE)


def load_omop_columns(path: Path) -> OmopColumns:
    """Read and check an allow-list file; a broken file is a bug in PIXL, so this asserts."""
    raw = safe_load(path.read_text(encoding="utf-8"))
    tables = {str(t).upper(): frozenset(str(c) for c in cols) for t, cols in raw["tables"].items()}
    restricted = {str(k): str(v) for k, v in raw["restricted"].items()}
    for key in restricted:
        if key != _SOURCE_VALUE_RULE:
            table, _, column = key.partition(".")
            assert column in tables.get(table, ()), f"{path.name}: restricted {key} is not listed"
    return OmopColumns(str(raw["cdm_version"]), tables, restricted)
