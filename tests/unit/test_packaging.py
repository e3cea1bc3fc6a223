"""The product wheel holds the product only: no stand-in, synthetic data, test or benchmark.

A hospital installs PIXL's wheel (the Dockerfiles do); what is in it runs next to patient
data. Stand-ins (a fake DSH, a fake Cogstack) and the local stack's tools (an FTP server, a
process supervisor) must never ship with it, nor be pulled in as its dependencies.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRODUCT_PACKAGES = {"pixl_core", "pixl_cli", "pixl_ehr", "pixl_imaging"}
STACK_ONLY_DEPENDENCIES = {"pyftpdlib", "pyopenssl", "supervisor"}  # numpy: the pixel check


def _build_wheel(out: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(REPO), "-w", str(out)],
        check=True,
        capture_output=True,
        cwd=out,
    )
    (wheel,) = out.glob("pixl-*.whl")
    return wheel


def test_wheel_holds_only_product_packages_and_runtime_dependencies(tmp_path: Path):
    with zipfile.ZipFile(_build_wheel(tmp_path)) as wheel:
        names = wheel.namelist()
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        requires = [
            line.split(":", 1)[1].strip()
            for line in wheel.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist:")
        ]

    top_level = {name.split("/", 1)[0] for name in names if ".dist-info/" not in name}
    assert top_level == PRODUCT_PACKAGES
    for word in ("standin", "stand_in", "synthetic", "phi_corpus", "test_", "conftest", "bench"):
        assert not [n for n in names if word in n.lower()], word
    assert "pixl_imaging/fetch_worker.py" in names  # the services that run inside Orthanc
    assert "pixl_core/db/migrations/0001_initial.sql" in names
    assert "pixl_core/config/data/ps315_confidentiality_profile.json" in names

    runtime = {
        r.split(";")[0].split("<")[0].split(">")[0].split("=")[0].strip().lower()
        for r in requires
        if "extra ==" not in r
    }
    assert runtime and not runtime & STACK_ONLY_DEPENDENCIES
