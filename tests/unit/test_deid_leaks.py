"""Nothing planted in the PHI corpus comes out of the de-identification engine.

The corpus (stack/synthetic/phi_corpus.py) plants a unique token wherever identifiers hide in a chest
X-ray header, and uses original UIDs from a root used nowhere else. Both paths are checked:
the real ``pixl anonymise`` command in a subprocess and ``deidentify_bytes`` in process. Every
output byte and every output path is scanned for every planted value (as written, upper and
lower case, DICOM-padded, UTF-16), for each component of a person name, and for every original
UID. The scan is proved able to fail by running it on the inputs first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pixl_core.config.projects import REPO_ROOT, load_project_file
from pixl_core.dicom.deid import Refused, deidentify_bytes
from pixl_core.hashing import ProjectHasher
from stack.synthetic.phi_corpus import TEST_HASH_KEY, Corpus, build_corpus, readable_bytes

PIXL = Path(sys.executable).with_name("pixl")
# Instances the chest-xray project must refuse, and why; everything else must come out.
EXPECTED_REFUSALS = {"dx_private_text": "invalid_value"}


def variants(value: str) -> set[bytes]:
    """The byte strings a leaked ``value`` could appear as."""
    bases = {value}
    if "^" in value:  # a person name: each component on its own
        bases.update(part for part in value.split("^") if part)
    texts = set()
    for base in bases:
        texts.update({base, base.upper(), base.lower(), base + " ", base + "\0"})
    found = {text.encode() for text in texts}
    found.update(text.encode("utf-16-le") for text in texts)
    return found


def scan(blobs: dict[str, bytes], corpus: Corpus) -> list[str]:
    """``label: where`` for each needle found in a blob (a file's bytes or its path)."""
    leaks = []
    for label, value in corpus.needles().items():
        patterns = variants(value)
        for where, blob in blobs.items():
            if any(pattern in blob for pattern in patterns):
                leaks.append(f"{label}: {where}")
    return leaks


def tree_blobs(root: Path) -> dict[str, bytes]:
    """Every file's bytes and every relative path (folders included) under ``root``."""
    blobs = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        blobs[f"path {relative}"] = relative.encode()
        if path.is_file():
            blobs[f"bytes {relative}"] = readable_bytes(path.read_bytes())
    return blobs


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXL_")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return build_corpus(tmp_path_factory.mktemp("phi-corpus"))


@pytest.fixture(scope="module")
def cli_run(
    corpus: Corpus, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    output = tmp_path_factory.mktemp("cli-out") / "out"
    result = subprocess.run(
        [str(PIXL), "anonymise", "--project", "chest-xray", "--output", str(output)]
        + [str(path) for path in corpus.files.values()],
        capture_output=True,
        text=True,
        env=clean_env(PIXL_HASH_KEY=TEST_HASH_KEY),
        cwd=tmp_path_factory.mktemp("cwd"),
        timeout=60,
        check=False,
    )
    return output, result


@pytest.fixture(scope="module")
def engine_outputs(corpus: Corpus) -> dict[str, bytes | str]:
    """Per instance: the de-identified bytes, or the refusal reason."""
    saved = {
        k: os.environ.pop(k)
        for k in ("PIXL_PROJECTS_DIR", "PIXL_ALLOWLISTS_DIR")
        if k in os.environ
    }
    try:
        project = load_project_file(REPO_ROOT / "projects" / "chest-xray.yaml")
    finally:
        os.environ.update(saved)
    hasher = ProjectHasher.for_project("chest-xray", TEST_HASH_KEY.encode())
    outputs: dict[str, bytes | str] = {}
    for name, path in corpus.files.items():
        try:
            outputs[name] = deidentify_bytes(path.read_bytes(), project, hasher).data
        except Refused as refusal:
            outputs[name] = refusal.reason
    return outputs


def test_corpus_plants_every_value_in_the_inputs(corpus: Corpus) -> None:
    """The scan can fail: every planted value and UID is found in the inputs."""
    blobs = tree_blobs(corpus.root / "input")
    found = {leak.split(": ")[0] for leak in scan(blobs, corpus)}
    missing = sorted(set(corpus.needles()) - found)
    assert not missing, f"planted but not in any input: {missing}"
    assert len(corpus.files) == 6
    assert len(corpus.planted) > 300 and len(corpus.uids) > 40


def test_planted_values_are_unique_and_recognisable(corpus: Corpus) -> None:
    values = corpus.planted_values + corpus.original_uids
    assert len(values) == len(set(values))
    tokens = [v for v in corpus.planted_values if not v.isdigit()]
    assert all(v.startswith("PHIX") or "^PHIX" in v for v in tokens)


def test_scan_reports_a_planted_value(corpus: Corpus) -> None:
    """A single leaked name component, lower-cased, inside other bytes is reported."""
    family = corpus.planted["A.PatientName.family"]
    blob = b"\x00" * 10 + family.lower().encode() + b"\x00" * 10
    assert scan({"x": blob}, corpus) == [
        "planted A.PatientName.family: x",
        "planted A.PatientName: x",
    ]


def test_cli_writes_the_expected_outputs(
    corpus: Corpus, cli_run: tuple[Path, subprocess.CompletedProcess[str]]
) -> None:
    output, result = cli_run
    assert result.returncode == 0, result.stderr
    files = sorted(p for p in output.rglob("*") if p.is_file())
    expected = len(corpus.files) - len(EXPECTED_REFUSALS)
    assert len(files) == expected
    assert all(p.stat().st_size > 1000 for p in files)
    reasons = ", ".join(f"{r} 1" for r in sorted(EXPECTED_REFUSALS.values()))
    assert (
        f"de-identified {expected}, refused {len(EXPECTED_REFUSALS)} ({reasons})" in result.stdout
    )


def test_cli_output_leaks_nothing(
    corpus: Corpus, cli_run: tuple[Path, subprocess.CompletedProcess[str]]
) -> None:
    output, result = cli_run
    blobs = tree_blobs(output)
    assert any(k.startswith("bytes ") for k in blobs), "no output files to scan"
    blobs["stdout"] = result.stdout.encode()
    blobs["stderr"] = result.stderr.encode()
    blobs["output folder"] = str(output).encode()
    assert scan(blobs, corpus) == []


def test_engine_output_leaks_nothing(
    corpus: Corpus, engine_outputs: dict[str, bytes | str]
) -> None:
    refused = {k: v for k, v in engine_outputs.items() if isinstance(v, str)}
    assert refused == EXPECTED_REFUSALS
    blobs = {
        name: readable_bytes(data)
        for name, data in engine_outputs.items()
        if isinstance(data, bytes)
    }
    assert len(blobs) == len(corpus.files) - len(EXPECTED_REFUSALS)
    assert scan(blobs, corpus) == []


def test_cli_and_engine_give_the_same_bytes(
    cli_run: tuple[Path, subprocess.CompletedProcess[str]],
    engine_outputs: dict[str, bytes | str],
) -> None:
    output, _ = cli_run
    cli_files = sorted(p.read_bytes() for p in output.rglob("*.dcm"))
    engine_files = sorted(v for v in engine_outputs.values() if isinstance(v, bytes))
    assert cli_files == engine_files
