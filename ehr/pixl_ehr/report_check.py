"""The second-method check of one de-identified report, as the worker and the review run it.

One function so that the report worker (``pixl_ehr.report_worker``) and the re-check of a
redacted report (``pixl_ehr.review``) look for exactly the same things: the patient's own
identifiers (EMAP's, plus the work item's MRN and accession number) and the identifier patterns
of ``pixl_core.text.checker.check_report``. Findings come back as ``{"kind", "start", "end"}``
dicts, never text.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

# check_report(text, identifiers) -> CheckResult(flagged, findings[Finding(kind, start, end)])
Checker = Callable[[str, Any], Any]
# Builds the checker's PatientIdentifiers from keyword arguments.
IdentifiersFactory = Callable[..., Any]
Finding = dict[str, Any]


def accepted_fields(factory: IdentifiersFactory) -> frozenset[str] | None:
    """The keyword arguments ``factory`` accepts, or None if it takes any."""
    if dataclasses.is_dataclass(factory):
        return frozenset(f.name for f in dataclasses.fields(factory))
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(p.name for p in parameters)


def check_text(
    text: str,
    mrn: str,
    accession_number: str,
    emap_identifiers: Mapping[str, Any],
    checker: Checker | None = None,
    identifiers_factory: IdentifiersFactory | None = None,
) -> tuple[bool, list[Finding]]:
    """The checker's verdict as ``(flagged, [{"kind", "start", "end"}, ...])``.

    The accession number is an identifier too (it is what the export pseudonymises).
    ``pixl_core.text.checker.PatientIdentifiers`` has a field for it (issue 9), so it is passed
    in; a checker whose identifiers lack one (an older or a stand-in checker) is run a second
    time with the accession number in the MRN's place and its
    ``mrn`` findings are kept as ``accession_number``: the checker's own whole-token
    search, not a second implementation of it.
    """
    if checker is None or identifiers_factory is None:
        from pixl_core.text import checker as default

        checker = checker or default.check_report
        identifiers_factory = identifiers_factory or default.PatientIdentifiers
    fields = accepted_fields(identifiers_factory)
    values: dict[str, Any] = {**emap_identifiers, "mrn": mrn}
    for name in ("accession_number", "accession"):
        values[name] = accession_number
    if fields is not None:
        values = {k: v for k, v in values.items() if k in fields}
    verdict = checker(text, identifiers_factory(**values))
    findings = [
        {"kind": str(f.kind), "start": int(f.start), "end": int(f.end)} for f in verdict.findings
    ]
    if fields is not None and "mrn" in fields and not fields & {"accession_number", "accession"}:
        again = checker(text, identifiers_factory(mrn=accession_number))
        findings.extend(
            {"kind": "accession_number", "start": int(f.start), "end": int(f.end)}
            for f in again.findings
            if f.kind == "mrn"
        )
        findings.sort(key=lambda f: (f["start"], f["end"], f["kind"]))
    return bool(verdict.flagged) or bool(findings), findings
