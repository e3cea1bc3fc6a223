"""Audit allow-lists against the DICOM PS3.15 Basic Application Confidentiality Profile.

An information-governance reviewer approves each project's allow-list as a pull request. This
module tells the reviewer which entries let an attribute out in a form the Basic Profile, plus the
PS3.15 options the project claims (``ps315_options``), does not allow. Each such *finding* must
carry a ``justification:`` in the YAML; the audit passes when every finding has one. The audit is
pure data: no CLI, no hash key, no DICOM files.

Sources, in order of precedence:

1. ``pixl_core/config/data/ps315_confidentiality_profile.json``: PS3.15 Table E.1-1, edition 2024b
   (innolitics/dicom-standard, MIT), with the Basic Profile action and the option columns.
2. For attributes missing from that table (added to the standard later), the Basic Profile lists
   of dicom-anonymizer, edition 2026c (``D_TAGS``, ``Z_TAGS``, ``X_TAGS``, ...). They carry no
   option columns, so no option can allow an attribute known only from them.

An attribute in neither source is not one the Basic Profile treats as identifying (pixel
geometry, exposure, ...), so keeping it is not a finding.

How each action is judged (codes: D dummy, Z empty or dummy, X remove, K keep, C clean,
U replace UID):

- ``empty`` / ``remove``: never a finding: nothing of the original value leaves.
- ``replace``: never a finding: the value written is the fixed text in the allow-list, which the
  reviewer reads in the pull request, i.e. a dummy.
- ``keep``: fine when the profile says K, or a claimed option's column says K. A claimed option
  that says C (clean) is still a finding: ``keep`` copies the value uncleaned, and only a person
  can say the values are clean in this hospital's data, so a justification must say why. One
  exception: ``cleanDescOpt`` on a free-text attribute (SH, LO, ST, LT, UT, UC), which the
  engine does clean (``pixl_core/dicom/descriptors.py``: every kept value is checked for the
  instance's identifiers and emptied when flagged); a project may claim it only while that
  check is on.
- ``shift`` / ``truncate``: fine when the profile says K or the project claims
  ``rtnLongModifDatesOpt`` (C: dates may leave modified) or ``rtnLongFullDatesOpt`` (K) and the
  attribute has that column. Otherwise a modified date is still a real date: finding.
- ``hash``: fine where the profile allows a replacement (D or Z in any combination, or K, or a
  claimed option K). Not where it only says X: a keyed hash is a *consistent* pseudonym, so
  unlike a dummy it still links instances that share the value; that needs a justification.
- ``uid``: fine for U (or U*), K, D or Z, or a claimed option K (rtnUIDsOpt); a remapped UID for
  an attribute the profile removes (X) is a finding for the same linkage reason as ``hash``.
- A kept sequence lets out only what its ``items:`` allow-list lets out, and every item entry is
  audited like a top-level one. The sequence itself is a finding only when the profile removes it
  whole (exactly X) and no claimed option keeps or cleans it (K or C: the items allow-list is the
  cleaning, and is audited).
- Private attributes: PS3.15 removes them all unless ``rtnSafePrivOpt`` is claimed *and* the
  attribute is known to be safe, which no table can tell for a vendor's block, so every private
  entry that lets a value out (anything but empty/remove/replace) is a finding.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from types import ModuleType

from pydicom.datadict import dictionary_VR

from pixl_core.config.allowlist import Action, AllowList, AllowListFile, AttributeKey, Rule
from pixl_core.config.projects import Project
from pixl_core.dicom.descriptors import FREE_TEXT_VRS
from pixl_core.errors import PixlConfigError

PROFILE_RESOURCE = "data/ps315_confidentiality_profile.json"
PROFILE_EDITION = "2024b"
FALLBACK_EDITION = "2026c"
FALLBACK_MODULE = "dicomanonymizer.dicom_anonymization_databases.dicomfields_2026c"

# The option columns of the table (a subset of pixl_core.config.projects.PS315_OPTIONS: the pixel and
# recognisable-features options are about pixel data, not tags).
OPTION_COLUMNS = (
    "rtnLongFullDatesOpt",
    "rtnLongModifDatesOpt",
    "cleanDescOpt",
    "rtnUIDsOpt",
    "rtnDevIdOpt",
    "rtnPatCharsOpt",
    "rtnInstIdOpt",
    "cleanGraphOpt",
    "cleanStructContOpt",
    "rtnSafePrivOpt",
)
DATE_OPTIONS = ("rtnLongModifDatesOpt", "rtnLongFullDatesOpt")

# dicom-anonymizer list name -> Basic Profile code. Lists not named here (a later edition may add
# some) are mapped by their name: "X_Z_U_STAR_TAGS" -> "X/Z/U*".
FALLBACK_CODES = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}
_FALLBACK_LIST_RE = re.compile(r"^[A-Z][A-Z_]*_TAGS$")
_TABLE_TAG_RE = re.compile(r"^\(([0-9A-Fa-fXx]{4}),([0-9A-Fa-fXx]{4})\)$")

CODE_MEANINGS = {
    "D": "replace with a dummy",
    "Z": "empty or dummy",
    "X": "remove",
    "K": "keep",
    "C": "clean",
    "U": "replace UID",
    "U*": "replace UIDs inside",
}


@dataclass(frozen=True)
class ProfileEntry:
    """What PS3.15 says about one attribute (or one repeating-group pattern)."""

    name: str
    tag: str
    basic: str
    options: Mapping[str, str] = field(default_factory=dict)
    source: str = f"PS3.15 {PROFILE_EDITION}"

    @property
    def codes(self) -> frozenset[str]:
        return frozenset(self.basic.split("/"))

    @property
    def from_fallback(self) -> bool:
        return not self.source.startswith("PS3.15")


@dataclass(frozen=True)
class ConfidentialityProfile:
    """The Basic Profile table with its fallback, looked up by allow-list attribute key."""

    exact: Mapping[int, ProfileEntry]
    masked: tuple[tuple[int, int, ProfileEntry], ...]
    fallback_exact: Mapping[int, ProfileEntry]
    fallback_masked: tuple[tuple[int, int, ProfileEntry], ...]
    private: ProfileEntry

    def lookup(self, key: AttributeKey) -> ProfileEntry | None:
        """The entry for a public attribute, or None when neither source lists it.

        Repeating groups (50xx, 60xx) arrive canonicalised to 5000/6000 and match the table's
        masked rows. Private attributes have one row for all: see ``private``.
        """
        if key.is_private:
            return self.private
        tag = key.tag
        for exact, masked in (
            (self.exact, self.masked),
            (self.fallback_exact, self.fallback_masked),
        ):
            entry = exact.get(tag)
            if entry is not None:
                return entry
            for value, mask, masked_entry in masked:
                if tag & mask == value:
                    return masked_entry
        return None


@dataclass(frozen=True)
class Finding:
    """One allow-list entry that lets an attribute out beyond the Basic Profile."""

    label: str
    source: str
    action: str
    profile: str
    problem: str
    justification: str | None

    @property
    def justified(self) -> bool:
        return self.justification is not None


@dataclass(frozen=True)
class AuditReport:
    """The outcome of auditing one project (or one bare allow-list file)."""

    subject: str
    options: tuple[str, ...]
    attributes: int
    findings: tuple[Finding, ...]
    unused_options: tuple[str, ...] = ()

    @property
    def unjustified(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if not f.justified)

    @property
    def passed(self) -> bool:
        return not self.unjustified

    def summary(self) -> str:
        """One line for the reviewer, e.g. "chest-xray: 96 attributes, 4 kept beyond ..."."""
        count = len(self.findings)
        if count == 0:
            tail = "none kept beyond the Basic Profile"
        else:
            missing = len(self.unjustified)
            verdict = "all justified" if missing == 0 else f"{missing} without justification"
            tail = f"{count} kept beyond the Basic Profile, {verdict}"
        return f"{self.subject}: {self.attributes} attributes, {tail}"


@cache
def load_profile() -> ConfidentialityProfile:
    """Load the shipped 2024b table and the 2026c fallback (once per process).

    Fails closed: without the fallback, attributes newer than 2024b would pass as "not in the
    profile", so a missing dicom-anonymizer is an error, not a silent gap.
    """
    try:
        text = resources.files("pixl_core.config").joinpath(PROFILE_RESOURCE).read_text()
        rows = json.loads(text)
    except (FileNotFoundError, json.JSONDecodeError):
        raise PixlConfigError(
            f"pixl_core/{PROFILE_RESOURCE} is missing or damaged; reinstall PIXL"
        ) from None
    exact: dict[int, ProfileEntry] = {}
    masked: list[tuple[int, int, ProfileEntry]] = []
    private: ProfileEntry | None = None
    for row in rows:
        entry = ProfileEntry(
            name=str(row["name"]),
            tag=str(row["tag"]),
            basic=str(row["basicProfile"]),
            options={k: str(row[k]) for k in OPTION_COLUMNS if row.get(k)},
        )
        parsed = _parse_table_tag(entry.tag)
        if parsed is None:  # "(GGGG,EEEE) WHERE GGGG IS ODD": the private attributes row
            private = entry
            continue
        value, mask = parsed
        if mask == 0xFFFFFFFF:
            exact[value] = entry
        else:
            masked.append((value, mask, entry))
    if private is None:
        raise PixlConfigError(f"pixl_core/{PROFILE_RESOURCE} has no private attributes row")
    fallback_exact, fallback_masked = _load_fallback(exact, masked)
    return ConfidentialityProfile(
        exact=exact,
        masked=tuple(masked),
        fallback_exact=fallback_exact,
        fallback_masked=tuple(fallback_masked),
        private=private,
    )


def _parse_table_tag(text: str) -> tuple[int, int] | None:
    """ "(60XX,3000)" -> (0x60003000, 0xFF00FFFF); None for the private-attributes row."""
    match = _TABLE_TAG_RE.match(text.strip())
    if match is None:
        return None
    digits = (match.group(1) + match.group(2)).upper()
    value = int(digits.replace("X", "0"), 16)
    mask = int("".join("0" if d == "X" else "F" for d in digits), 16)
    return value, mask


def fallback_code(list_name: str) -> str:
    """The Basic Profile code a dicom-anonymizer list stands for."""
    known = FALLBACK_CODES.get(list_name)
    if known is not None:
        return known
    return list_name.removesuffix("_TAGS").replace("_STAR", "*").replace("_", "/")


def _import_fallback() -> ModuleType:
    import importlib

    try:
        return importlib.import_module(FALLBACK_MODULE)
    except ImportError:
        raise PixlConfigError(
            "the PS3.15 audit needs dicom-anonymizer for attributes newer than the 2024b table; "
            "install it with `pip install -e '.[dev]'`"
        ) from None


def _load_fallback(
    exact: Mapping[int, ProfileEntry], masked: Sequence[tuple[int, int, ProfileEntry]]
) -> tuple[dict[int, ProfileEntry], list[tuple[int, int, ProfileEntry]]]:
    """Entries of the 2026c lists for tags the 2024b table does not cover."""
    module = _import_fallback()
    source = f"dicom-anonymizer {FALLBACK_EDITION}"
    fallback_exact: dict[int, ProfileEntry] = {}
    fallback_masked: list[tuple[int, int, ProfileEntry]] = []
    for list_name in sorted(vars(module)):
        if list_name == "ALL_TAGS" or not _FALLBACK_LIST_RE.match(list_name):
            continue
        code = fallback_code(list_name)
        for item in getattr(module, list_name):
            if len(item) == 2:
                group, element = item
                value, mask = (group << 16) | element, 0xFFFFFFFF
            else:  # (group, element, group mask, element mask) for repeating groups
                group, element, group_mask, element_mask = item
                mask = (group_mask << 16) | element_mask
                value = ((group << 16) | element) & mask
            tag_text = f"({value >> 16:04X},{value & 0xFFFF:04X})"
            entry = ProfileEntry(name=tag_text, tag=tag_text, basic=code, source=source)
            if mask == 0xFFFFFFFF:
                if value in exact or any(value & m == v for v, m, _ in masked):
                    continue
                fallback_exact[value] = entry
            elif not any(v == value and m == mask for v, m, _ in masked):
                fallback_masked.append((value, mask, entry))
    return fallback_exact, fallback_masked


@dataclass(frozen=True)
class _Verdict:
    problem: str | None = None
    allowed_by: str | None = None  # the claimed option that made the entry fine


_FINE = _Verdict()


def _judge(rule: Rule, entry: ProfileEntry | None, claimed: Sequence[str]) -> _Verdict:
    """Does this entry let the attribute out beyond the profile plus the claimed options?"""
    action = rule.action
    if action in (Action.EMPTY, Action.REMOVE, Action.REPLACE):
        return _FINE
    if rule.key.is_private:
        claim = (
            "rtnSafePrivOpt is claimed, so justify why this attribute is known to be safe"
            if "rtnSafePrivOpt" in claimed
            else "this project does not claim rtnSafePrivOpt"
        )
        return _Verdict(
            problem="private attribute: PS3.15 removes private attributes (X) unless "
            f"rtnSafePrivOpt is claimed and the attribute is known to be safe; {claim}"
        )
    if entry is None:
        return _FINE
    codes = entry.codes
    options = {o: entry.options[o] for o in claimed if o in entry.options}
    keeps = [o for o, v in options.items() if v == "K"]
    cleans = [o for o, v in options.items() if v == "C"]
    says = f"the Basic Profile says {entry.basic} ({_meaning(entry.basic)})"
    if action is Action.KEEP and rule.items is not None:
        if codes != {"X"}:
            return _FINE  # the profile lets the container stay; its items are audited one by one
        if keeps or cleans:
            return _Verdict(allowed_by=(keeps + cleans)[0])
        return _Verdict(
            problem=f"sequence kept, but {says} and no claimed option keeps or cleans it "
            "(its items are audited one by one)"
        )
    if action is Action.KEEP:
        if "K" in codes:
            return _FINE
        if keeps:
            return _Verdict(allowed_by=keeps[0])
        if "cleanDescOpt" in cleans and _is_free_text(rule.key):
            # The engine checks every kept free-text value for the instance's identifiers and
            # empties a flagged one (pixl_core/dicom/descriptors.py); a project may claim the
            # option only while that check is on (projects.py).
            return _Verdict(allowed_by="cleanDescOpt")
        if cleans or "C" in codes:
            who = ", ".join(cleans) if cleans else "the Basic Profile"
            return _Verdict(
                problem=f"kept as is, but {who} asks to clean it (C); keeping the original "
                "value needs a justification that it holds no identifier"
            )
        return _Verdict(problem=f"kept, but {says} and no claimed option keeps it")
    if action in (Action.SHIFT, Action.TRUNCATE):
        if "K" in codes:
            return _FINE
        dated = [o for o in DATE_OPTIONS if o in options]
        if dated:
            return _Verdict(allowed_by=dated[0])
        if any(o in entry.options for o in DATE_OPTIONS):
            hint = "the project does not claim rtnLongModifDatesOpt or rtnLongFullDatesOpt"
        else:
            hint = "no PS3.15 option retains this date in any form"
        return _Verdict(problem=f"{action.value}ed date is still a real date, but {says}; {hint}")
    if action is Action.HASH:
        if codes & {"D", "Z", "K"}:
            return _FINE
        if keeps:
            return _Verdict(allowed_by=keeps[0])
        return _Verdict(
            problem=f"hashed, but {says}: a keyed hash is a consistent pseudonym that still "
            "links instances sharing the value"
        )
    if action is Action.UID:
        if codes & {"U", "U*", "K", "D", "Z"}:
            return _FINE
        if keeps:
            return _Verdict(allowed_by=keeps[0])
        return _Verdict(
            problem=f"UID remapped, but {says}: a remapped UID still links instances sharing it"
        )
    return _Verdict(problem=f"action '{action.value}' is not known to the audit")


@dataclass(frozen=True)
class Assessment:
    """The audit's verdict on one entry, for a tool that shows entries one by one (``pixl
    allowlist diff``): what the profile says, and either the problem or the option that
    allowed it (both None: the Basic Profile alone allows it)."""

    profile: str
    basic: str | None
    problem: str | None
    allowed_by: str | None


def assess(
    rule: Rule, options: Sequence[str], profile: ConfidentialityProfile | None = None
) -> Assessment:
    """Judge one entry exactly as ``audit`` does (same profile lookup, same rules)."""
    profile = profile or load_profile()
    entry = profile.lookup(rule.key)
    verdict = _judge(rule, entry, options)
    return Assessment(
        profile=describe_profile(entry, options),
        basic=entry.basic if entry is not None else None,
        problem=verdict.problem,
        allowed_by=verdict.allowed_by,
    )


def pixel_text_finding(project: Project) -> Finding | None:
    """The finding ``audit`` adds for pixels that leave unchecked (``pixel_text: off``)."""
    if project.pixel_text != "off":
        return None
    return Finding(
        label="PixelData (7FE0,0010)",
        source=f"projects/{project.slug}.yaml pixel_text",
        action="keep unchecked",
        profile="burned-in text is removed only under the Clean Pixel Data Option (113101)",
        problem="pixel_text is off: burned-in text leaves as it is",
        justification=project.pixel_text_justification,
    )


def _is_free_text(key: AttributeKey) -> bool:
    """Whether the descriptor check reads this attribute: a public one of a free-text VR."""
    if key.is_private:
        return False
    try:
        return dictionary_VR(key.tag) in FREE_TEXT_VRS
    except KeyError:
        return False


def _meaning(basic: str) -> str:
    return " or ".join(CODE_MEANINGS.get(code, code) for code in basic.split("/"))


def describe_profile(entry: ProfileEntry | None, claimed: Sequence[str]) -> str:
    """What the profile says about an attribute, for the reviewer's table."""
    if entry is None:
        return "not in PS3.15 Table E.1-1"
    text = f"Basic Profile: {entry.basic}"
    if entry.from_fallback:
        text += f" ({entry.source})"
    applied = [f"{o} {entry.options[o]}" for o in claimed if o in entry.options]
    others = [f"{o} {v}" for o, v in entry.options.items() if o not in claimed]
    text += "; claimed: " + (", ".join(applied) if applied else "none apply")
    if others:
        text += "; not claimed: " + ", ".join(others)
    return text


def _walk(allowlist: AllowList, prefix: str = "") -> Iterator[tuple[str, Rule]]:
    """Every rule in file order, nested sequence items included, with a readable path."""
    for rule in allowlist.rules.values():
        label = f"{prefix}{rule.key.label()}"
        yield label, rule
        if rule.items is not None:
            yield from _walk(rule.items, f"{label} > ")


def audit_files(
    subject: str,
    files: Iterable[AllowListFile],
    options: Sequence[str] = (),
    profile: ConfidentialityProfile | None = None,
) -> AuditReport:
    """Audit allow-list files as if they were one project claiming ``options``."""
    profile = profile or load_profile()
    findings: list[Finding] = []
    used: set[str] = set()
    count = 0
    for file in files:
        for label, rule in _walk(file.allowlist):
            count += 1
            entry = profile.lookup(rule.key)
            verdict = _judge(rule, entry, options)
            if verdict.allowed_by is not None:
                used.add(verdict.allowed_by)
            if verdict.problem is None:
                continue
            findings.append(
                Finding(
                    label=label,
                    source=rule.source,
                    action=rule.action.value,
                    profile=describe_profile(entry, options),
                    problem=verdict.problem,
                    justification=rule.justification,
                )
            )
    unused = tuple(o for o in options if o in OPTION_COLUMNS and o not in used)
    return AuditReport(
        subject=subject,
        options=tuple(options),
        attributes=count,
        findings=tuple(findings),
        unused_options=unused,
    )


def audit(project: Project, profile: ConfidentialityProfile | None = None) -> AuditReport:
    """Audit a project's base lists and every override against its claimed PS3.15 options.

    Overrides are audited whole, not only where they match a device: a reviewer approves the
    file, and any device may match it.
    """
    report = audit_files(
        project.slug,
        (*project.base_files, *project.overrides),
        project.method_options,  # with cleanPixelDataOpt when the pixels are checked
        profile,
    )
    # Pixels that leave unchecked are a finding like a kept tag: the Basic Profile assumes no
    # burned-in identifiers, and only the project's justification can say why there are none.
    unchecked = pixel_text_finding(project)
    if unchecked is None:
        return report
    return dataclasses.replace(report, findings=(*report.findings, unchecked))


def audit_allowlist_file(
    file: AllowListFile, subject: str, profile: ConfidentialityProfile | None = None
) -> AuditReport:
    """Audit a bare allow-list file against the Basic Profile with no options claimed."""
    return audit_files(subject, (file,), (), profile)
