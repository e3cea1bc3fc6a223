"""Reading and writing the JSONL files of ``pixl reports check``.

Input, one report a line (blank lines are skipped)::

    {"id": ..., "text": "...", "identifiers": {"name", "given_name", "family_name", "mrn",
     "nhs_number", "date_of_birth", "address", "postcode", "phone", "accession_number",
     "other_ids", "institution"}}

(the last three added by issue 9: ``other_ids`` holds one or more IDs separated by a backslash,
comma or semicolon).

Output, one line per input report, in input order::

    {"id": ..., "flagged": true, "findings": [{"kind": "name", "start": 10, "end": 15}]}

Malformed input stops the run at the first bad line, and no output file is written: a partial
output would look like a complete check of fewer reports, and the second method must fail closed.
The error names the line number and what is wrong, never the line's content (it holds a report
and identifiers). Rules, strict where leniency could silently check less:

- ``id``: a string or an integer, echoed as given.
- ``text``: a string.
- ``identifiers``: an object (it may be empty); each key is one of ``IDENTIFIER_FIELDS`` (a
  misspelt key would otherwise silently check nothing) and each value a string or null.
  ``date_of_birth`` must be ``YYYY-MM-DD``, ``nhs_number`` ten digits (spaces/dashes allowed),
  ``postcode`` a UK postcode, ``phone`` at least six digits.
- Other top-level keys are ignored, so producers may add fields (the interface grows by adding).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

from pixl_core.errors import PixlConfigError, PixlError
from pixl_core.text.checker import (
    CheckResult,
    PatientIdentifiers,
    check_report,
    validate_identifiers,
)

IDENTIFIER_FIELDS = tuple(f.name for f in fields(PatientIdentifiers))


class ReportInputError(PixlError):
    """A malformed input line: the message names the line number and the problem only."""


@dataclass(frozen=True)
class ReportRecord:
    """One input line, validated."""

    line_number: int
    id: str | int
    text: str
    identifiers: PatientIdentifiers


@dataclass
class CheckSummary:
    """What a run found: ``kinds`` counts flagged reports by each kind of finding they hold."""

    checked: int = 0
    flagged: int = 0
    kinds: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        """``checked N reports, F flagged (name 3, nhs_number 1)``."""
        text = f"checked {self.checked} reports, {self.flagged} flagged"
        if self.kinds:
            text += " (" + ", ".join(f"{k} {n}" for k, n in sorted(self.kinds.items())) + ")"
        return text


def parse_line(raw: bytes | str, line_number: int) -> ReportRecord | None:
    """Validate one input line; ``None`` for a blank line. Raises ``ReportInputError``."""

    def bad(problem: str) -> ReportInputError:
        return ReportInputError(f"line {line_number}: {problem}")

    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise bad("not valid UTF-8") from None
    if not raw.strip():
        return None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:  # exc.msg describes the syntax, never the content
        raise bad(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise bad("not valid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise bad("not a JSON object")
    if "id" not in data:
        raise bad('missing "id"')
    record_id = data["id"]
    if isinstance(record_id, bool) or not isinstance(record_id, str | int):
        raise bad('"id" must be a string or an integer')
    if not isinstance(data.get("text"), str):
        raise bad('missing "text"' if "text" not in data else '"text" must be a string')
    identifiers = data.get("identifiers")
    if not isinstance(identifiers, dict):
        if "identifiers" not in data:
            raise bad('missing "identifiers" (give {} if none are known)')
        raise bad('"identifiers" must be an object')
    if any(key not in IDENTIFIER_FIELDS for key in identifiers):
        raise bad('"identifiers" has a field other than ' + ", ".join(IDENTIFIER_FIELDS))
    values: dict[str, str | None] = {}
    for key, value in identifiers.items():
        if value is not None and not isinstance(value, str):
            raise bad(f"identifiers.{key} must be a string or null")
        values[key] = value
    patient = PatientIdentifiers(**values)
    try:
        validate_identifiers(patient)
    except ValueError as exc:  # the message names the field and the rule, not the value
        raise bad(f"identifiers.{exc}") from None
    return ReportRecord(line_number, record_id, data["text"], patient)


def iter_records(lines: Iterable[bytes | str]) -> Iterator[ReportRecord]:
    """Validated records from input lines (numbered from 1), skipping blank lines."""
    for number, raw in enumerate(lines, start=1):
        record = parse_line(raw, number)
        if record is not None:
            yield record


def result_line(record_id: str | int, result: CheckResult) -> str:
    """One output line: offsets and kinds only, never the matched text."""
    return json.dumps(
        {
            "id": record_id,
            "flagged": result.flagged,
            "findings": [{"kind": f.kind, "start": f.start, "end": f.end} for f in result.findings],
        },
        ensure_ascii=False,
    )


def check_file(
    input_path: Path, output_path: Path, *, progress: Callable[[int], None] | None = None
) -> CheckSummary:
    """Check every report of ``input_path`` and write the results to ``output_path``.

    The output appears (atomically, by rename) only when every line was good. ``progress`` is
    called with the number of input bytes consumed since the last call. Raises
    ``PixlConfigError`` when a file cannot be read or written (exit 2), ``ReportInputError`` on
    the first malformed line (exit 1).
    """
    try:
        source = input_path.open("rb")
    except OSError as exc:
        raise PixlConfigError(f"cannot read {input_path}: {exc.strerror}") from None
    target_dir = output_path.parent if str(output_path.parent) else Path()
    try:
        handle, temp_name = tempfile.mkstemp(
            dir=target_dir, prefix=f".{output_path.name}.", suffix=".partial"
        )
    except OSError as exc:
        source.close()
        raise PixlConfigError(f"cannot write to {target_dir}: {exc.strerror}") from None
    summary = CheckSummary()
    try:
        with source, os.fdopen(handle, "w", encoding="utf-8") as out:
            for record in iter_records(_counting(source, progress)):
                result = check_report(record.text, record.identifiers)
                out.write(result_line(record.id, result) + "\n")
                summary.checked += 1
                if result.flagged:
                    summary.flagged += 1
                    summary.kinds.update({f.kind for f in result.findings})
        os.replace(temp_name, output_path)
    except OSError as exc:
        _remove_quietly(temp_name)
        raise PixlConfigError(
            f"cannot check {input_path} into {output_path}: {exc.strerror}"
        ) from None
    except BaseException:
        _remove_quietly(temp_name)
        raise
    return summary


def _counting(source: Iterable[bytes], progress: Callable[[int], None] | None) -> Iterator[bytes]:
    for raw in source:
        if progress is not None:
            progress(len(raw))
        yield raw


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
