"""Before → after preview of one DICOM instance, for allow-list reviewers.

A reviewer who approves an allow-list wants to see what it does to a real file. The "after" side
comes from ``pixl_core.dicom.deid.deidentify_bytes``, the exact code orthanc-anon runs, never from a
re-implementation, so the preview cannot drift from the engine: what it shows is what leaves.

Every attribute of the input gets a row (file meta, nested sequence items as indented paths,
private attributes by creator and offset), with the action the allow-list applies and the value
after de-identification, or "(removed)". Attributes the engine adds (PatientIdentityRemoved, the
de-identification method codes, ...) get rows marked "added". Bulk values (Pixel Data, OB/OW) are
shown as their size, never their bytes. A refused instance shows the refusal reason and nothing
on the "after" side, because nothing of it would leave.

The "before" column shows identifiers: this runs inside the hospital, on a reviewer's screen,
and its output must not be pasted into a pull request or a log.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from io import BytesIO

from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pixl_core.config.allowlist import AllowList, AttributeKey, Rule, canonical_group
from pixl_core.config.projects import Project
from pixl_core.dicom.deid import REFUSED_UNREADABLE, Refused, deidentify_bytes
from pixl_core.hashing import ProjectHasher

REMOVED = "(removed)"
EMPTY = "(empty)"
ACTION_NOT_LISTED = "not listed"
ACTION_REFUSED = "refused"
ACTION_ADDED = "added"
ACTION_FILE_META = "file meta"
ACTION_CREATOR = "creator"
MAX_VALUE_LENGTH = 64
_BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


@dataclass(frozen=True)
class PreviewRow:
    """One attribute before and after de-identification.

    ``label`` is the attribute's own name; ``path`` the full path through sequences
    ("ViewCodeSequence[1] > CodeValue"); ``depth`` how far to indent it.
    """

    tag: str
    label: str
    vr: str
    before: str
    after: str
    action: str
    depth: int = 0
    path: str = ""


def refusal_reason(rows: Iterable[PreviewRow]) -> str | None:
    """The reason the engine refused the instance, or None if it would leave."""
    for row in rows:
        if row.action == ACTION_REFUSED and row.label == "(instance)":
            return row.after.removeprefix("refused: ")
    return None


def preview(ds_bytes: bytes, project: Project, hasher: ProjectHasher) -> list[PreviewRow]:
    """Rows for every attribute of ``ds_bytes``, before and after the project's allow-list."""
    try:
        source = dcmread(BytesIO(ds_bytes))
    except Exception:  # anything pydicom cannot read, the engine refuses as unreadable too
        return [_instance_row(REFUSED_UNREADABLE)]
    reason: str | None = None
    output: Dataset | None = None
    try:
        output = dcmread(BytesIO(deidentify_bytes(ds_bytes, project, hasher).data))
    except Refused as refusal:
        reason = refusal.reason
    rows: list[PreviewRow] = [_instance_row(reason)] if reason is not None else []
    rows.extend(_meta_rows(source, output, reason))
    manufacturer = str(source.get("Manufacturer", "") or "")
    model = str(source.get("ManufacturerModelName", "") or "")
    allowlist = project.allowlist_for(manufacturer, model)
    rows.extend(_dataset_rows(source, output, allowlist, reason, depth=0, prefix=""))
    if output is not None:
        rows.extend(_added_rows(source, output))
    return rows


def _instance_row(reason: str | None) -> PreviewRow:
    return PreviewRow(
        tag="",
        label="(instance)",
        vr="",
        before="",
        after=f"refused: {reason}",
        action=ACTION_REFUSED,
        path="(instance)",
    )


def _meta_rows(source: Dataset, output: Dataset | None, reason: str | None) -> list[PreviewRow]:
    """File meta is rebuilt by the engine, not filtered: show old and new side by side."""
    rows = []
    out_meta = output.file_meta if output is not None else Dataset()
    for element in source.file_meta:
        after = out_meta.get(element.tag)
        rows.append(
            _row(
                element,
                after,
                ACTION_REFUSED if reason else ACTION_FILE_META,
                depth=0,
                prefix="",
            )
        )
    for element in out_meta:
        if element.tag not in source.file_meta:
            rows.append(_row(None, element, ACTION_FILE_META, depth=0, prefix=""))
    return rows


def _dataset_rows(
    source: Dataset,
    output: Dataset | None,
    allowlist: AllowList | None,
    reason: str | None,
    depth: int,
    prefix: str,
) -> list[PreviewRow]:
    rows: list[PreviewRow] = []
    for element in source:
        rule: Rule | None = None
        if element.tag.group % 2 == 1:
            after, action, label = _private(source, output, element, allowlist)
            if action is None:
                rule = _private_rule(source, element, allowlist)
                action = rule.action.value if rule is not None else ACTION_NOT_LISTED
        else:
            key = AttributeKey(canonical_group(element.tag.group), element.tag.element)
            rule = allowlist.rule_for(key) if allowlist is not None else None
            action = rule.action.value if rule is not None else ACTION_NOT_LISTED
            after = output.get(element.tag) if output is not None else None
            label = None
        if reason is not None:
            action = ACTION_REFUSED
        row = _row(element, after, action, depth=depth, prefix=prefix, label=label)
        rows.append(row)
        if element.VR == "SQ" and element.value is not None:
            rows.extend(_item_rows(element, after, rule, reason, depth, row.path))
    return rows


def _item_rows(
    element: DataElement,
    after: DataElement | None,
    rule: Rule | None,
    reason: str | None,
    depth: int,
    path: str,
) -> list[PreviewRow]:
    rows = []
    out_items = list(after.value) if after is not None and after.VR == "SQ" and after.value else []
    items_allowlist = rule.items if rule is not None else None
    for index, item in enumerate(element.value, start=1):
        out_item = out_items[index - 1] if index <= len(out_items) else None
        item_path = f"{path}[{index}]"
        rows.append(
            PreviewRow(
                tag="(FFFE,E000)",
                label=f"item {index}",
                vr="",
                before="",
                after="" if out_item is not None else REMOVED,
                action=ACTION_REFUSED if reason else "",
                depth=depth + 1,
                path=item_path,
            )
        )
        rows.extend(
            _dataset_rows(
                item, out_item, items_allowlist, reason, depth=depth + 2, prefix=f"{item_path} > "
            )
        )
    return rows


def _creator_of(source: Dataset, element: DataElement) -> str | None:
    number = element.tag.element
    if number < 0x1000:
        return None
    creator = source.get((element.tag.group << 16) | (number >> 8))
    if creator is None or not isinstance(creator.value, str):
        return None
    return creator.value.strip()


def _private_rule(
    source: Dataset, element: DataElement, allowlist: AllowList | None
) -> Rule | None:
    creator = _creator_of(source, element)
    if creator is None or allowlist is None:
        return None
    return allowlist.rule_for(AttributeKey(element.tag.group, element.tag.element & 0xFF, creator))


def _private(
    source: Dataset, output: Dataset | None, element: DataElement, allowlist: AllowList | None
) -> tuple[DataElement | None, str | None, str]:
    """The output element, a fixed action (or None: look up the rule) and the label.

    Private blocks may move in the output (the engine writes them at the first free block), so
    elements are matched by creator and offset, never by tag.
    """
    group, number = element.tag.group, element.tag.element
    if 0x0010 <= number <= 0x00FF:
        creator = str(element.value).strip() if isinstance(element.value, str) else ""
        kept = output is not None and bool(creator) and _has_block(output, group, creator)
        label = f"({group:04X},00xx) private creator"
        return (element if kept else None), ACTION_CREATOR, label
    creator = _creator_of(source, element)
    if creator is None:
        return None, ACTION_NOT_LISTED, f"({group:04X},{number:04X}) [no creator]"
    label = AttributeKey(group, number & 0xFF, creator).label()
    if output is None or not _has_block(output, group, creator):
        return None, None, label
    block = output.private_block(group, creator)
    try:
        return block[number & 0xFF], None, label
    except KeyError:
        return None, None, label


def _has_block(ds: Dataset, group: int, creator: str) -> bool:
    try:
        ds.private_block(group, creator)
    except KeyError:
        return False
    return True


def _added_rows(source: Dataset, output: Dataset) -> list[PreviewRow]:
    """Public attributes the engine writes that the input did not have."""
    return [
        _row(None, element, ACTION_ADDED, depth=0, prefix="")
        for element in output
        if element.tag.group % 2 == 0 and element.tag not in source
    ]


def _row(
    before: DataElement | None,
    after: DataElement | None,
    action: str,
    depth: int,
    prefix: str,
    label: str | None = None,
) -> PreviewRow:
    element = before if before is not None else after
    assert element is not None
    name = label or element.keyword or element.name
    return PreviewRow(
        tag=f"({element.tag.group:04X},{element.tag.element:04X})",
        label=name,
        vr=str(element.VR),
        before=show(before) if before is not None else "",
        after=show(after) if after is not None else REMOVED,
        action=action,
        depth=depth,
        path=f"{prefix}{name}",
    )


def show(element: DataElement) -> str:
    """A short, printable rendering: bulk data by size, long text cut."""
    value = element.value
    if element.VR == "SQ":
        count = len(value) if value is not None else 0
        return f"<{count} item{'s' if count != 1 else ''}>"
    if value is None or value == "" or (isinstance(value, list | MultiValue) and not value):
        return EMPTY
    if isinstance(value, bytes | bytearray) or element.VR in _BULK_VRS:
        size = len(value) if isinstance(value, bytes | bytearray) else 0
        return f"<{size} bytes>"
    if isinstance(value, MultiValue | list | tuple):
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    text = text.replace("\n", " ").replace("\r", " ")
    if len(text) > MAX_VALUE_LENGTH:
        text = text[: MAX_VALUE_LENGTH - 1] + "…"
    return text
