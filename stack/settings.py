"""Ports, folders and generated secrets of one local stack (the demo's, or a test's).

The demo uses fixed ports (overridable with ``PIXL_DEMO_PORT_BASE``) under ``.demo/``; tests
pick free ports and a temporary folder, so they never collide with a running demo.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from stack.ports import free_port

REPO_DIR = Path(__file__).resolve().parent.parent
PORT_NAMES = (
    "postgres",
    "vna_http",
    "vna_dicom",
    "raw_http",
    "raw_dicom",
    "anon_http",
    "anon_dicom",
    "dsh_ftps",
    "ehr_http",
    "cogstack_http",
)
SECRET_NAMES = ("PIXL_HASH_KEY", "PIXL_ORTHANC_PASSWORD", "PIXL_DSH_PASSWORD")


@dataclass
class StackSettings:
    """Everything a process of the stack needs to find the others."""

    root: Path
    ports: dict[str, int]
    raw_cache_mb: int = 4000
    passive_ports: tuple[int, int] = (0, 0)
    secrets: dict[str, str] = field(default_factory=dict)
    # The EHR module and its Cogstack stand-in; off for measurements of the imaging path only.
    with_reports: bool = True
    # Extra environment for every process, e.g. short leases and backoffs in system tests.
    extra_env: dict[str, str] = field(default_factory=dict)
    # Extra project slugs rendered as copies of chest-xray.yaml (fresh work items for tests).
    test_projects: tuple[str, ...] = ()

    @classmethod
    def for_demo(cls, root: Path) -> StackSettings:
        base = int(os.environ.get("PIXL_DEMO_PORT_BASE", "17100"))
        ports = {name: base + offset for offset, name in enumerate(PORT_NAMES)}
        settings = cls(root=root, ports=ports, passive_ports=(base + 50, base + 69))
        settings.secrets = settings.load_or_create_secrets()
        return settings

    @classmethod
    def for_tests(cls, root: Path) -> StackSettings:
        ports = {name: free_port() for name in PORT_NAMES}
        passive = free_port()
        settings = cls(root=root, ports=ports, raw_cache_mb=500, passive_ports=(passive, passive))
        settings.secrets = settings.load_or_create_secrets()
        return settings

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def dsh_dir(self) -> Path:
        return self.root / "dsh"

    @property
    def staging_dir(self) -> Path:
        return self.root / "staging"

    @property
    def projects_dir(self) -> Path:
        """The stack's own project files (``PIXL_PROJECTS_DIR`` of every process): the
        committed ones rendered with their destination pointing at this stack's DSH, so the
        stack never sends to a server a committed file names."""
        return self.root / "projects"

    def local_destination(self) -> dict[str, object]:
        """The ``destination: ftps:`` of this stack's DSH (its CA file comes from the env)."""
        return {"host": "127.0.0.1", "port": self.ports["dsh_ftps"], "user": "pixl", "root": "/"}

    @property
    def db_url(self) -> str:
        return f"postgresql://pixl@127.0.0.1:{self.ports['postgres']}/pixl"

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name + '_http']}"

    def load_or_create_secrets(self) -> dict[str, str]:
        """Demo secrets are random per stack and kept in ``secrets.env`` (mode 600).

        This is the only place PIXL invents a key: outside the demo, PIXL_HASH_KEY must be set.
        """
        path = self.root / "secrets.env"
        values: dict[str, str] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                name, _, value = line.partition("=")
                values[name] = value
        changed = False
        for name in SECRET_NAMES:
            if not values.get(name):
                values[name] = secrets.token_hex(24)
                changed = True
        if changed:
            self.root.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        return values

    def environment(self) -> dict[str, str]:
        """Environment for every PIXL process of this stack (Orthanc plugins, EHR, CLI)."""
        site_packages = _venv_site_packages()
        python_path = [str(REPO_DIR), str(REPO_DIR / "cli"), str(REPO_DIR / "ehr"), site_packages]
        return {
            "PYTHONPATH": os.pathsep.join(python_path),
            "PIXL_DB_URL": self.db_url,
            "PIXL_RAW_URL": self.url("raw"),
            "PIXL_ANON_URL": self.url("anon"),
            "PIXL_VNA_URL": self.url("vna"),
            "PIXL_ORTHANC_USER": "pixl",
            "PIXL_PROJECTS_DIR": str(self.projects_dir),
            "PIXL_DSH_CA_FILE": str(self.run_dir / "dsh-cert" / "dsh-ftps-cert.pem"),
            "PIXL_EHR_URL": self.url("ehr"),
            "PIXL_COGSTACK_URL": self.url("cogstack"),
            "PIXL_STAGING_DIR": str(self.staging_dir),
            **self.extra_env,
            **self.secrets,
        }


def _venv_site_packages() -> str:
    venv = Path(os.environ.get("VIRTUAL_ENV", REPO_DIR / ".venv"))
    candidates = sorted((venv / "lib").glob("python3.11/site-packages"))
    return str(candidates[0]) if candidates else ""
