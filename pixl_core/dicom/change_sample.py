"""What an allow-list change does to real files: ``pixl allowlist diff --sample DIR``.

For each changed attribute the reviewer sees how many sample files it applies to (files that
carry the attribute and whose device gets the changed entry: an override row counts only the
vendor's files) and one before → after pair from one such file.

The pair may end up in a pull request, outside the hospital, so:

- "before" is the original attribute's VR and length only, never its value;
- "after" is the value the engine (``deidentify_bytes``, what ``pixl anonymise`` and
  orthanc-anon run) writes with the head side's project, shown only where PS3.15 allows the
  attribute to leave (the Basic Profile or a claimed option). A finding, even a justified one,
  shows the output's VR and length only until the change is approved and merged;
- pseudonyms (hashes, UIDs, date shifts) are computed with a throwaway key made for this run,
  so they have the shape of the real ones without being the values that will leave, and no
  ``PIXL_HASH_KEY`` is needed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset

from pixl_core.config.allowlist import AttributeKey, Rule
from pixl_core.config.allowlist_diff import Change, Status
from pixl_core.config.projects import Project
from pixl_core.dicom.deid import Refused, deidentify_bytes
from pixl_core.dicom.header import PIXEL_DATA_TAG, UnreadableDicom, parse_header
from pixl_core.dicom.preview import REMOVED, show
from pixl_core.hashing import ProjectHasher

SHOWN = frozenset({Status.ALLOWED, Status.OPTION})
REFUSED_INTERNAL = "internal_error"
_REPEATING = {0x5000: 0x50FF, 0x6000: 0x60FF}


@dataclass(frozen=True)
class Sample:
    """What the sample says of one change: ``files`` it applies to, one pair (or None)."""

    files: int
    before: str | None = None
    after: str | None = None


@dataclass
class _File:
    path: Path
    dataset: Dataset
    has_pixels: bool


@dataclass
class SampleSet:
    """Sample files read once (headers only); outputs computed once per file and project."""

    files: list[_File]
    unreadable: int = 0
    _hashers: dict[str, ProjectHasher] = field(default_factory=dict)
    _outputs: dict[tuple[str, Path], tuple[Dataset | None, str | None]] = field(
        default_factory=dict
    )

    @classmethod
    def read(cls, paths: Iterable[Path]) -> SampleSet:
        files, unreadable = [], 0
        for path in paths:
            try:
                parsed = parse_header(path.read_bytes())
            except (OSError, UnreadableDicom):  # counted: not every file of a folder is DICOM
                unreadable += 1
                continue
            files.append(_File(path, parsed.dataset, bool(parsed.pixel_element)))
        return cls(files=files, unreadable=unreadable)

    def output(self, file: _File, project: Project) -> tuple[Dataset | None, str | None]:
        """The de-identified dataset (or the refusal reason) of ``file`` under ``project``."""
        key = (project.slug, file.path)
        if key not in self._outputs:
            hasher = self._hashers.setdefault(
                project.slug, ProjectHasher.for_project(project.slug, secret=os.urandom(32))
            )
            try:
                data = deidentify_bytes(file.path.read_bytes(), project, hasher).data
                self._outputs[key] = (dcmread(BytesIO(data)), None)
            except Refused as refusal:
                self._outputs[key] = (None, refusal.reason)
            except Exception:  # an engine error on one file must not stop the report
                self._outputs[key] = (None, REFUSED_INTERNAL)
        return self._outputs[key]


def sample_change(change: Change, project: Project | None, sample: SampleSet) -> Sample | None:
    """The sample for one row; None for a settings row (no attribute to look for)."""
    if not change.path or project is None:
        return None
    applying = [
        file
        for file in sample.files
        if _carries(file, change.path)
        and _rule_at(project, file.dataset, change.path) is change.head_rule
    ]
    if not applying:
        return Sample(files=0)
    reasons = []
    for file in applying:
        output, refusal = sample.output(file, project)
        if output is None:
            reasons.append(refusal or "refused")
            continue
        before = _size(_find(file.dataset, change.path))
        found = _find(output, change.path)
        if found is None:
            after = REMOVED
        elif change.status in SHOWN:
            after = show(found[0][found[1]])
        else:
            after = f"{_size(found)} (value withheld: a finding, not yet approved)"
        return Sample(files=len(applying), before=before, after=after)
    return Sample(files=len(applying), before=None, after=f"every file refused ({reasons[0]})")


def _rule_at(project: Project, ds: Dataset, path: Sequence[AttributeKey]) -> Rule | None:
    """The head rule that governs ``path`` for this file's device (base or override)."""
    manufacturer = str(ds.get("Manufacturer", "") or "")
    model = str(ds.get("ManufacturerModelName", "") or "")
    allowlist = project.allowlist_for(manufacturer, model)
    rule = None
    for key in path:
        if allowlist is None:
            return None
        rule = allowlist.rule_for(key)
        if rule is None:
            return None
        allowlist = rule.items
    return rule


def _carries(file: _File, path: Sequence[AttributeKey]) -> bool:
    if len(path) == 1 and not path[0].is_private and path[0].tag == PIXEL_DATA_TAG:
        return file.has_pixels
    return _find(file.dataset, path) is not None


def _find(ds: Dataset, path: Sequence[AttributeKey]) -> tuple[Dataset, int] | None:
    """(the dataset holding it, its tag) for the first element at ``path``; items searched in
    order, private attributes by creator and offset in whatever block they sit."""
    key, rest = path[0], path[1:]
    for tag in _tags(ds, key):
        if not rest:
            return ds, tag
        element = ds[tag]
        if element.VR != "SQ" or not element.value:
            continue
        for item in element.value:
            found = _find(item, rest)
            if found is not None:
                return found
    return None


def _tags(ds: Dataset, key: AttributeKey) -> list[int]:
    if key.is_private:
        assert key.creator is not None
        try:
            block = ds.private_block(key.group, key.creator)
        except KeyError:
            return []
        tag = block.get_tag(key.element)
        return [tag] if tag in ds else []
    high = _REPEATING.get(key.group, key.group)
    groups = range(key.group, high + 1, 2)
    return [tag for g in groups if (tag := (g << 16) | key.element) in ds]


def _size(found: tuple[Dataset, int] | None) -> str:
    """The element's VR and length, never its value."""
    if found is None:
        return "absent"
    ds, tag = found
    raw = ds.get_item(tag)
    if isinstance(raw, RawDataElement) and raw.length != 0xFFFFFFFF:
        vr = raw.VR or ds[tag].VR
        return f"{vr}, {raw.length} bytes"
    element: DataElement = ds[tag]
    if element.VR == "SQ":
        count = len(element.value or [])
        return f"SQ, {count} item{'s' if count != 1 else ''}"
    value = element.value
    if value is None:
        return f"{element.VR}, 0 bytes"
    if isinstance(value, bytes | bytearray):
        return f"{element.VR}, {len(value)} bytes"
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        text = str(value)
    else:  # a multi-valued element, as it would be written: values joined by backslashes
        text = "\\".join(str(v) for v in value)
    return f"{element.VR}, {len(text.encode())} bytes"
