"""``pixl`` starts without the heavy libraries: the rule in ``pixl_cli.main``'s docstring.

Each case runs in a fresh interpreter (this one has imported everything already) and lists
which of ``HEAVY`` are in ``sys.modules`` afterwards. The list is what measurement found
(``python -X importtime``; issue 12): pydicom and numpy ~0.25 s, pandas and pyarrow ~0.25 s,
OpenCV, tesserocr and the JPEG codecs for the pixel check, psycopg2 and requests ~0.04 s each,
the report checker's patterns and the EHR service (FastAPI, uvicorn), and pydantic (~50 ms,
which typer 0.29 would import to convert every command's arguments: ``pixl_cli/plain_values.py``).
A command module that imports one of them at module level makes every ``pixl`` command pay for
it; this test names the culprit's import chain so it is quick to move into the function that
uses it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stack.synthetic.dicom_builder import base_dataset, to_bytes
from stack.synthetic.phi_corpus import TEST_HASH_KEY

HEAVY = (
    "pandas",
    "pyarrow",
    "pydicom",
    "numpy",
    "cv2",
    "PIL",
    "tesserocr",
    "pylibjpeg",
    "psycopg2",
    "requests",
    "fastapi",
    "uvicorn",
    "pixl_core.dicom",
    "pixl_core.db",
    "pixl_core.text",
    "pixl_ehr",
    "pydantic",
)
REPO = Path(__file__).resolve().parents[2]
# What `pixl status` needs beyond the above: the database driver and PIXL's queries.
STATUS_NEEDS = ("psycopg2", "pixl_core.db")

PROBE = """
import json, sys
argv = json.loads(sys.argv[1])
from pixl_cli.main import app
if argv:
    try:
        app(argv, prog_name="pixl")
    except SystemExit:
        pass
heavy = json.loads(sys.argv[2])
print(json.dumps(sorted(h for h in heavy if h in sys.modules)))
"""


def loaded_after(argv: list[str], env: dict[str, str] | None = None) -> list[str]:
    """The heavy modules a fresh interpreter holds after importing the CLI and running argv."""
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def import_chain(module: str) -> str:
    """Who imported ``module``: its ancestors in ``-X importtime`` (which prints a module after
    everything it imported, indented two spaces a level), outermost last."""
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import pixl_cli.main"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    names = [line.split("|")[-1] for line in completed.stderr.splitlines() if "|" in line]
    for n, name in enumerate(names):
        if name.strip() == module:
            chain, depth = [module], len(name) - len(name.lstrip())
            for later in names[n + 1 :]:
                indent = len(later) - len(later.lstrip())
                if indent < depth:
                    chain.append(later.strip())
                    depth = indent
            return " <- ".join(chain)
    return "(not found)"


def test_importing_the_cli_loads_no_heavy_library():
    loaded = loaded_after([])
    assert loaded == [], f"imported at start: {loaded}\n{import_chain(loaded[0]) if loaded else ''}"


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["status", "--help"],
        ["anonymise", "--help"],
        ["allowlist", "--help"],
        ["reports", "--help"],
        ["pixels", "preview", "--help"],
    ],
)
def test_help_loads_no_heavy_library(argv):
    assert loaded_after(argv) == []


def test_status_loads_only_the_database_driver():
    """Up to the failed connection (nothing listens on port 1): exit 2 with one line, and of
    the heavy libraries only what talking to Postgres needs."""
    loaded = loaded_after(["status"], {"PIXL_DB_URL": "postgresql://nobody@127.0.0.1:1/none"})
    assert set(loaded) <= set(STATUS_NEEDS), loaded
    assert "psycopg2" in loaded  # it did get as far as connecting


def test_anonymise_without_the_pixel_check_loads_no_opencv(tmp_path: Path) -> None:
    """A project with ``pixel_text: off`` never looks at pixels: the burned-in text detector
    (OpenCV ~20 ms, tesseract) is imported by the first film checked, so here never; and the
    arguments are converted without pydantic. The engine itself did run on a film."""
    projects = tmp_path / "projects"
    projects.mkdir()
    shipped = (REPO / "projects" / "chest-xray.yaml").read_text()
    assert "\npixel_text: mask\n" in shipped
    (projects / "chest-xray.yaml").write_text(
        shipped.replace(
            "\npixel_text: mask\n",
            '\npixel_text: "off"\npixel_text_justification: a test of what is imported\n',
        )
    )
    film = tmp_path / "film.dcm"
    uid = "1.2.826.0.1.3680043.10.979.77."
    film.write_bytes(
        to_bytes(base_dataset(sop_uid=f"{uid}1.1.1", study_uid=f"{uid}1", series_uid=f"{uid}1.1"))
    )
    out = tmp_path / "out"
    argv = ["anonymise", "-p", "chest-xray", "-o", str(out), "-j", "1", str(film)]
    loaded = loaded_after(
        argv, {"PIXL_PROJECTS_DIR": str(projects), "PIXL_HASH_KEY": TEST_HASH_KEY}
    )
    assert len(list(out.rglob("*.dcm"))) == 1
    assert "pixl_core.dicom" in loaded
    assert not {"cv2", "tesserocr", "pydantic"} & set(loaded), loaded


@pytest.mark.parametrize(("given", "expected"), [(None, "1"), ("4", "4")])
def test_openblas_threads_default_to_one_before_numpy_loads(given: str | None, expected: str):
    """numpy's OpenBLAS spins a thread per core at import (~10-40 ms CPU per process here) and
    no command uses BLAS; an operator's own setting wins."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if given is not None:
        env["OPENBLAS_NUM_THREADS"] = given
    probe = "import os, pixl_cli.main; print(os.environ['OPENBLAS_NUM_THREADS'])"
    completed = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True
    )
    assert completed.stdout.strip() == expected
