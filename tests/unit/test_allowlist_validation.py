"""Every way an allow-list or project file can be wrong gives one line naming file and entry.

A reviewer or data engineer must be able to fix a broken allow-list from the message alone,
without a traceback and without reading Python: each case checks that the message is a single
line, names the file (and the entry, for entry problems) and says what is wrong.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pixl_core.config.allowlist import load_allowlist_file
from pixl_core.config.projects import load_project, load_project_file
from pixl_core.errors import PixlConfigError

REPO = Path(__file__).resolve().parents[2]
PIXL = REPO / ".venv" / "bin" / "pixl"
NAME = "tag_allowlists/test.yaml"
REQUIRED = [
    {"attribute": "SOPClassUID", "action": "keep"},
    {"attribute": "SOPInstanceUID", "action": "uid"},
    {"attribute": "StudyInstanceUID", "action": "uid"},
    {"attribute": "SeriesInstanceUID", "action": "uid"},
    {"attribute": "Modality", "action": "keep"},
    {"attribute": "PixelData", "action": "keep"},
]


def entries(*items: dict[str, Any]) -> str:
    return yaml.safe_dump({"attributes": list(items)})


SEQUENCE_ITEMS = [{"attribute": "CodeValue", "action": "keep"}]

# (case id, file text, words the message must contain, entry it must name or None)
ALLOWLIST_CASES: list[tuple[str, str, tuple[str, ...], str | None]] = [
    ("invalid-yaml", "attributes: [\n  - {attribute: PatientSex", ("not valid YAML", "line"), None),
    ("not-a-mapping", "- PatientSex\n", ("expected a mapping",), None),
    (
        "unknown-file-key",
        yaml.safe_dump({"attributes": REQUIRED, "atributes": []}),
        ("unknown key 'atributes'",),
        None,
    ),
    ("empty-attributes", yaml.safe_dump({"attributes": []}), ("non-empty list",), None),
    (
        "bad-match",
        yaml.safe_dump({"match": {"vendor": "x"}, "attributes": REQUIRED}),
        ("'match:'",),
        None,
    ),
    (
        "bad-match-regex",
        yaml.safe_dump({"match": {"model": "("}, "attributes": REQUIRED}),
        ("match.model", "not a valid regex"),
        None,
    ),
    ("entry-not-mapping", entries("PatientSex"), ("expected a mapping",), "entry 1"),
    (
        "unknown-entry-key",
        entries({"attribute": "PatientSex", "action": "keep", "justfication": "x"}),
        ("unknown key 'justfication'",),
        "entry 1",
    ),
    ("missing-attribute", entries({"action": "keep"}), ("missing 'attribute:'",), "entry 1"),
    (
        "unknown-keyword",
        entries({"attribute": "PatientSex", "action": "keep"}, {"attribute": "PatientSx"}),
        ("unknown keyword 'PatientSx'",),
        "entry 2",
    ),
    (
        "unknown-action",
        entries({"attribute": "PatientSex", "action": "keeep"}),
        ("unknown action 'keeep'", "PatientSex"),
        "entry 1",
    ),
    (
        "unknown-public-tag",
        entries({"attribute": "(0008,9999)", "action": "keep"}),
        ("not a known public attribute",),
        "entry 1",
    ),
    (
        "duplicate-entry",
        entries(
            {"attribute": "PatientSex", "action": "keep"},
            {"attribute": "(0010,0040)", "action": "empty"},
        ),
        ("duplicate of", "entry 1", "PatientSex"),
        "entry 2",
    ),
    (
        "hash-on-US",
        entries({"attribute": "Rows", "action": "hash"}),
        ("action 'hash' does not fit VR US",),
        "entry 1",
    ),
    (
        "shift-on-TM",
        entries({"attribute": "StudyTime", "action": "shift"}),
        ("action 'shift' does not fit VR TM",),
        "entry 1",
    ),
    (
        "uid-on-LO",
        entries({"attribute": "PatientID", "action": "uid"}),
        ("action 'uid' does not fit VR LO",),
        "entry 1",
    ),
    (
        "replace-value-not-fitting-vr",
        entries({"attribute": "PatientSex", "action": "replace", "value": "female"}),
        ("value does not fit VR CS",),
        "entry 1",
    ),
    (
        "replace-without-value",
        entries({"attribute": "PatientSex", "action": "replace"}),
        ("needs 'value:'",),
        "entry 1",
    ),
    (
        "value-without-replace",
        entries({"attribute": "PatientSex", "action": "keep", "value": "O"}),
        ("'value:' only goes with action 'replace'",),
        "entry 1",
    ),
    (
        "truncate-without-to",
        entries({"attribute": "StudyDate", "action": "truncate"}),
        ("'to: year' or 'to: month'",),
        "entry 1",
    ),
    (
        "to-without-truncate",
        entries({"attribute": "StudyDate", "action": "shift", "to": "year"}),
        ("'to:' only goes with action 'truncate'",),
        "entry 1",
    ),
    (
        "private-by-raw-element",
        entries({"attribute": "(0019,1010)", "private_creator": "ACME", "action": "keep"}),
        ("by offset", "(0019,xx10)", "never by raw element number"),
        "entry 1",
    ),
    (
        "private-without-creator",
        entries({"attribute": "(0019,xx10)", "action": "keep"}),
        ("needs 'private_creator:'",),
        "entry 1",
    ),
    (
        "private-hash-without-vr",
        entries({"attribute": "(0019,xx10)", "private_creator": "ACME", "action": "hash"}),
        ("needs 'vr:'",),
        "entry 1",
    ),
    (
        "creator-on-public-keyword",
        entries({"attribute": "PatientSex", "private_creator": "ACME", "action": "keep"}),
        ("only for private attributes",),
        "entry 1",
    ),
    (
        "creator-on-public-tag",
        entries({"attribute": "(0010,0040)", "private_creator": "ACME", "action": "keep"}),
        ("only for private attributes",),
        "entry 1",
    ),
    (
        "xx-on-public-group",
        entries({"attribute": "(0010,xx40)", "action": "keep"}),
        ("only for private (odd) groups",),
        "entry 1",
    ),
    (
        "vr-on-public",
        entries({"attribute": "PatientSex", "vr": "LO", "action": "keep"}),
        ("'vr:' is only for private attributes",),
        "entry 1",
    ),
    (
        "kept-sequence-without-items",
        entries({"attribute": "ViewCodeSequence", "action": "keep"}),
        ("needs 'items:'", "ViewCodeSequence"),
        "entry 1",
    ),
    (
        "hashed-sequence",
        entries({"attribute": "ViewCodeSequence", "action": "hash"}),
        ("does not fit VR SQ",),
        "entry 1",
    ),
    (
        "items-on-removed-sequence",
        entries({"attribute": "ViewCodeSequence", "action": "remove", "items": SEQUENCE_ITEMS}),
        ("'items:' only goes with action keep",),
        "entry 1",
    ),
    (
        "items-on-non-sequence",
        entries({"attribute": "PatientSex", "action": "keep", "items": SEQUENCE_ITEMS}),
        ("only goes with a sequence",),
        "entry 1",
    ),
    (
        "nested-unknown-keyword",
        entries(
            {
                "attribute": "ViewCodeSequence",
                "action": "keep",
                "items": [{"attribute": "CodeValu", "action": "keep"}],
            }
        ),
        ("unknown keyword 'CodeValu'",),
        "entry 1.1",
    ),
    (
        "empty-justification",
        entries({"attribute": "PatientSex", "action": "keep", "justification": " "}),
        ("'justification:' is empty",),
        "entry 1",
    ),
]


@pytest.mark.parametrize(
    ("text", "words", "entry"),
    [case[1:] for case in ALLOWLIST_CASES],
    ids=[case[0] for case in ALLOWLIST_CASES],
)
def test_allowlist_errors_are_one_line(
    tmp_path: Path, text: str, words: tuple[str, ...], entry: str | None
) -> None:
    path = tmp_path / "test.yaml"
    path.write_text(text)
    with pytest.raises(PixlConfigError) as caught:
        load_allowlist_file(path, NAME)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{NAME}: ")
    if entry is not None:
        assert f"{NAME}: {entry} " in message or f"{NAME}: {entry}:" in message
    for word in words:
        assert word in message


def test_missing_allowlist_file(tmp_path: Path) -> None:
    with pytest.raises(PixlConfigError, match=r"^tag_allowlists/test\.yaml: file not found"):
        load_allowlist_file(tmp_path / "absent.yaml", NAME)


# --- project files ---------------------------------------------------------------------------


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "projects").mkdir()
    lists = tmp_path / "tag_allowlists"
    lists.mkdir()
    (lists / "base.yaml").write_text(yaml.safe_dump({"attributes": REQUIRED}))
    (lists / "other.yaml").write_text(entries({"attribute": "Modality", "action": "keep"}))
    (lists / "vendor.yaml").write_text(
        yaml.safe_dump({"match": {"manufacturer": "acme"}, "attributes": REQUIRED[:1]})
    )
    monkeypatch.setenv("PIXL_PROJECTS_DIR", str(tmp_path / "projects"))
    monkeypatch.setenv("PIXL_ALLOWLISTS_DIR", str(lists))
    load_project.cache_clear()
    yield tmp_path
    load_project.cache_clear()


def project(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"modalities": ["DX"], "allowlists": ["base.yaml"]}
    raw.update(overrides)
    return {k: v for k, v in raw.items() if v is not None}


PROJECT_CASES: list[tuple[str, Any, tuple[str, ...]]] = [
    ("unknown-key", project(modality=["DX"]), ("unknown key 'modality'",)),
    ("no-modalities", project(modalities=None), ("'modalities:'",)),
    ("no-allowlists", project(allowlists=[]), ("'allowlists:'",)),
    (
        "conflicting-base-files",
        project(allowlists=["base.yaml", "other.yaml"]),
        ("tag_allowlists/other.yaml: entry 1", "Modality", "already listed in", "base.yaml"),
    ),
    (
        "override-listed-as-base",
        project(allowlists=["base.yaml", "vendor.yaml"]),
        ("tag_allowlists/vendor.yaml is an override",),
    ),
    (
        "base-listed-as-override",
        project(overrides=["other.yaml"]),
        ("tag_allowlists/other.yaml is not an override",),
    ),
    ("overrides-not-list", project(overrides="vendor.yaml"), ("'overrides:'",)),
    (
        "broken-allowlist-named-from-project",
        project(allowlists=["missing.yaml"]),
        ("tag_allowlists/missing.yaml: file not found",),
    ),
    ("unknown-ps315-option", project(ps315_options=["rtnDatesOpt"]), ("rtnDatesOpt",)),
    ("bad-date-shift", project(date_shift_max_days=0), ("date_shift_max_days",)),
    ("bad-series-filter", project(series_filters=["("]), ("series filter", "not a valid regex")),
    (
        "password-in-destination",
        project(destination={"ftps": {"host": "dsh", "password": "hunter2"}}),
        ("never put the FTPS password", "PIXL_DSH_PASSWORD"),
    ),
    (
        "unknown-destination-key",
        project(destination={"ftps": {"hostname": "dsh"}}),
        ("unknown destination key 'hostname'",),
    ),
    ("destination-without-ftps", project(destination={"sftp": {}}), ("'ftps:'",)),
    ("not-a-mapping", ["modalities"], ("expected a mapping",)),
]


@pytest.mark.parametrize(
    ("raw", "words"), [c[1:] for c in PROJECT_CASES], ids=[c[0] for c in PROJECT_CASES]
)
def test_project_errors_are_one_line(dirs: Path, raw: Any, words: tuple[str, ...]) -> None:
    path = dirs / "projects" / "demo.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(PixlConfigError) as caught:
        load_project_file(path)
    message = str(caught.value)
    assert "\n" not in message
    assert "projects/demo.yaml" in message or "tag_allowlists/" in message
    for word in words:
        assert word in message, message


def test_required_attributes_must_be_listed(dirs: Path) -> None:
    (dirs / "tag_allowlists" / "base.yaml").write_text(entries(*REQUIRED[:-1]))
    path = dirs / "projects" / "demo.yaml"
    path.write_text(yaml.safe_dump(project()))
    with pytest.raises(
        PixlConfigError, match=r"^projects/demo\.yaml: .*PixelData with action keep"
    ):
        load_project_file(path)


def test_invalid_project_yaml(dirs: Path) -> None:
    path = dirs / "projects" / "demo.yaml"
    path.write_text("modalities: [DX\n")
    with pytest.raises(PixlConfigError, match=r"^projects/demo\.yaml: not valid YAML"):
        load_project_file(path)


def test_unknown_project(dirs: Path) -> None:
    (dirs / "projects" / "demo.yaml").write_text(yaml.safe_dump(project()))
    with pytest.raises(PixlConfigError, match=r"^unknown project 'nope'.*one of: demo$"):
        load_project("nope")


# --- the same errors through the real command --------------------------------------------------


def check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "PIXL_HASH_KEY"}
    full_env.update(env or {})
    result = subprocess.run(
        [str(PIXL), "allowlist", "check", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
    )
    assert "Traceback" not in result.stderr
    return result


@pytest.mark.skipif(not PIXL.exists(), reason="needs `make setup` (.venv/bin/pixl)")
@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("hash-on-US", ("entry 1 (Rows)", "does not fit VR US")),
        ("private-by-raw-element", ("entry 1", "never by raw element number")),
        ("invalid-yaml", ("not valid YAML",)),
    ],
)
def test_cli_reports_invalid_file_in_one_line(
    tmp_path: Path, case: str, words: tuple[str, ...]
) -> None:
    text = next(c[1] for c in ALLOWLIST_CASES if c[0] == case)
    path = tmp_path / "list.yaml"
    path.write_text(text)
    result = check(str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {path}")
    for word in words:
        assert word in lines[0]


@pytest.mark.skipif(not PIXL.exists(), reason="needs `make setup` (.venv/bin/pixl)")
def test_cli_reports_project_errors_in_one_line(dirs: Path) -> None:
    (dirs / "projects" / "demo.yaml").write_text(
        yaml.safe_dump(project(ps315_options=["rtnDatesOpt"]))
    )
    env = {
        "PIXL_PROJECTS_DIR": str(dirs / "projects"),
        "PIXL_ALLOWLISTS_DIR": str(dirs / "tag_allowlists"),
    }
    result = check("demo", env=env)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: projects/demo.yaml: unknown PS3.15 option")
    assert len(result.stderr.strip().splitlines()) == 1
    unknown = check("nope", env=env)
    assert unknown.returncode == 2
    assert "unknown project 'nope'" in unknown.stderr
