"""Every work state, once: the values the migrations' CHECK constraints allow, in flow order.

A study moves ``queued → fetching → anonymising → exported`` or ends ``not_found``, ``refused``
or ``failed``; a report moves ``queued → fetching → deidentifying → checked`` (or ``flagged``
until a person ``approved`` or ``rejected`` it), then ``exported``, or ends ``missing`` or
``failed``. *Busy* states are those in which PIXL still has work to do on its own; *settled*
states are those in which it has nothing more to do until a person acts (``pixl retry``, a
review, ``pixl export-patient-data``). The CLI, the workers, the demo, the tests and the
benchmarks all take these sets from here, so a new state is added in one place.
"""

from __future__ import annotations

from enum import StrEnum


class StudyState(StrEnum):
    QUEUED = "queued"
    FETCHING = "fetching"
    ANONYMISING = "anonymising"
    EXPORTED = "exported"
    NOT_FOUND = "not_found"
    REFUSED = "refused"
    FAILED = "failed"


class ReportState(StrEnum):
    QUEUED = "queued"
    FETCHING = "fetching"
    DEIDENTIFYING = "deidentifying"
    CHECKED = "checked"
    FLAGGED = "flagged"
    APPROVED = "approved"
    REJECTED = "rejected"
    MISSING = "missing"
    EXPORTED = "exported"
    FAILED = "failed"


STUDY_STATES: tuple[str, ...] = tuple(StudyState)
REPORT_STATES: tuple[str, ...] = tuple(ReportState)

# Imaging: orthanc-raw or orthanc-anon still has work to do.
STUDY_BUSY: tuple[str, ...] = (StudyState.QUEUED, StudyState.FETCHING, StudyState.ANONYMISING)
# Imaging: nothing more happens without a person (pixl retry).
STUDY_SETTLED: tuple[str, ...] = tuple(s for s in StudyState if s not in STUDY_BUSY)

# Reports: the EHR worker still has work to do.
REPORT_BUSY: tuple[str, ...] = (ReportState.QUEUED, ReportState.FETCHING, ReportState.DEIDENTIFYING)
# Reports: worked on, waiting for review or export, or ended.
REPORT_SETTLED: tuple[str, ...] = tuple(s for s in ReportState if s not in REPORT_BUSY)
