"""``pixl verify``: what a project's destination holds, against its manifest and PIXL's records.

PIXL's records (the ``exported`` studies in Postgres, with the SHA-256 and instance count the
exporter recorded) say what must be there. A *reader*, one per destination kind, says what is
there, read back from the destination itself rather than from anything PIXL remembers:

- ``ftps`` (``pixl_core.dsh.ftps_reader``): the listing of ``<project>/dicom/``, and the SHA-256
  of every zip, downloaded as a stream; and the ``manifest.json`` found there;
- ``dicomweb`` (``pixl_core.dsh.dicomweb_reader``): for each study PIXL exported there, its
  instances counted by QIDO-RS on the server. A research platform holds other projects' studies
  too, so only the studies PIXL sent are asked for: nothing is ever "extra" there, a study the
  server lacks is missing and one with another instance count is corrupt (incomplete).
  ``compare`` checks instance counts where a reader gives them and digests where it gives those.

``compare`` is pure: expected items and what was found in, a ``Verification`` out, with
missing, extra and corrupt items by name (pseudonymised names only: a file on the DSH whose
name PIXL would not have written is counted, never echoed, since anyone may have put it
there) and what is wrong with the manifest. Its ``fixes`` name the command that puts each
problem right.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

from pixl_core.config.projects import Project
from pixl_core.db.exported_studies import ExportedSnapshot, ExportedZip
from pixl_core.dsh import kinds, manifest


class Progress(Protocol):
    """How a reader tells how far it got (a progress bar in the CLI; nothing in tests)."""

    def start(self, total: int) -> None: ...

    def advance(self, done: int = 1) -> None: ...


class NoProgress:
    def start(self, total: int) -> None:
        pass

    def advance(self, done: int = 1) -> None:
        pass


@dataclass(frozen=True)
class Found:
    """One item a destination holds, as its reader saw it: an FTPS zip by file name (digest
    and size read back), a DICOMweb study by pseudonymised UID (instances counted there)."""

    name: str
    sha256: str | None = None
    instances: int | None = None
    size: int | None = None


@dataclass(frozen=True)
class Expected:
    """One item PIXL's records say the destination holds."""

    name: str
    sha256: str | None
    instances: int


@dataclass
class Holding:
    """What a reader found: items by name, and the manifest's bytes where the kind keeps one
    (None: there is none)."""

    items: dict[str, Found]
    manifest: bytes | None = None


# (project, progress, the names PIXL's records expect there) -> what the destination holds
Reader = Callable[[Project, Progress, Collection[str]], Holding]


@dataclass(frozen=True)
class DestinationKind:
    """How ``pixl verify`` checks one kind of destination.

    ``read`` lists what it holds; ``key`` names an exported study as the reader names items;
    ``has_manifest`` says whether a manifest is kept there; ``remove`` deletes items found
    corrupt before they are exported again (None: nothing to delete, a re-export replaces).
    """

    read: Reader
    key: Callable[[ExportedZip], str]
    has_manifest: bool
    remove: Callable[[Project, list[str]], None] | None = None


def _ftps_kind() -> DestinationKind:
    from pixl_core.dsh import ftps_reader

    return DestinationKind(
        read=ftps_reader.read,
        key=lambda z: z.file_name,
        has_manifest=True,
        remove=ftps_reader.remove,
    )


def _dicomweb_kind() -> DestinationKind:
    from pixl_core.dsh import dicomweb_reader

    return DestinationKind(
        read=dicomweb_reader.read,
        key=lambda z: z.pseudo_study_uid,
        has_manifest=False,
        remove=None,  # the export asks the server which instances it holds and sends the rest
    )


# One entry per destination kind (``pixl_core.dsh.kinds``).
KINDS: dict[str, Callable[[], DestinationKind]] = {
    kinds.FTPS: _ftps_kind,
    kinds.DICOMWEB: _dicomweb_kind,
}


@dataclass
class ManifestCheck:
    """What is wrong with the manifest (``problem`` None: nothing)."""

    problem: str | None = None  # missing | unreadable | stale
    detail: str = ""
    listed: int = 0


@dataclass
class Verification:
    """The outcome of one verification, in counts and pseudonymised names only."""

    project: str
    kind: str
    expected: int
    found: int
    ok: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)  # names PIXL could have written
    extra_unnamed: int = 0  # files whose names PIXL would never write: counted only
    manifest: ManifestCheck | None = None
    busy: int = 0

    @property
    def problems(self) -> bool:
        return bool(
            self.missing
            or self.corrupt
            or self.extra
            or self.extra_unnamed
            or (self.manifest is not None and self.manifest.problem is not None)
        )

    def fixes(self) -> list[str]:
        """One line per kind of problem, naming the command that fixes it."""
        p = self.project
        lines = []
        if self.missing or self.corrupt:
            lines.append(
                f"fix: `pixl verify {p} --requeue` exports the {len(self.missing)} missing and "
                f"{len(self.corrupt)} corrupt stud(ies) again (a corrupt zip is deleted first)"
            )
        if self.extra or self.extra_unnamed:
            lines.append(
                "fix: PIXL did not export the extra file(s): find out who put them there and "
                f"remove them from {manifest.images_folder(p)}/ on the DSH by hand"
                + (
                    f" ({self.busy} stud(ies) are still on their way: run `pixl verify {p}` "
                    "again once `pixl status` shows none busy)"
                    if self.busy
                    else ""
                )
            )
        if self.manifest is not None and self.manifest.problem is not None:
            lines.append(f"fix: `pixl manifest {p}` writes the manifest again from PIXL's records")
        return lines

    def lines(self) -> list[str]:
        """The report as the CLI prints it."""
        head = (
            f"{self.project} ({self.kind}): {self.expected} expected from PIXL's records, "
            f"{self.found} found, {self.ok} ok"
        )
        out = [head]
        if self.manifest is not None:
            state = self.manifest.problem or "current"
            out.append(f"manifest: {state} ({self.manifest.listed} listed){self.manifest.detail}")
        for label, names in (
            ("missing", self.missing),
            ("corrupt", self.corrupt),
            ("extra", self.extra),
        ):
            if names:
                out.append(f"{label} {len(names)}: {', '.join(names)}")
        if self.extra_unnamed:
            out.append(f"extra {self.extra_unnamed} file(s) with names PIXL never writes")
        if self.busy:
            out.append(f"note: {self.busy} stud(ies) still queued or being exported")
        out += self.fixes() if self.problems else ["nothing missing, extra or corrupt"]
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "kind": self.kind,
            "expected": self.expected,
            "found": self.found,
            "ok": self.ok,
            "missing": self.missing,
            "corrupt": self.corrupt,
            "extra": self.extra,
            "extra_unnamed": self.extra_unnamed,
            "manifest": None
            if self.manifest is None
            else {"problem": self.manifest.problem, "listed": self.manifest.listed},
            "busy": self.busy,
            "problems": self.problems,
        }


def expected_items(snapshot: ExportedSnapshot, kind: DestinationKind) -> dict[str, Expected]:
    """PIXL's records as the reader of ``kind`` names items."""
    return {kind.key(z): Expected(kind.key(z), z.sha256, z.instance_count) for z in snapshot.zips}


def _pixl_could_name(name: str) -> bool:
    """A zip name PIXL writes (a pseudonymised UID), or its temporary ``.<name>.part``."""
    if name.startswith(".") and name.endswith(".part"):
        name = name[1 : -len(".part")]
    return bool(manifest.ZIP_NAME.match(name))


def compare(
    project: str,
    kind_name: str,
    expected: dict[str, Expected],
    holding: Holding,
    *,
    has_manifest: bool,
    busy: int = 0,
    name_ok: Callable[[str], bool] = _pixl_could_name,
) -> Verification:
    """Expected items against what the destination holds, and its manifest against both."""
    found = holding.items
    result = Verification(project, kind_name, expected=len(expected), found=len(found), busy=busy)
    for name, want in sorted(expected.items()):
        got = found.get(name)
        if got is None:
            result.missing.append(name)
        elif (got.sha256 is not None and got.sha256 != want.sha256) or (
            got.instances is not None and got.instances != want.instances
        ):
            result.corrupt.append(name)
        else:
            result.ok += 1
    for name in sorted(set(found) - set(expected)):
        if name_ok(name):
            result.extra.append(name)
        else:
            result.extra_unnamed += 1
    if has_manifest:
        result.manifest = check_manifest(holding.manifest, expected)
    return result


def check_manifest(raw: bytes | None, expected: dict[str, Expected]) -> ManifestCheck:
    """Whether the manifest found lists exactly what PIXL's records say, digests and counts
    included."""
    if raw is None:  # nothing exported yet: nothing to list, so none is written
        return ManifestCheck("missing" if expected else None)
    try:
        document = manifest.parse(raw)
    except manifest.ManifestUnreadable as exc:
        return ManifestCheck("unreadable", f": {exc}")
    listed = document.entries
    unlisted = sum(1 for name in expected if name not in listed)
    not_exported = sum(1 for name in listed if name not in expected)
    differing = sum(
        1
        for name, entry in listed.items()
        if name in expected
        and (entry.sha256, entry.instances) != (expected[name].sha256, expected[name].instances)
    )
    if unlisted or not_exported or differing:
        detail = (
            f": {unlisted} exported zip(s) not listed, {not_exported} listed but not exported, "
            f"{differing} listed with another digest or count"
        )
        return ManifestCheck("stale", detail, len(listed))
    return ManifestCheck(None, "", len(listed))
