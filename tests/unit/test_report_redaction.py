"""Masking a flagged report's findings (``pixl reports redact``), and what the review shows."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from pixl_cli import review_cmds
from pixl_ehr import redaction
from pixl_ehr.review import Report

TEXT = "Seen by Mr Smith on 12/03/1961, NHS 943 476 5919."


def test_each_finding_becomes_its_kind_in_capitals():
    findings = [
        {"kind": "name", "start": 11, "end": 16},
        {"kind": "date_of_birth", "start": 20, "end": 30},
        {"kind": "nhs_number", "start": 36, "end": 48},
    ]
    assert redaction.mask(TEXT, findings) == (
        "Seen by Mr [NAME] on [DATE_OF_BIRTH], NHS [NHS_NUMBER]."
    )


def test_overlapping_findings_are_masked_as_one_named_by_the_longest():
    findings = [
        {"kind": "nhs_number_pattern", "start": 36, "end": 48},
        {"kind": "phone", "start": 32, "end": 48},  # overlaps, longer
        {"kind": "name", "start": 11, "end": 16},
        {"kind": "mrn", "start": 16, "end": 19},  # touches the name: merged, no gap
    ]
    assert redaction.mask(TEXT, findings) == "Seen by Mr [NAME] 12/03/1961, [PHONE]."


def test_no_findings_leave_the_text_as_it_is():
    assert redaction.mask(TEXT, []) == TEXT


@pytest.mark.parametrize(("start", "end"), [(-1, 3), (5, 5), (40, len(TEXT) + 1)])
def test_a_finding_outside_the_text_is_refused(start, end):
    with pytest.raises(ValueError, match="outside"):
        redaction.mask(TEXT, [{"kind": "name", "start": start, "end": end}])


REPORT = Report(
    id=7,
    project="chest-xray",
    state="flagged",
    mrn="M1",
    accession_number="A1",
    text=TEXT,
    findings=[{"kind": "name", "start": 11, "end": 16}],
)


def shown(monkeypatch, terminal: bool, no_text: bool = False) -> str:
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, width=200, color_system=None)
    monkeypatch.setattr(review_cmds, "console", console)
    review_cmds._show(REPORT, REPORT.text, REPORT.findings, no_text)
    return out.getvalue()


def test_the_text_is_shown_at_a_terminal_only(monkeypatch):
    at_terminal = shown(monkeypatch, terminal=True)
    assert "1 findings: name 11-16" in at_terminal and TEXT in at_terminal
    piped = shown(monkeypatch, terminal=False)
    assert "1 findings: name 11-16" in piped
    assert "Smith" not in piped and "text not shown here" in piped
    assert "Smith" not in shown(monkeypatch, terminal=True, no_text=True)


def test_report_repr_leaves_text_and_identifiers_out():
    assert "Smith" not in repr(REPORT) and "M1" not in repr(REPORT)
