"""Tag allow-lists: the YAML files that say which DICOM attributes may leave, and how.

An allow-list is data, reviewed by information governance as a pull request. Every attribute
that may leave is listed with one action; everything else is removed. Loading validates the
whole file before anything runs, and every problem is reported as one line naming the file, the
entry and what to change, because a reviewer or data engineer must be able to fix it without
reading Python.

File shape::

    description: Base list for every project
    match:                      # override files only: chosen per instance by regex
      manufacturer: "(?i)^philips"
      model: "(?i)digitaldiagnost"
    attributes:
      - attribute: PatientSex          # keyword, or "(gggg,eeee)"
        action: keep
        justification: needed to interpret the image
      - attribute: "(0019,xx10)"        # private: creator + element offset, never a raw number
        private_creator: GEMS_ACQU_01
        vr: DS
        action: keep
      - attribute: RequestAttributesSequence
        action: keep
        items:                          # a kept sequence carries its own allow-list
          - attribute: RequestedProcedureDescription
            action: keep
"""

from __future__ import annotations

# pydicom (~0.25 s to import, numpy with it) is imported inside the functions that use its
# dictionary: `pixl status` and `pixl --help` load projects (for slugs) without reading DICOM.
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from pixl_core.config.yaml_file import read_mapping, refuse_unknown_keys
from pixl_core.errors import InvalidAllowlistError


class Action(StrEnum):
    """The closed set of things an allow-list can do to an attribute."""

    KEEP = "keep"
    EMPTY = "empty"
    REPLACE = "replace"
    HASH = "hash"
    UID = "uid"
    SHIFT = "shift"
    TRUNCATE = "truncate"
    REMOVE = "remove"


# Which value representations each action can produce a valid value for. ``None`` = any VR.
HASHABLE_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
DATE_VRS = frozenset({"DA", "DT"})
ACTION_VRS: dict[Action, frozenset[str] | None] = {
    Action.KEEP: None,
    Action.EMPTY: None,
    Action.REPLACE: None,
    Action.HASH: HASHABLE_VRS,
    Action.UID: frozenset({"UI"}),
    Action.SHIFT: DATE_VRS,
    Action.TRUNCATE: DATE_VRS,
    Action.REMOVE: None,
}
TRUNCATE_TO = ("year", "month")
ENTRY_KEYS = frozenset(
    {"attribute", "action", "value", "to", "items", "private_creator", "vr", "justification"}
)
FILE_KEYS = frozenset({"description", "attributes", "match"})
MATCH_KEYS = frozenset({"manufacturer", "model"})
# orthanc-raw's signed hand-off block (pixl_core.dicom.handoff) may never be allow-listed.
RESERVED_CREATOR_PREFIX = "PIXL HANDOFF"

_TAG_RE = re.compile(r"^\(?\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-fxX]{4})\s*\)?$")
_REPEATING_GROUPS = ((0x5000, 0x50FF), (0x6000, 0x60FF))


def canonical_group(group: int) -> int:
    """Curve (50xx) and overlay (60xx) groups repeat; one entry covers every instance of them."""
    for low, high in _REPEATING_GROUPS:
        if low <= group <= high and group % 2 == 0:
            return low
    return group


@dataclass(frozen=True, order=True)
class AttributeKey:
    """Identifies an attribute wherever it sits in the file.

    For private attributes ``element`` is the offset inside the block (0x00-0xFF) and
    ``creator`` the private creator string, because the block number varies between files.
    """

    group: int
    element: int
    creator: str | None = None

    @property
    def is_private(self) -> bool:
        return self.creator is not None

    @property
    def tag(self) -> int:
        """The public tag (private attributes have no fixed tag)."""
        return (self.group << 16) | self.element

    def label(self) -> str:
        if self.creator is not None:
            return f"({self.group:04X},xx{self.element:02X}) [{self.creator}]"
        from pydicom.datadict import keyword_for_tag

        keyword = keyword_for_tag(self.tag)
        return keyword or f"({self.group:04X},{self.element:04X})"


@dataclass(frozen=True)
class Rule:
    """One allow-list entry, validated."""

    key: AttributeKey
    action: Action
    vr: str | None
    source: str
    value: str | int | float | None = None
    truncate_to: str | None = None
    items: AllowList | None = None
    justification: str | None = None


@dataclass(frozen=True)
class AllowList:
    """A validated set of rules, looked up by attribute."""

    rules: Mapping[AttributeKey, Rule] = field(default_factory=dict)

    def rule_for(self, key: AttributeKey) -> Rule | None:
        return self.rules.get(key)

    def merged_with(self, other: AllowList, *, override: bool) -> AllowList:
        """Combine two lists.

        Base lists must not disagree (a conflict is an error a reviewer must settle), while an
        override's entries replace the base entries for the same attribute by design.
        """
        rules = dict(self.rules)
        for key, rule in other.rules.items():
            existing = rules.get(key)
            if existing is not None and not override:
                raise InvalidAllowlistError(
                    f"{rule.source}: {key.label()} is already listed in {existing.source}; "
                    "list each attribute in one file only"
                )
            rules[key] = rule
        return AllowList(rules=rules)

    def sorted_rules(self) -> list[Rule]:
        return sorted(self.rules.values(), key=lambda r: r.key)


@dataclass(frozen=True)
class AllowListFile:
    """A loaded file: its rules and, for manufacturer overrides, when it applies."""

    path: Path
    description: str
    allowlist: AllowList
    manufacturer: re.Pattern[str] | None = None
    model: re.Pattern[str] | None = None

    @property
    def is_override(self) -> bool:
        return self.manufacturer is not None or self.model is not None

    def matches(self, manufacturer: str, model: str) -> bool:
        if self.manufacturer is not None and not self.manufacturer.search(manufacturer):
            return False
        return self.model is None or bool(self.model.search(model))


def load_allowlist_file(path: Path, display_name: str | None = None) -> AllowListFile:
    """Load and validate one allow-list file, or raise one ``InvalidAllowlistError`` line.

    Its code, ``invalid_allowlist``, is what a worker records on the work item.
    """
    name = display_name or str(path)
    raw = read_mapping(
        path,
        name,
        FILE_KEYS,
        expected="with an 'attributes:' list",
        error=InvalidAllowlistError,
        named_in="the project file",
    )
    entries = raw.get("attributes")
    if not isinstance(entries, list) or not entries:
        raise InvalidAllowlistError(f"{name}: 'attributes:' must be a non-empty list of entries")
    manufacturer = model = None
    if "match" in raw:
        manufacturer, model = _parse_match(raw["match"], name)
    return AllowListFile(
        path=path,
        description=str(raw.get("description", "")),
        allowlist=_parse_entries(entries, name, prefix=""),
        manufacturer=manufacturer,
        model=model,
    )


def _parse_match(raw: Any, name: str) -> tuple[re.Pattern[str] | None, re.Pattern[str] | None]:
    if not isinstance(raw, dict) or not raw or set(raw) - MATCH_KEYS:
        raise InvalidAllowlistError(
            f"{name}: 'match:' needs 'manufacturer:' and/or 'model:' regular expressions"
        )
    patterns: list[re.Pattern[str] | None] = []
    for key in ("manufacturer", "model"):
        if key not in raw:
            patterns.append(None)
            continue
        try:
            patterns.append(re.compile(str(raw[key])))
        except re.error as exc:
            raise InvalidAllowlistError(
                f"{name}: match.{key} is not a valid regex ({exc})"
            ) from None
    return patterns[0], patterns[1]


def _parse_entries(entries: list[Any], name: str, prefix: str) -> AllowList:
    rules: dict[AttributeKey, Rule] = {}
    for index, entry in enumerate(entries, start=1):
        where = f"{name}: entry {prefix}{index}"
        rule = _parse_entry(entry, where, name, f"{prefix}{index}.")
        if rule.key in rules:
            raise InvalidAllowlistError(
                f"{where} ({rule.key.label()}): duplicate of {rules[rule.key].source}; "
                "keep one entry per attribute"
            )
        rules[rule.key] = rule
    return AllowList(rules=rules)


def _parse_entry(entry: Any, where: str, name: str, nested_prefix: str) -> Rule:
    if not isinstance(entry, dict):
        raise InvalidAllowlistError(f"{where}: expected a mapping with 'attribute:' and 'action:'")
    refuse_unknown_keys(entry, ENTRY_KEYS, where, InvalidAllowlistError)
    if "attribute" not in entry:
        raise InvalidAllowlistError(f"{where}: missing 'attribute:' (a keyword or \"(gggg,eeee)\")")
    key, dict_vr = _parse_attribute(entry, where)
    where = f"{where} ({key.label()})"
    action_text = entry.get("action")
    try:
        action = Action(str(action_text))
    except ValueError:
        raise InvalidAllowlistError(
            f"{where}: unknown action '{action_text}'; use one of "
            f"{', '.join(a.value for a in Action)}"
        ) from None
    vr = _resolve_vr(entry, dict_vr, key, where)
    allowed_vrs = ACTION_VRS[action]
    if allowed_vrs is not None and vr is not None and vr not in allowed_vrs:
        raise InvalidAllowlistError(
            f"{where}: action '{action}' does not fit VR {vr}; it works on "
            f"{', '.join(sorted(allowed_vrs))}"
        )
    if allowed_vrs is not None and vr is None:
        raise InvalidAllowlistError(
            f"{where}: action '{action}' needs 'vr:' for a private attribute"
        )
    value = _parse_value(entry, action, vr, where)
    truncate_to = _parse_truncate(entry, action, where)
    items = _parse_items(entry, action, vr, where, name, nested_prefix)
    justification = entry.get("justification")
    if justification is not None and not str(justification).strip():
        raise InvalidAllowlistError(f"{where}: 'justification:' is empty; explain or remove it")
    return Rule(
        key=key,
        action=action,
        vr=vr,
        source=where.split(" (")[0],
        value=value,
        truncate_to=truncate_to,
        items=items,
        justification=str(justification).strip() if justification is not None else None,
    )


def _parse_attribute(entry: dict[str, Any], where: str) -> tuple[AttributeKey, str | None]:
    text = str(entry["attribute"]).strip()
    creator = entry.get("private_creator")
    match = _TAG_RE.match(text)
    if match is None:
        from pydicom.datadict import tag_for_keyword

        tag = tag_for_keyword(text)
        if tag is None:
            raise InvalidAllowlistError(
                f"{where}: unknown keyword '{text}'; use a DICOM keyword (e.g. PatientSex) "
                'or a tag "(gggg,eeee)"'
            )
        if creator is not None:
            raise InvalidAllowlistError(
                f"{where}: 'private_creator:' is only for private attributes"
            )
        return AttributeKey(canonical_group(tag >> 16), tag & 0xFFFF), _dictionary_vr(tag)
    group = int(match.group(1), 16)
    element_text = match.group(2).lower()
    if group % 2 == 1:
        if creator is None or not str(creator).strip():
            raise InvalidAllowlistError(
                f"{where}: private attribute needs 'private_creator:' and an offset like "
                f'"({group:04X},xx10)"'
            )
        if str(creator).strip().upper().startswith(RESERVED_CREATOR_PREFIX):
            raise InvalidAllowlistError(
                f"{where}: private creator '{str(creator).strip()}' is PIXL's own hand-off "
                "block, which must never leave; remove this entry"
            )
        if not element_text.startswith("xx"):
            raise InvalidAllowlistError(
                f'{where}: list private attributes by offset, e.g. "({group:04X},xx'
                f'{element_text[2:]})", never by raw element number (blocks move between files)'
            )
        offset = int(element_text[2:], 16)
        return AttributeKey(group, offset, str(creator).strip()), None
    if "x" in element_text:
        raise InvalidAllowlistError(f"{where}: 'xx' offsets are only for private (odd) groups")
    if creator is not None:
        raise InvalidAllowlistError(f"{where}: 'private_creator:' is only for private attributes")
    tag = (group << 16) | int(element_text, 16)
    vr = _dictionary_vr(tag)
    if vr is None:
        raise InvalidAllowlistError(
            f"{where}: {text} is not a known public attribute; check the tag number"
        )
    return AttributeKey(canonical_group(group), tag & 0xFFFF), vr


def _dictionary_vr(tag: int) -> str | None:
    from pydicom.datadict import dictionary_VR

    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _resolve_vr(
    entry: dict[str, Any], dict_vr: str | None, key: AttributeKey, where: str
) -> str | None:
    given = entry.get("vr")
    if given is not None:
        given = str(given).upper()
        if not key.is_private:
            raise InvalidAllowlistError(f"{where}: 'vr:' is only for private attributes")
        return given
    if dict_vr is not None and " or " in dict_vr:
        return dict_vr.split(" or ")[0]
    return dict_vr


# Binary numeric VRs take numbers, not text: their replace values are converted and range-checked.
_INT_RANGES = {
    "US": (0, 2**16 - 1),
    "SS": (-(2**15), 2**15 - 1),
    "UL": (0, 2**32 - 1),
    "SL": (-(2**31), 2**31 - 1),
    "UV": (0, 2**64 - 1),
    "SV": (-(2**63), 2**63 - 1),
}
_FLOAT_VRS = frozenset({"FL", "FD"})


def _parse_value(
    entry: dict[str, Any], action: Action, vr: str | None, where: str
) -> str | int | float | None:
    if action is not Action.REPLACE:
        if "value" in entry:
            raise InvalidAllowlistError(f"{where}: 'value:' only goes with action 'replace'")
        return None
    if "value" not in entry:
        raise InvalidAllowlistError(f"{where}: action 'replace' needs 'value:'")
    if vr in _INT_RANGES or vr in _FLOAT_VRS:
        return _parse_number(entry["value"], vr, where)
    value = str(entry["value"])
    if vr is not None and vr not in {"SQ", "UN", "OB", "OW"}:
        from pydicom import config as pydicom_config
        from pydicom.valuerep import validate_value

        try:
            validate_value(vr, value, pydicom_config.RAISE)
        except ValueError as exc:
            reason = str(exc).split("\n")[0]
            raise InvalidAllowlistError(f"{where}: value does not fit VR {vr} ({reason})") from None
    return value


def _parse_number(raw: Any, vr: str, where: str) -> int | float:
    try:
        if vr in _FLOAT_VRS:
            return float(raw)
        number = int(str(raw))
    except ValueError:
        raise InvalidAllowlistError(f"{where}: VR {vr} takes a number, not '{raw}'") from None
    low, high = _INT_RANGES[vr]
    if not low <= number <= high:
        raise InvalidAllowlistError(
            f"{where}: {number} is out of range for VR {vr} ({low}..{high})"
        )
    return number


def _parse_truncate(entry: dict[str, Any], action: Action, where: str) -> str | None:
    if action is not Action.TRUNCATE:
        if "to" in entry:
            raise InvalidAllowlistError(f"{where}: 'to:' only goes with action 'truncate'")
        return None
    to = entry.get("to")
    if to not in TRUNCATE_TO:
        raise InvalidAllowlistError(f"{where}: action 'truncate' needs 'to: year' or 'to: month'")
    return str(to)


def _parse_items(
    entry: dict[str, Any], action: Action, vr: str | None, where: str, name: str, prefix: str
) -> AllowList | None:
    items = entry.get("items")
    if vr != "SQ":
        if items is not None:
            raise InvalidAllowlistError(f"{where}: 'items:' only goes with a sequence (VR SQ)")
        return None
    if action not in (Action.KEEP, Action.EMPTY, Action.REMOVE):
        raise InvalidAllowlistError(
            f"{where}: a sequence takes action keep (with 'items:'), empty or remove"
        )
    if action is Action.KEEP:
        if not isinstance(items, list) or not items:
            raise InvalidAllowlistError(
                f"{where}: a kept sequence needs 'items:', the allow-list for its items; "
                "without one, use action remove"
            )
        return _parse_entries(items, name, prefix)
    if items is not None:
        raise InvalidAllowlistError(f"{where}: 'items:' only goes with action keep")
    return None
