"""What a change to the allow-lists or projects changes in what leaves, project by project.

An information-governance reviewer approves allow-list changes as pull requests. The YAML diff
does not answer their question: a line moved between files, a reformatted entry or a reordered
list changes nothing, while one new claimed PS3.15 option can make ten unchanged entries
acceptable, and one line in a manufacturer override changes what leaves for that vendor only.
So both sides are loaded by the production loader (``load_project_file``) and their *effective*
allow-lists compared:

- per project (``projects/*.yaml`` on either side), per scope: "all devices" (the composed base
  and modality lists) and each manufacturer override (the base with that override on top,
  compared only on the attributes the override lists, so a base change is reported once);
- per attribute path, nested sequence items (``ViewCodeSequence > CodeMeaning``) and private
  attributes by creator included;
- as one of: newly leaves, stops leaving, action changed, justification changed, or verdict
  changed (same entry, but the claimed options changed what PS3.15 says of it); and project
  settings that change what leaves: ``ps315_options``, ``modalities``, ``series_filters``,
  ``allow_burned_in_annotation``, ``descriptors``, ``pixel_text`` and the benign-marker words
  that may stay burned in.

Two overrides with different matches that both match one device are compared one at a time,
each on top of the base (as ``pixl allowlist check`` audits each override file whole).

Every row that lets something out carries the audit's own verdict (``ps315_audit.assess``: the
same judgement as ``pixl allowlist check``). A row *fails* when it lets something out that is
neither allowed by the Basic Profile plus the claimed options nor justified.

Any action but ``remove`` counts as leaving: ``empty`` and ``replace`` write the attribute
without its original value (the audit calls them fine), which a reviewer still sees.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from pixl_core.config.allowlist import Action, AllowList, AllowListFile, AttributeKey, Rule
from pixl_core.config.pixel_policy import PixelText
from pixl_core.config.projects import Project, load_project_file
from pixl_core.config.ps315_audit import assess, load_profile, pixel_text_finding
from pixl_core.errors import PixlConfigError

ALL_DEVICES = "all devices"
NOT_LISTED = "not listed"
PIXEL_TEXT_PROFILE = "burned-in text is removed only under the Clean Pixel Data Option (113101)"


@dataclass(frozen=True)
class ConfigTree:
    """One side of a comparison: a folder holding ``projects/`` and ``tag_allowlists/``."""

    label: str
    root: Path

    @property
    def projects(self) -> Path:
        return self.root / "projects"

    @property
    def allowlists(self) -> Path:
        return self.root / "tag_allowlists"


class Kind(StrEnum):
    NEW = "newly leaves"
    STOPS = "stops leaving"
    ACTION = "action changed"
    JUSTIFICATION = "justification changed"
    VERDICT = "verdict changed"
    SETTING = "setting changed"


class Status(StrEnum):
    """The verdict on what the head side lets out."""

    ALLOWED = "allowed"  # by the Basic Profile, or no original value leaves
    OPTION = "allowed by option"
    JUSTIFIED = "justified"
    UNJUSTIFIED = "not justified"
    NOTHING = "nothing leaves"
    SETTING = "setting"


@dataclass(frozen=True)
class Change:
    """One row for the reviewer. ``path`` and ``head_rule`` let ``--sample`` find the attribute
    in real files and the files this row applies to; settings rows have neither."""

    project: str
    scope: str
    attribute: str
    kind: Kind
    before: str
    after: str
    profile: str
    status: Status
    verdict: str
    justification: str | None
    path: tuple[AttributeKey, ...] = ()
    head_rule: Rule | None = None

    @property
    def fails(self) -> bool:
        return self.status is Status.UNJUSTIFIED and self.kind is not Kind.STOPS


@dataclass(frozen=True)
class DiffReport:
    base: str
    head: str
    changes: tuple[Change, ...]
    notes: tuple[str, ...] = ()
    # The head side's projects: ``--sample`` de-identifies with them, and finds the very rule
    # objects each row names.
    head_projects: dict[str, Project] = field(default_factory=dict, compare=False, repr=False)

    @property
    def failing(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.fails)

    @property
    def passed(self) -> bool:
        return not self.failing

    def projects(self) -> list[str]:
        return list(dict.fromkeys(c.project for c in self.changes))


# --- loading both sides ------------------------------------------------------------------------


def load_tree(tree: ConfigTree, *, tolerate_broken: bool) -> tuple[dict[str, Project], list[str]]:
    """Every project of ``tree`` loaded by the production loader.

    A broken project on the head side is an error (the pull request must fix it); on the base
    side it is compared as if it let nothing out, with a note, so a change that repairs a
    broken file can still be reviewed: everything it lets out shows as newly leaving.
    """
    projects: dict[str, Project] = {}
    notes: list[str] = []
    for path in sorted(tree.projects.glob("*.yaml")):
        try:
            projects[path.stem] = load_project_file(path, tree.allowlists)
        except PixlConfigError as exc:
            if not tolerate_broken:
                raise type(exc)(f"{tree.label}: {exc}") from None
            notes.append(f"{tree.label}: {exc} (compared as if it let nothing out)")
    return projects, notes


def compare_trees(base: ConfigTree, head: ConfigTree) -> DiffReport:
    """The report for two trees (base: the target branch; head: the change)."""
    head_projects, _ = load_tree(head, tolerate_broken=False)
    base_projects, notes = load_tree(base, tolerate_broken=True)
    changes: list[Change] = []
    for slug in sorted(set(base_projects) | set(head_projects)):
        changes.extend(compare_projects(slug, base_projects.get(slug), head_projects.get(slug)))
    return DiffReport(
        base=base.label,
        head=head.label,
        changes=tuple(changes),
        notes=tuple(notes),
        head_projects=head_projects,
    )


# --- comparing one project ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    label: str
    rule: Rule


@dataclass(frozen=True)
class _Scope:
    """An effective allow-list and, for an override, the attributes it lists itself."""

    allowlist: AllowList
    own: frozenset[AttributeKey] | None = None  # None: all devices
    files: tuple[str, ...] = ()

    def label(self, match: str) -> str:
        return f"{', '.join(self.files)} ({match})" if self.files else ALL_DEVICES


def compare_projects(slug: str, base: Project | None, head: Project | None) -> list[Change]:
    """Rows for one project; ``None`` for a side where the project does not exist."""
    if head is None:
        if base is None:
            return []
        return [_setting(slug, "project", "exists", "removed", "the project file was removed")]
    changes = _setting_changes(slug, base, head)
    base_scopes = _scopes(base) if base is not None else {}
    head_scopes = _scopes(head)
    base_default = base_scopes.get(ALL_DEVICES, _Scope(AllowList()))
    head_default = head_scopes[ALL_DEVICES]
    base_options = base.method_options if base is not None else ()
    for match in sorted(set(base_scopes) | set(head_scopes), key=lambda m: (m != ALL_DEVICES, m)):
        before = base_scopes.get(match, base_default)
        after = head_scopes.get(match, head_default)
        own = None
        if match != ALL_DEVICES:
            own = (before.own or frozenset()) | (after.own or frozenset())
        label = (after if match in head_scopes else before).label(match)
        changes.extend(
            _compare_scope(slug, label, before, after, own, base_options, head.method_options)
        )
    return changes


def _scopes(project: Project) -> dict[str, _Scope]:
    """All devices, and one scope per distinct override match (files with the same match
    compose, in file order, as they do for a device)."""
    scopes = {ALL_DEVICES: _Scope(project.base)}
    for override in project.overrides:
        match = _match_text(override)
        previous = scopes.get(match, _Scope(project.base, frozenset()))
        scopes[match] = _Scope(
            allowlist=previous.allowlist.merged_with(override.allowlist, override=True),
            own=(previous.own or frozenset()) | frozenset(override.allowlist.rules),
            files=(*previous.files, _file_name(override)),
        )
    return scopes


def _match_text(override: AllowListFile) -> str:
    parts = []
    if override.manufacturer is not None:
        parts.append(f"manufacturer matches {override.manufacturer.pattern}")
    if override.model is not None:
        parts.append(f"model matches {override.model.pattern}")
    return ", ".join(parts)


def _file_name(override: AllowListFile) -> str:
    """The file as the project names it (tag_allowlists/overrides/x.yaml -> overrides/x.yaml)."""
    parts = override.path.parts
    if "tag_allowlists" in parts:
        return "/".join(parts[len(parts) - parts[::-1].index("tag_allowlists") :])
    return override.path.name


def _flatten(
    allowlist: AllowList, keys: tuple[AttributeKey, ...] = (), label: str = ""
) -> Iterator[tuple[tuple[AttributeKey, ...], _Entry]]:
    for rule in allowlist.rules.values():
        path = (*keys, rule.key)
        text = f"{label}{rule.key.label()}"
        yield path, _Entry(text, rule)
        if rule.items is not None:
            yield from _flatten(rule.items, path, f"{text} > ")


def _compare_scope(
    slug: str,
    scope: str,
    before: _Scope,
    after: _Scope,
    own: frozenset[AttributeKey] | None,
    base_options: tuple[str, ...],
    head_options: tuple[str, ...],
) -> list[Change]:
    old = dict(_flatten(before.allowlist))
    new = dict(_flatten(after.allowlist))
    changes = []
    for path in sorted(set(old) | set(new)):
        if own is not None and path[0] not in own:
            continue  # the base's own change, reported once under all devices
        change = _compare_entry(
            slug, scope, path, old.get(path), new.get(path), base_options, head_options
        )
        if change is not None:
            changes.append(change)
    return changes


def _leaves(entry: _Entry | None) -> bool:
    return entry is not None and entry.rule.action is not Action.REMOVE


def _treatment(rule: Rule) -> tuple[object, ...]:
    """What the engine does with the value; items are compared as paths of their own."""
    return (rule.action, rule.vr, rule.value, rule.truncate_to)


def _normalised(text: str | None) -> str | None:
    return " ".join(text.split()) if text is not None else None


def describe_action(rule: Rule | None) -> str:
    if rule is None:
        return NOT_LISTED
    if rule.action is Action.REPLACE:
        return f"replace with '{rule.value}'"
    if rule.action is Action.TRUNCATE:
        return f"truncate to {rule.truncate_to}"
    if rule.items is not None:
        return f"keep ({len(rule.items.rules)} item attributes)"
    return rule.action.value


def _compare_entry(
    slug: str,
    scope: str,
    path: tuple[AttributeKey, ...],
    old: _Entry | None,
    new: _Entry | None,
    base_options: tuple[str, ...],
    head_options: tuple[str, ...],
) -> Change | None:
    old_leaves, new_leaves = _leaves(old), _leaves(new)
    if not old_leaves and not new_leaves:
        return None
    head_rule = new.rule if new is not None else None
    if old_leaves and not new_leaves:
        assert old is not None
        return Change(
            project=slug,
            scope=scope,
            attribute=old.label,
            kind=Kind.STOPS,
            before=describe_action(old.rule),
            after=describe_action(head_rule),
            profile=assess(old.rule, base_options).profile,
            status=Status.NOTHING,
            verdict="nothing of it leaves",
            justification=None,
            path=path,
            head_rule=head_rule,
        )
    assert new is not None
    status, verdict, profile = _verdict(new.rule, head_options)
    if not old_leaves:
        kind = Kind.NEW
    else:
        assert old is not None
        old_status, old_verdict, _ = _verdict(old.rule, base_options)
        if _treatment(old.rule) != _treatment(new.rule):
            kind = Kind.ACTION
        elif _normalised(old.rule.justification) != _normalised(new.rule.justification):
            kind = Kind.JUSTIFICATION
        elif (old_status, old_verdict) != (status, verdict):
            kind = Kind.VERDICT
            verdict = f"{old_verdict} → {verdict}"
        else:
            return None
    return Change(
        project=slug,
        scope=scope,
        attribute=new.label,
        kind=kind,
        before=describe_action(old.rule if old is not None else None),
        after=describe_action(new.rule),
        profile=profile,
        status=status,
        verdict=verdict,
        justification=new.rule.justification,
        path=path,
        head_rule=new.rule,
    )


def _verdict(rule: Rule, options: tuple[str, ...]) -> tuple[Status, str, str]:
    """(status, verdict text, what PS3.15 says) for one entry under the claimed options."""
    assessment = assess(rule, options, load_profile())
    if assessment.problem is None:
        if assessment.allowed_by is not None:
            return Status.OPTION, f"allowed by {assessment.allowed_by}", assessment.profile
        if rule.action in (Action.EMPTY, Action.REPLACE):
            return Status.ALLOWED, "allowed: no original value leaves", assessment.profile
        return Status.ALLOWED, "allowed by the Basic Profile", assessment.profile
    if rule.justification is not None:
        return Status.JUSTIFIED, f"justified: {assessment.problem}", assessment.profile
    return Status.UNJUSTIFIED, f"NOT JUSTIFIED: {assessment.problem}", assessment.profile


# --- project settings --------------------------------------------------------------------------


def _setting(
    slug: str,
    attribute: str,
    before: str,
    after: str,
    verdict: str,
    *,
    kind: Kind = Kind.SETTING,
    status: Status = Status.SETTING,
    profile: str = "",
    justification: str | None = None,
) -> Change:
    return Change(
        project=slug,
        scope="project",
        attribute=attribute,
        kind=kind,
        before=before,
        after=after,
        profile=profile,
        status=status,
        verdict=verdict,
        justification=justification,
    )


def _listed(values: object) -> str:
    items = list(values) if isinstance(values, tuple | list | frozenset | set) else []
    return ", ".join(str(v) for v in items) if items else "none"


# Project settings that decide which images or values leave, besides the allow-lists: how each
# is shown (order-free, so a reordered list is no change) and what it means for the reviewer.
_IMAGE_SETTINGS: tuple[tuple[str, str], ...] = (
    ("modalities", "images of other modalities are refused"),
    ("series_filters", "series whose description matches one of these are refused"),
    (
        "allow_burned_in_annotation",
        "whether images marked BurnedInAnnotation YES may leave when pixel_text is not mask",
    ),
    ("descriptors", "whether kept free text is checked for the instance's identifiers"),
)


def _setting_text(project: Project | None, name: str) -> str:
    if project is None:
        return "none"
    if name == "modalities":
        return _listed(sorted(project.modalities))
    if name == "series_filters":
        return _listed(sorted(p.pattern for p in project.series_filters))
    if name == "allow_burned_in_annotation":
        return "yes" if project.allow_burned_in_annotation else "no"
    policy = project.descriptors
    return f"check clean, replacement '{policy.replacement}'" if policy.clean else "check off"


def _setting_changes(slug: str, base: Project | None, head: Project) -> list[Change]:
    changes: list[Change] = []
    if base is None:
        changes.append(_setting(slug, "project", "none", "added", "a new project: every row new"))
    old_options = base.ps315_options if base is not None else ()
    claimed = [o for o in head.ps315_options if o not in old_options]
    dropped = [o for o in old_options if o not in head.ps315_options]
    if claimed or dropped:
        verdict = "; ".join(
            part
            for part in (
                f"claims {', '.join(claimed)}" if claimed else "",
                f"no longer claims {', '.join(dropped)}" if dropped else "",
            )
            if part
        )
        changes.append(
            _setting(
                slug,
                "ps315_options",
                _listed(old_options),
                _listed(head.ps315_options),
                verdict,
                profile="PS3.15 options recorded in DeidentificationMethodCodeSequence",
            )
        )
    for name, meaning in _IMAGE_SETTINGS:
        before, after = _setting_text(base, name), _setting_text(head, name)
        if before != after:
            changes.append(_setting(slug, name, before, after, meaning))
    changes.extend(_pixel_changes(slug, base, head))
    return changes


def _pixel_changes(slug: str, base: Project | None, head: Project) -> list[Change]:
    changes: list[Change] = []
    old_policy = base.pixel_text if base is not None else None
    if old_policy != head.pixel_text:
        finding = pixel_text_finding(head)
        if finding is None:
            status, verdict = Status.OPTION, "allowed by cleanPixelDataOpt: pixels are checked"
        elif finding.justified:
            status, verdict = Status.JUSTIFIED, f"justified: {finding.problem}"
        else:
            status, verdict = Status.UNJUSTIFIED, f"NOT JUSTIFIED: {finding.problem}"
        changes.append(
            _setting(
                slug,
                "pixel_text (burned-in text in PixelData)",
                str(old_policy) if old_policy is not None else "none",
                str(head.pixel_text),
                verdict,
                kind=Kind.ACTION if old_policy is not None else Kind.NEW,
                status=status,
                profile=PIXEL_TEXT_PROFILE,
                justification=head.pixel_text_justification,
            )
        )
    if base is None or PixelText.OFF in (base.pixel_text, head.pixel_text):
        return changes  # no benign list applies on one side: the pixel_text row says it all
    old_markers, new_markers = base.benign_markers, head.benign_markers
    assert old_markers is not None and new_markers is not None
    source = new_markers.source
    for what, old_set, new_set in (
        ("word", old_markers.words, new_markers.words),
        ("symbol", old_markers.symbols, new_markers.symbols),
    ):
        for marker in sorted(new_set - old_set):
            changes.append(_marker(slug, what, marker, Kind.NEW, source))
        for marker in sorted(old_set - new_set):
            changes.append(_marker(slug, what, marker, Kind.STOPS, source))
    return changes


def _marker(slug: str, what: str, marker: str, kind: Kind, source: str) -> Change:
    masked, stays = "masked", "stays burned in"
    return _setting(
        slug,
        f"burned-in {what} '{marker}' (benign markers)",
        masked if kind is Kind.NEW else stays,
        stays if kind is Kind.NEW else masked,
        f"reviewed list {source}: letters-only words and symbols, no identifier",
        kind=kind,
        status=Status.SETTING if kind is Kind.NEW else Status.NOTHING,
        profile=PIXEL_TEXT_PROFILE,
    )


def as_json(report: DiffReport) -> dict[str, Any]:
    """The report for tools: one object, every row with its fields."""
    return {
        "base": report.base,
        "head": report.head,
        "passed": report.passed,
        "failing": len(report.failing),
        "notes": list(report.notes),
        "changes": [_change_json(c) for c in report.changes],
    }


def _change_json(change: Change) -> dict[str, Any]:
    return {
        "project": change.project,
        "scope": change.scope,
        "attribute": change.attribute,
        "kind": change.kind.value,
        "before": change.before,
        "after": change.after,
        "ps315": change.profile,
        "status": change.status.value,
        "verdict": change.verdict,
        "justification": change.justification,
        "fails": change.fails,
    }
