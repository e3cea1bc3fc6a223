"""Project configuration: ``projects/<slug>.yaml``.

A project names the modalities it accepts, the allow-list files that compose its tag policy,
the series it never wants (scouts, localisers), the DICOM PS3.15 options it claims, and where
its exports go (without secrets: passwords come from the environment). Everything is validated
on load so that a typo stops the run with one line instead of leaking or dropping data later.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from pixl_core.config.allowlist import (
    Action,
    AllowList,
    AllowListFile,
    AttributeKey,
    load_allowlist_file,
)
from pixl_core.config.omop_columns import omop_columns
from pixl_core.config.pixel_policy import (
    DEFAULT_BENIGN_FILE,
    BenignMarkers,
    PixelText,
    load_benign_markers,
    parse_justification,
    parse_pixel_text,
)
from pixl_core.config.yaml_file import read_mapping, refuse_unknown_keys
from pixl_core.errors import (
    InvalidAllowlistError,
    InvalidProjectError,
    UnknownProjectError,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
# A slug names a file, a database value and an FTPS folder: bounded, so that a hostile or
# mistaken argument is refused with one line instead of failing deep inside the file system.
SLUG_MAX_LENGTH = 64
_SLUG = re.compile(r"[a-z0-9][a-z0-9-]*")
SLUG_RULE = f"lowercase letters, digits and '-', at most {SLUG_MAX_LENGTH} characters"
PROJECT_KEYS = frozenset(
    {
        "name",
        "description",
        "modalities",
        "allowlists",
        "overrides",
        "series_filters",
        "allow_burned_in_annotation",
        "ps315_options",
        "date_shift_max_days",
        "destination",
        "allow_omop_columns",
        "pixel_text",
        "pixel_text_justification",
        "pixel_text_benign",
        "descriptors",
        "priority",
        "multiple_studies_per_accession",
    }
)
# What orthanc-raw does when the archive answers an accession number with several studies:
# export each as its own study (default), or refuse the work item (multiple_studies_per_accession).
MULTIPLE_STUDIES_POLICIES = ("export", "refuse")
DESCRIPTOR_KEYS = frozenset({"check", "replacement", "justification"})
DESTINATION_KEYS = frozenset({"host", "port", "user", "root", "implicit_tls", "ca_file", "verify"})
DICOMWEB_KEYS = frozenset({"url", "auth", "user", "ca_file", "batch_size"})
DICOMWEB_AUTH = ("basic", "bearer", "none")
DICOMWEB_BATCH_MAX = 500

# PS3.15 options by the column names of the confidentiality-profile table, with their PS3.16
# (CID 7050) codes, used in DeidentificationMethodCodeSequence.
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
PS315_OPTIONS: dict[str, tuple[str, str]] = {
    "cleanPixelDataOpt": ("113101", "Clean Pixel Data Option"),
    "cleanRecogOpt": ("113102", "Clean Recognizable Visual Features Option"),
    "cleanGraphOpt": ("113103", "Clean Graphics Option"),
    "cleanStructContOpt": ("113104", "Clean Structured Content Option"),
    "cleanDescOpt": ("113105", "Clean Descriptors Option"),
    "rtnLongFullDatesOpt": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "rtnLongModifDatesOpt": (
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    "rtnPatCharsOpt": ("113108", "Retain Patient Characteristics Option"),
    "rtnDevIdOpt": ("113109", "Retain Device Identity Option"),
    "rtnUIDsOpt": ("113110", "Retain UIDs Option"),
    "rtnSafePrivOpt": ("113111", "Retain Safe Private Option"),
    "rtnInstIdOpt": ("113112", "Retain Institution Identity Option"),
}

# Attributes without which the output is not a usable DICOM instance, and how they must be listed.
REQUIRED_RULES: dict[str, tuple[Action, ...]] = {
    "SOPClassUID": (Action.KEEP,),
    "SOPInstanceUID": (Action.UID,),
    "StudyInstanceUID": (Action.UID,),
    "SeriesInstanceUID": (Action.UID,),
    "Modality": (Action.KEEP,),
    "PixelData": (Action.KEEP,),
}


def projects_dir() -> Path:
    return Path(os.environ.get("PIXL_PROJECTS_DIR", REPO_ROOT / "projects"))


def allowlists_dir() -> Path:
    return Path(os.environ.get("PIXL_ALLOWLISTS_DIR", REPO_ROOT / "tag_allowlists"))


@dataclass(frozen=True)
class Destination:
    """The FTPS server a project's files go to, as its file names it; never a secret.

    ``pixl_core.transport.ftps.FtpsSettings.for_project`` adds the password (and, if set, a CA
    file) from the environment.
    """

    host: str
    user: str
    port: int = 21
    root: str = "/"
    implicit_tls: bool = False
    ca_file: str | None = None
    verify: bool = True


@dataclass(frozen=True)
class DicomwebDestination:
    """The DICOMweb (STOW-RS) endpoint a project's images go to, as its file names it.

    ``url`` is the service root (``.../dicom-web``): STOW-RS posts to ``<url>/studies``, QIDO-RS
    asks ``<url>/studies/<uid>/instances``. The password or token and, optionally, the CA file
    come from the environment (``pixl_core.transport.dicomweb.DicomwebSettings.for_project``).
    """

    url: str
    auth: str = "basic"  # basic | bearer | none
    user: str | None = None
    ca_file: str | None = None
    batch_size: int = 20


@dataclass(frozen=True)
class DescriptorPolicy:
    """``descriptors:``: every kept free-text value is checked for the instance's identifiers
    (``pixl_core/dicom/descriptors.py``) and a flagged one becomes ``replacement``. On unless
    the project says ``check: off`` with a justification; only then may it not claim
    ``cleanDescOpt``, and while it is off it may not."""

    clean: bool = True
    replacement: str = ""


@dataclass(frozen=True)
class Project:
    """A validated project file and the allow-lists it composes."""

    slug: str
    name: str
    description: str
    modalities: frozenset[str]
    base: AllowList
    base_files: tuple[AllowListFile, ...]
    overrides: tuple[AllowListFile, ...]
    series_filters: tuple[re.Pattern[str], ...]
    allow_burned_in_annotation: bool
    ps315_options: tuple[str, ...]
    date_shift_max_days: int
    # Where files go over FTPS: the image zips, unless ``dicomweb`` is set, and always the
    # tabular files (radiology parquet, public OMOP files). None: the file names no FTPS server.
    destination: Destination | None
    # OMOP columns refused by default that this project lets out: "TABLE.column" → justification
    allow_omop_columns: dict[str, str] = field(default_factory=dict, compare=False)
    # Burned-in text (pixl_core.config.pixel_policy): mask, refuse or off (with a justification)
    pixel_text: PixelText = PixelText.MASK
    pixel_text_justification: str | None = None
    benign_markers: BenignMarkers | None = field(default=None, compare=False)
    descriptors: DescriptorPolicy = field(default_factory=DescriptorPolicy)
    # Queued work of this project is claimed before work of lower priority (pixl populate
    # --priority overrides it per cohort).
    priority: int = 0
    # ``destination: dicomweb:``: the images go there by STOW-RS instead of FTPS zips.
    dicomweb: DicomwebDestination | None = None
    # Several studies behind one accession number: each exported as its own study ("export"),
    # or the work item refused ("refuse"); never merged into one.
    multiple_studies_per_accession: str = "export"
    _cache: dict[tuple[str, str], AllowList] = field(default_factory=dict, compare=False)

    @property
    def method_options(self) -> tuple[str, ...]:
        """The PS3.15 options recorded on every instance: the claimed ones, plus Clean Pixel
        Data when the pixels are checked (``pixel_text`` mask or refuse)."""
        if self.pixel_text is PixelText.OFF or "cleanPixelDataOpt" in self.ps315_options:
            return self.ps315_options
        return (*self.ps315_options, "cleanPixelDataOpt")

    def allowlist_for(self, manufacturer: str, model: str) -> AllowList:
        """The base list with the overrides whose regexes match this device, in file order."""
        key = (manufacturer, model)
        cached = self._cache.get(key)
        if cached is None:
            cached = self.base
            for override in self.overrides:
                if override.matches(manufacturer, model):
                    cached = cached.merged_with(override.allowlist, override=True)
            self._cache[key] = cached
        return cached


def list_projects() -> list[str]:
    return sorted(p.stem for p in projects_dir().glob("*.yaml"))


def is_valid_slug(slug: str) -> bool:
    """Whether ``slug`` has the shape of a project slug (it may still name no project)."""
    return len(slug) <= SLUG_MAX_LENGTH and _SLUG.fullmatch(slug) is not None


@cache
def load_project(slug: str) -> Project:
    """Load ``projects/<slug>.yaml`` (cached: projects are read once per process)."""
    known = ", ".join(list_projects()) or "none"
    if not is_valid_slug(slug):
        # Not echoed: it may be anything, of any length.
        raise UnknownProjectError(f"that is not a project slug ({SLUG_RULE}): use one of: {known}")
    path = projects_dir() / f"{slug}.yaml"
    if not path.is_file():
        raise UnknownProjectError(
            f"unknown project '{slug}': add projects/{slug}.yaml or use one of: {known}"
        )
    return load_project_file(path)


def load_project_file(path: Path, allowlists: Path | None = None) -> Project:
    """Load one project file; its allow-lists from ``allowlists`` (default: ``allowlists_dir()``).

    ``pixl allowlist diff`` passes the folder of a git revision it has written out, so both
    sides of a comparison are loaded by this same code.
    """
    allowlists = allowlists or allowlists_dir()
    name = f"projects/{path.name}"
    raw = read_mapping(
        path, name, PROJECT_KEYS, expected="of project settings", error=InvalidProjectError
    )
    modalities = raw.get("modalities")
    if not isinstance(modalities, list) or not modalities:
        raise InvalidProjectError(
            f"{name}: 'modalities:' must list the accepted modalities, e.g. [CR, DX]"
        )
    base_files = tuple(
        _load_files(raw.get("allowlists"), name, "allowlists", allowlists, override=False)
    )
    overrides = tuple(
        _load_files(raw.get("overrides", []), name, "overrides", allowlists, override=True)
    )
    base = AllowList()
    for loaded in base_files:
        base = base.merged_with(loaded.allowlist, override=False)
    _check_required(base, name)
    for override in overrides:
        _check_no_pictures(override.allowlist, name)
    _check_no_pictures(base, name)
    options = tuple(raw.get("ps315_options") or [])
    for option in options:
        if option not in PS315_OPTIONS:
            raise InvalidProjectError(
                f"{name}: unknown PS3.15 option '{option}'; use one of {', '.join(PS315_OPTIONS)}"
            )
    pixel_text = parse_pixel_text(raw.get("pixel_text"), name)
    if pixel_text is PixelText.OFF and "cleanPixelDataOpt" in options:
        raise InvalidProjectError(
            f"{name}: 'ps315_options:' claims cleanPixelDataOpt but 'pixel_text:' is off; "
            "remove the claim or check the pixels (pixel_text: mask)"
        )
    justification = parse_justification(pixel_text, raw.get("pixel_text_justification"), name)
    benign = _benign_markers(raw.get("pixel_text_benign"), allowlists)
    descriptors = _parse_descriptors(raw.get("descriptors"), name)
    if "cleanDescOpt" in options and not descriptors.clean:
        raise InvalidProjectError(
            f"{name}: 'cleanDescOpt' is claimed but 'descriptors: check: off'; "
            "remove the claim or turn the descriptor check on"
        )
    max_days = raw.get("date_shift_max_days", 365)
    if not isinstance(max_days, int) or not 1 <= max_days <= 3650:
        raise InvalidProjectError(f"{name}: 'date_shift_max_days:' must be a whole number 1-3650")
    priority = raw.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or abs(priority) > 1000:
        raise InvalidProjectError(f"{name}: 'priority:' must be a whole number from -1000 to 1000")
    several = raw.get("multiple_studies_per_accession", "export")
    if several not in MULTIPLE_STUDIES_POLICIES:
        raise InvalidProjectError(
            f"{name}: 'multiple_studies_per_accession:' must be one of "
            f"{', '.join(MULTIPLE_STUDIES_POLICIES)}"
        )
    return Project(
        slug=path.stem,
        name=str(raw.get("name", path.stem)),
        description=str(raw.get("description", "")),
        modalities=frozenset(str(m).upper() for m in modalities),
        base=base,
        base_files=base_files,
        overrides=overrides,
        series_filters=_compile_filters(raw.get("series_filters", []), name),
        allow_burned_in_annotation=bool(raw.get("allow_burned_in_annotation", False)),
        ps315_options=options,
        date_shift_max_days=max_days,
        destination=_parse_destination(raw.get("destination"), name),
        dicomweb=_parse_dicomweb(raw.get("destination"), name),
        allow_omop_columns=_parse_omop_columns(raw.get("allow_omop_columns"), name),
        pixel_text=pixel_text,
        pixel_text_justification=justification,
        benign_markers=benign,
        descriptors=descriptors,
        priority=priority,
        multiple_studies_per_accession=several,
    )


def _benign_markers(value: Any, allowlists: Path) -> BenignMarkers:
    """The project's benign list; the shipped one when a folder of allow-lists has none."""
    relative = str(value or DEFAULT_BENIGN_FILE)
    path = allowlists / relative
    if value is None and not path.is_file():
        path = REPO_ROOT / "tag_allowlists" / DEFAULT_BENIGN_FILE
    return load_benign_markers(path, f"tag_allowlists/{relative}")


# The longest replacement every free-text VR can hold (SH: 16 characters).
DESCRIPTOR_REPLACEMENT_MAX = 16


def _parse_descriptors(raw: object, name: str) -> DescriptorPolicy:
    """``descriptors: {check: clean|off, replacement: TEXT, justification: WHY}``."""
    if raw is None:
        return DescriptorPolicy()
    if not isinstance(raw, dict) or set(raw) - DESCRIPTOR_KEYS:
        raise InvalidProjectError(
            f"{name}: 'descriptors:' must be a mapping of {', '.join(sorted(DESCRIPTOR_KEYS))}"
        )
    check = raw.get("check", "clean")
    check = "off" if check is False else str(check).lower()  # YAML reads a bare off as false
    if check not in ("clean", "off"):
        raise InvalidProjectError(f"{name}: 'descriptors: check:' must be clean or off")
    if check == "off" and not str(raw.get("justification") or "").strip():
        raise InvalidProjectError(
            f"{name}: 'descriptors: check: off' needs a 'justification:' saying why the kept "
            "descriptions hold no identifier"
        )
    replacement = raw.get("replacement", "")
    if (
        not isinstance(replacement, str)
        or len(replacement) > DESCRIPTOR_REPLACEMENT_MAX
        or not replacement.isprintable()
        or "\\" in replacement
    ):
        raise InvalidProjectError(
            f"{name}: 'descriptors: replacement:' must be text of at most "
            f"{DESCRIPTOR_REPLACEMENT_MAX} printable characters without a backslash"
        )
    return DescriptorPolicy(clean=check == "clean", replacement=replacement)


def _load_files(
    value: Any, name: str, key: str, allowlists: Path, *, override: bool
) -> list[AllowListFile]:
    if not override and (not isinstance(value, list) or not value):
        raise InvalidProjectError(f"{name}: '{key}:' must list allow-list files in tag_allowlists/")
    if not isinstance(value, list):
        raise InvalidProjectError(f"{name}: '{key}:' must be a list of files in tag_allowlists/")
    loaded = []
    for relative in value:
        file = load_allowlist_file(allowlists / str(relative), f"tag_allowlists/{relative}")
        if file.is_override != override:
            kind = "an override (it has 'match:')" if file.is_override else "not an override"
            raise InvalidProjectError(f"{name}: tag_allowlists/{relative} is {kind}; move it")
        loaded.append(file)
    return loaded


def _check_required(base: AllowList, name: str) -> None:
    from pydicom.datadict import tag_for_keyword

    for keyword, actions in REQUIRED_RULES.items():
        tag = tag_for_keyword(keyword)
        assert tag is not None
        rule = base.rule_for(AttributeKey(tag >> 16, tag & 0xFFFF))
        if rule is None or rule.action not in actions:
            wanted = " or ".join(a.value for a in actions)
            raise InvalidAllowlistError(
                f"{name}: the allow-lists must list {keyword} with action {wanted}"
            )


# Pictures beside Pixel Data that the burned-in text check does not read: overlays (60xx, whose
# bits can spell a name) and the icon image. No allow-list may let them out.
PICTURE_ATTRIBUTES = {
    "OverlayData (60xx,3000)": AttributeKey(0x6000, 0x3000),
    "IconImageSequence (0088,0200)": AttributeKey(0x0088, 0x0200),
}


def _check_no_pictures(allowlist: AllowList, name: str) -> None:
    for label, key in PICTURE_ATTRIBUTES.items():
        if allowlist.rule_for(key) is not None:
            raise InvalidAllowlistError(
                f"{name}: the allow-lists list {label}, a picture the burned-in text check "
                "does not read; remove it (overlays and icons never leave)"
            )


def _compile_filters(value: Any, name: str) -> tuple[re.Pattern[str], ...]:
    if not isinstance(value, list):
        raise InvalidProjectError(
            f"{name}: 'series_filters:' must be a list of regular expressions"
        )
    patterns = []
    for text in value:
        try:
            patterns.append(re.compile(str(text), re.IGNORECASE))
        except re.error as exc:
            raise InvalidProjectError(
                f"{name}: series filter '{text}' is not a valid regex ({exc})"
            ) from None
    return tuple(patterns)


def _parse_omop_columns(value: Any, name: str) -> dict[str, str]:
    """``allow_omop_columns:``: ``TABLE.column: justification`` for each OMOP column that the
    allow-list refuses by default (a ``*_source_value``, a date of birth...) and this project
    lets out. Only such columns may be named, each with a justification for the reviewer."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidProjectError(
            f"{name}: 'allow_omop_columns:' must map TABLE.column to a justification"
        )
    columns = omop_columns()
    allowed = {}
    for key, justification in value.items():
        table, _, column = str(key).partition(".")
        if not columns.has_column(table, column):
            raise InvalidProjectError(
                f"{name}: allow_omop_columns: {key} is not an OMOP CDM {columns.cdm_version} "
                "column of a table PIXL exports; write it as TABLE.column, e.g. "
                "PROCEDURE_OCCURRENCE.procedure_source_value"
            )
        if columns.restriction(table, column) is None:
            raise InvalidProjectError(
                f"{name}: allow_omop_columns: {key} may leave without being listed; remove it"
            )
        if not isinstance(justification, str) or not justification.strip():
            raise InvalidProjectError(
                f"{name}: allow_omop_columns: {key} needs a justification for the reviewer "
                "(why this column holds no identifier)"
            )
        allowed[f"{table}.{column}"] = justification.strip()
    return allowed


def _parse_destination(value: Any, name: str) -> Destination | None:
    """The ``destination: ftps:`` mapping, checked key by key; None when the file has none
    (such a project can be checked and anonymised offline, but exports refuse it)."""
    if value is None:
        return None
    if not isinstance(value, dict) or not value or set(value) - {"ftps", "dicomweb"}:
        raise InvalidProjectError(
            f"{name}: 'destination:' must hold an 'ftps:' mapping, a 'dicomweb:' mapping, or both"
        )
    ftps = value.get("ftps")
    if ftps is None:  # images by DICOMweb only; exporting the tabular files is refused
        return None
    if not isinstance(ftps, dict):
        raise InvalidProjectError(f"{name}: 'destination: ftps:' must be a mapping")
    if "password" in ftps:
        slug_variable = "PIXL_DSH_PASSWORD__" + Path(name).stem.upper().replace("-", "_")
        raise InvalidProjectError(
            f"{name}: never put the FTPS password in the project file; set {slug_variable} "
            "or PIXL_DSH_PASSWORD"
        )
    refuse_unknown_keys(ftps, DESTINATION_KEYS, name, InvalidProjectError, "destination key")
    for key in ("host", "user"):
        if not isinstance(ftps.get(key), str) or not ftps[key].strip():
            raise InvalidProjectError(
                f"{name}: destination 'ftps:' needs '{key}:' (the DSH's {key})"
            )
    for key in ("implicit_tls", "verify"):
        if not isinstance(ftps.get(key, True), bool):
            raise InvalidProjectError(f"{name}: destination '{key}:' must be true or false")
    implicit_tls = ftps.get("implicit_tls", False)
    port = ftps.get("port", 990 if implicit_tls else 21)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise InvalidProjectError(f"{name}: destination 'port:' must be a whole number 1-65535")
    root = ftps.get("root", "/")
    if not isinstance(root, str) or not root.startswith("/"):
        raise InvalidProjectError(f"{name}: destination 'root:' must be an absolute path, e.g. /")
    ca_file = ftps.get("ca_file")
    if ca_file is not None and not isinstance(ca_file, str):
        raise InvalidProjectError(f"{name}: destination 'ca_file:' must be the path of a PEM file")
    return Destination(
        host=ftps["host"].strip(),
        user=ftps["user"].strip(),
        port=port,
        root=root,
        implicit_tls=implicit_tls,
        ca_file=ca_file,
        verify=ftps.get("verify", True),
    )


def _parse_dicomweb(value: Any, name: str) -> DicomwebDestination | None:
    """``destination: dicomweb:`` (url, auth, user, ca_file, batch_size), checked key by key;
    None when the file has none. ``_parse_destination`` has already checked the outer mapping."""
    if not isinstance(value, dict) or value.get("dicomweb") is None:
        return None
    web = value["dicomweb"]
    if not isinstance(web, dict):
        raise InvalidProjectError(f"{name}: 'destination: dicomweb:' must be a mapping")
    variable = "__" + Path(name).stem.upper().replace("-", "_")
    for secret, env in (("password", "PASSWORD"), ("token", "TOKEN")):
        if secret in web:
            raise InvalidProjectError(
                f"{name}: never put the DICOMweb {secret} in the project file; set "
                f"PIXL_DICOMWEB_{env}{variable} or PIXL_DICOMWEB_{env}"
            )
    refuse_unknown_keys(web, DICOMWEB_KEYS, name, InvalidProjectError, "dicomweb key")
    url = web.get("url")
    # https only: the account's password or token goes with every request.
    if not isinstance(url, str) or not re.fullmatch(r"https://[^\s/?#@]+(/[^\s?#]*)?", url):
        raise InvalidProjectError(
            f"{name}: destination 'dicomweb: url:' must be the https:// service root, "
            "e.g. https://research.example.org/dicom-web"
        )
    auth = web.get("auth", "basic")
    if auth not in DICOMWEB_AUTH:
        raise InvalidProjectError(
            f"{name}: destination 'dicomweb: auth:' must be one of {', '.join(DICOMWEB_AUTH)}"
        )
    user = web.get("user")
    if auth == "basic" and (not isinstance(user, str) or not user.strip()):
        raise InvalidProjectError(
            f"{name}: destination 'dicomweb:' with auth: basic needs 'user:' (the account name)"
        )
    if auth != "basic" and user is not None:
        raise InvalidProjectError(
            f"{name}: destination 'dicomweb: user:' is only for auth: basic; remove it"
        )
    ca_file = web.get("ca_file")
    if ca_file is not None and not isinstance(ca_file, str):
        raise InvalidProjectError(
            f"{name}: destination 'dicomweb: ca_file:' must be the path of a PEM file"
        )
    batch = web.get("batch_size", DicomwebDestination.batch_size)
    if (
        isinstance(batch, bool)
        or not isinstance(batch, int)
        or not 1 <= batch <= DICOMWEB_BATCH_MAX
    ):
        raise InvalidProjectError(
            f"{name}: destination 'dicomweb: batch_size:' must be a whole number "
            f"1-{DICOMWEB_BATCH_MAX} (instances per STOW-RS request)"
        )
    return DicomwebDestination(
        url=url.rstrip("/"),
        auth=auth,
        user=user.strip() if isinstance(user, str) else None,
        ca_file=ca_file,
        batch_size=batch,
    )
