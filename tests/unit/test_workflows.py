"""The GitHub workflows and CODEOWNERS: valid, and doing what README "Changing what leaves" says.

``make lint`` validates the workflows against the GitHub workflow schema too; this test also
checks what they run and when, which a schema cannot.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / ".github" / "workflows"
CHECK_JSONSCHEMA = REPO / ".venv" / "bin" / "check-jsonschema"


def workflow(name: str) -> dict[Any, Any]:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def commands(job: dict[str, Any]) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def test_workflows_validate_against_the_builtin_github_schema() -> None:
    files = sorted(str(p) for p in WORKFLOWS.glob("*.yml"))
    assert len(files) == 2
    done = subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.github-workflows", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_tests_run_on_every_push_and_pull_request() -> None:
    flow = workflow("test.yml")
    triggers = flow[True]  # YAML 1.1 reads the key `on` as true
    assert set(triggers) == {"push", "pull_request"}
    assert triggers["push"] is None and triggers["pull_request"] is None  # no path filter
    (job,) = flow["jobs"].values()
    assert "make test" in commands(job).splitlines()


def test_allowlist_review_runs_on_allowlist_pull_requests_and_writes_the_summary() -> None:
    flow = workflow("allowlist-review.yml")
    assert set(flow[True]) == {"pull_request"}
    assert flow[True]["pull_request"]["paths"] == ["tag_allowlists/**", "projects/**"]
    (job,) = flow["jobs"].values()
    checkout = next(
        s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/checkout")
    )
    assert checkout["with"]["fetch-depth"] == 0
    run = commands(job)
    assert ".venv/bin/pixl allowlist check --all" in run.splitlines()
    diff = next(s for s in job["steps"] if "allowlist diff" in s.get("run", ""))
    assert diff["env"]["BASE_REF"] == "${{ github.base_ref }}"
    assert diff["run"].startswith('.venv/bin/pixl allowlist diff "origin/$BASE_REF" --markdown')
    assert diff["run"].endswith('| tee -a "$GITHUB_STEP_SUMMARY"')
    # bash's pipefail (the default for `shell: bash`) keeps the diff's exit code through tee
    assert flow["defaults"]["run"]["shell"] == "bash"


def test_codeowners_names_the_placeholder_ig_team_for_allowlists_and_projects() -> None:
    lines = (REPO / ".github" / "CODEOWNERS").read_text().splitlines()
    rules = [line.split() for line in lines if line.strip() and not line.startswith("#")]
    assert rules == [
        ["/tag_allowlists/", "@pixl-org/information-governance"],
        ["/projects/", "@pixl-org/information-governance"],
    ]
    assert any("PLACEHOLDER" in line for line in lines)
