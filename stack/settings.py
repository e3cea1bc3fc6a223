"""Ports, folders and generated secrets of one local stack (the demo's, or a test's).

The demo uses fixed ports (overridable with ``PIXL_DEMO_PORT_BASE``) under ``.demo/``; tests
pick free ports and a temporary folder, so they never collide with a running demo.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from pixl_core.errors import PixlConfigError
from stack.ports import free_port, free_port_range

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
    "dicomweb_http",  # the DICOMweb stand-in (Orthanc), plain HTTP on 127.0.0.1
    "dicomweb_https",  # the TLS proxy in front of it: the research platform's endpoint
    # the secondary archive stand-in (a second Orthanc, AE title PACS): last, so the demo's
    # other ports keep their numbers
    "secondary_http",
    "secondary_dicom",
)
# The secondary archive stand-in's AE title (orthanc-config/secondary.json).
SECONDARY_AET = "PACS"
# Generated per stack into secrets.env (mode 600). PIXL_ORTHANC_PASSWORD is orthanc-anon's
# password for the user ``pixl`` (orthanc-raw sends it when it hands an instance off),
# PIXL_ORTHANC_RAW_PASSWORD orthanc-raw's, PIXL_ORTHANC_OPERATOR_PASSWORD the read-only user
# ``operator`` of both; PIXL_DB_PASSWORD is the Postgres user ``pixl``'s; PIXL_EHR_TOKEN the
# bearer token of the EHR service; PIXL_ORTHANC_{RAW,ANON}_DB_PASSWORD the Postgres roles that
# own orthanc-raw's and orthanc-anon's databases (ORTHANC_DATABASES).
SECRET_NAMES = (
    "PIXL_HASH_KEY",
    "PIXL_ORTHANC_PASSWORD",
    "PIXL_ORTHANC_RAW_PASSWORD",
    "PIXL_ORTHANC_OPERATOR_PASSWORD",
    "PIXL_DSH_PASSWORD",
    "PIXL_DB_PASSWORD",
    "PIXL_EHR_TOKEN",
    "PIXL_ORTHANC_RAW_DB_PASSWORD",
    "PIXL_ORTHANC_ANON_DB_PASSWORD",
    "PIXL_DICOMWEB_PASSWORD",  # the DICOMweb stand-in's user pixl
)
# The Orthanc databases on PIXL's Postgres server (index and, if enabled, storage): each owned by
# a role of the same name whose password is the secret named here (Orthanc expands it).
ORTHANC_DATABASES = {
    "orthanc_raw": "PIXL_ORTHANC_RAW_DB_PASSWORD",
    "orthanc_anon": "PIXL_ORTHANC_ANON_DB_PASSWORD",
}
# Variables that hold a secret: never written to supervisord.conf, only to the 600 env files.
# Besides these, any variable whose name says it holds one (see is_secret_variable).
SECRET_VARIABLES = (*SECRET_NAMES, "PIXL_DB_URL")
_SECRET_WORDS = ("PASSWORD", "TOKEN", "SECRET", "HASH_KEY")


def is_secret_variable(name: str) -> bool:
    """Whether a variable holds a secret: a generated one, the database URL, or any name with
    PASSWORD, TOKEN, SECRET or HASH_KEY in it (e.g. a test's PIXL_DSH_PASSWORD__<SLUG>)."""
    return name in SECRET_VARIABLES or any(word in name for word in _SECRET_WORDS)


# The most replicas of orthanc-raw or orthanc-anon the local stack starts (its demo ports are
# laid out for this many; a deployment runs as many as its hosts allow, see the README).
MAX_REPLICAS = 8


def replicas_from_env(variable: str) -> int:
    """``PIXL_RAW_REPLICAS`` / ``PIXL_ANON_REPLICAS``: how many of that Orthanc to start."""
    text = os.environ.get(variable, "").strip() or "1"
    count = int(text) if text.isdigit() else 0
    if not 1 <= count <= MAX_REPLICAS:
        raise PixlConfigError(
            f"{variable} must be a whole number from 1 to {MAX_REPLICAS} (default 1): set it so"
        )
    return count


# Address-space limit of each Orthanc of the stack (ulimit -v), unless PIXL_ORTHANC_MEMORY_MB.
ORTHANC_MEMORY_MB = 4096
# What can play the VNA: a third Orthanc, or DCMTK's dcmqrscp (an archive that is not Orthanc).
VNA_KINDS = ("orthanc", "dcmqrscp")
# orthanc-raw's AE title (orthanc-config/raw.json): the C-MOVE destination every archive knows.
RAW_AET = "PIXLRAW"
VNA_AET = "VNA"
# An archive's name is also its port's name in the Orthanc config templates (${NAME_DICOM_PORT}).
_ARCHIVE_NAME = re.compile(r"[a-z][a-z0-9]{0,30}")
_AE_TITLE = re.compile(r"[A-Z0-9_]{1,16}")
_TAKEN_NAMES = (
    "postgres",
    "vna",
    "secondary",
    "orthanc-raw",
    "orthanc-anon",
    "dsh",
    "ehr",
    "cogstack",
)


class StackSettingsError(ValueError):
    """A stack setting that cannot work; the message names it and what it may be."""


def vna_kind_from_env() -> str:
    """``PIXL_STACK_VNA``: which archive the demo stack runs as its VNA (default orthanc)."""
    kind = os.environ.get("PIXL_STACK_VNA", "").strip() or "orthanc"
    if kind not in VNA_KINDS:
        raise StackSettingsError(
            f"PIXL_STACK_VNA must be one of {', '.join(VNA_KINDS)}: set it to one or unset it"
        )
    return kind


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
    # Extra project slugs rendered as copies of chest-xray-research.yaml: images to DICOMweb.
    test_dicomweb_projects: tuple[str, ...] = ()
    # Address-space limit of each Orthanc process (MB); see stack.launch.
    orthanc_memory_mb: int = field(
        default_factory=lambda: int(os.environ.get("PIXL_ORTHANC_MEMORY_MB", ORTHANC_MEMORY_MB))
    )
    # What plays the VNA (AE title VNA, port ``vna_dicom``): "orthanc" or "dcmqrscp"; the demo
    # reads it from PIXL_STACK_VNA.
    vna_kind: str = "orthanc"
    # What plays the secondary archive (AE title PACS, port ``secondary_dicom``): "orthanc"
    # (a second Orthanc, loaded over REST) or "dcmqrscp" (loaded with storescu,
    # ``Stack.archive("secondary")``).
    secondary_kind: str = "orthanc"
    # More archives, each a dcmqrscp of its own: program name -> AE title (see add_archive).
    archives: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, kind in (("vna_kind", self.vna_kind), ("secondary_kind", self.secondary_kind)):
            if kind not in VNA_KINDS:
                raise StackSettingsError(
                    f"{name} must be one of {', '.join(VNA_KINDS)}, not {kind!r}"
                )

    # How many orthanc-raw and orthanc-anon replicas run (PIXL_RAW_REPLICAS, PIXL_ANON_REPLICAS).
    raw_replicas: int = field(default_factory=lambda: replicas_from_env("PIXL_RAW_REPLICAS"))
    anon_replicas: int = field(default_factory=lambda: replicas_from_env("PIXL_ANON_REPLICAS"))

    @classmethod
    def for_demo(cls, root: Path) -> StackSettings:
        base = int(os.environ.get("PIXL_DEMO_PORT_BASE", "17100"))
        ports = {name: base + offset for offset, name in enumerate(PORT_NAMES)}
        settings = cls(root=root, ports=ports, passive_ports=(base + 50, base + 69))
        # Replicas after the first: raw at base+20.., anon at base+36.. (HTTP, then DICOM).
        for role, first in (("raw", base + 20), ("anon", base + 36)):
            for number, replica in enumerate(settings.replicas(role)[1:]):
                settings.ports[f"{replica}_http"] = first + 2 * number
                settings.ports[f"{replica}_dicom"] = first + 2 * number + 1
        settings.vna_kind = vna_kind_from_env()
        settings.secrets = settings.load_or_create_secrets()
        return settings

    @classmethod
    def for_tests(cls, root: Path, **fields: object) -> StackSettings:
        ports = {name: free_port() for name in PORT_NAMES}
        fields.setdefault("raw_cache_mb", 500)
        settings = cls(
            root=root,
            ports=ports,
            # A few, as in the demo: each anon replica's exporter threads upload at once, and
            # with one passive port a second upload's PASV is refused until the first ends.
            passive_ports=free_port_range(8),
            **fields,  # type: ignore[arg-type]
        )
        for role in ("raw", "anon"):
            for replica in settings.replicas(role)[1:]:
                settings.ports[f"{replica}_http"] = free_port()
                settings.ports[f"{replica}_dicom"] = free_port()
        settings.secrets = settings.load_or_create_secrets()
        return settings

    def replicas(self, role: str) -> list[str]:
        """The names of ``role``'s replicas ("raw" or "anon"): the first keeps the role's own
        name (program ``orthanc-raw``, AET ``PIXLRAW``), the others are ``raw2``, ``raw3``..."""
        count = self.raw_replicas if role == "raw" else self.anon_replicas
        return [role] + [f"{role}{number}" for number in range(2, count + 1)]

    def add_archive(self, name: str, aet: str) -> None:
        """Run one more archive, a dcmqrscp with AE title ``aet``: supervisord program, folder
        (``data/<name>/``) and log (``logs/<name>.log``) ``name``, DICOM port
        ``ports["<name>_dicom"]`` (a free port unless one is set already: put
        ``<name>_dicom`` in PORT_NAMES for a fixed demo port). It knows orthanc-raw as its
        C-MOVE destination and as a caller, like the VNA. Call before the stack starts.

        For orthanc-raw to query it and accept what it moves, orthanc-raw's config must list it
        as a modality: its AE title, 127.0.0.1 and ``${<NAME>_DICOM_PORT}`` (every port of
        ``ports`` is filled into the Orthanc config templates by that name)."""
        if not _ARCHIVE_NAME.fullmatch(name) or name in _TAKEN_NAMES:
            raise StackSettingsError(
                f"archive name {name!r}: use lowercase letters and digits, not one of "
                f"{', '.join(_TAKEN_NAMES)}"
            )
        if not _AE_TITLE.fullmatch(aet) or aet in (RAW_AET, VNA_AET):
            raise StackSettingsError(
                f"archive AE title {aet!r}: use 1-16 capital letters, digits or '_', "
                f"not {RAW_AET} or {VNA_AET}"
            )
        self.archives[name] = aet
        self.ports.setdefault(f"{name}_dicom", free_port())

    def dcmqrscp_archives(self) -> dict[str, str]:
        """Every archive of the stack that is a dcmqrscp: program name -> AE title (the VNA
        first, when it is one)."""
        own = {"vna": VNA_AET} if self.vna_kind == "dcmqrscp" else {}
        if self.secondary_kind == "dcmqrscp":
            own["secondary"] = SECONDARY_AET
        return {**own, **self.archives}

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
    def secrets_dir(self) -> Path:
        """One env file per program (mode 600, owned by the program's user): its secrets."""
        return self.run_dir / "secrets"

    @property
    def cli_env_file(self) -> Path:
        """Every variable the ``pixl`` CLI needs for this stack (mode 600): ``.demo/env``."""
        return self.root / "env"

    @property
    def cogstack_cert_dir(self) -> Path:
        """The Cogstack stand-in's TLS certificate (its own trust anchor) and key."""
        return self.run_dir / "cogstack-cert"

    @property
    def cogstack_ca_file(self) -> Path:
        return self.cogstack_cert_dir / "cogstack-cert.pem"

    @property
    def projects_dir(self) -> Path:
        """The stack's own project files (``PIXL_PROJECTS_DIR`` of every process): the
        committed ones rendered with their destination pointing at this stack's DSH, so the
        stack never sends to a server a committed file names."""
        return self.root / "projects"

    @property
    def dicomweb_cert_dir(self) -> Path:
        """The DICOMweb endpoint's TLS certificate (its own trust anchor) and key."""
        return self.run_dir / "dicomweb-cert"

    @property
    def dicomweb_ca_file(self) -> Path:
        return self.dicomweb_cert_dir / "dicomweb-cert.pem"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb service root PIXL sends to: HTTPS, through the TLS proxy."""
        return f"https://127.0.0.1:{self.ports['dicomweb_https']}/dicom-web"

    def local_dicomweb(self) -> dict[str, object]:
        """The ``destination: dicomweb:`` of this stack's research platform (its password and
        CA file come from the environment)."""
        return {"url": self.dicomweb_url, "auth": "basic", "user": "pixl", "batch_size": 20}

    def local_destination(self) -> dict[str, object]:
        """The ``destination: ftps:`` of this stack's DSH (its CA file comes from the env)."""
        return {"host": "127.0.0.1", "port": self.ports["dsh_ftps"], "user": "pixl", "root": "/"}

    @property
    def db_url(self) -> str:
        """libpq URL of the stack's database, with the password (a secret: never print it)."""
        password = self.secrets.get("PIXL_DB_PASSWORD", "")
        user = f"pixl:{password}" if password else "pixl"
        return f"postgresql://{user}@127.0.0.1:{self.ports['postgres']}/pixl"

    def url(self, name: str) -> str:
        """Base URL of a service of the stack; the Cogstack stand-in speaks HTTPS only."""
        scheme = "https" if name == "cogstack" else "http"
        return f"{scheme}://127.0.0.1:{self.ports[name + '_http']}"

    def load_or_create_secrets(self) -> dict[str, str]:
        """Demo secrets are random per stack and kept in ``secrets.env`` (mode 600).

        This is the only place PIXL invents a key: outside the demo, PIXL_HASH_KEY must be set.
        """
        from stack.launch import read_env_file, write_env_file

        path = self.root / "secrets.env"
        values = read_env_file(path) if path.exists() else {}
        changed = False
        for name in SECRET_NAMES:
            if not values.get(name):
                values[name] = secrets.token_hex(24)
                changed = True
        if changed:
            self.root.mkdir(parents=True, exist_ok=True)
            write_env_file(path, values)
        return values

    def environment(self) -> dict[str, str]:
        """Environment for every PIXL process of this stack (Orthanc plugins, EHR, CLI):
        :meth:`public_environment` and :meth:`secret_environment` together."""
        return {**self.public_environment(), **self.secret_environment()}

    def secret_environment(self) -> dict[str, str]:
        """The variables that hold a secret: the generated ones and the database URL (it
        carries the password). Passed to processes through their env files only."""
        overrides = {k: v for k, v in self.extra_env.items() if is_secret_variable(k)}
        return {**self.secrets, "PIXL_DB_URL": self.db_url, **overrides}

    def cli_environment(self) -> dict[str, str]:
        """What ``.demo/env`` holds: every variable the ``pixl`` CLI (or a shell exploring the
        stack) needs. ``PYTHONPATH`` is left out: ``.venv/bin/pixl`` finds its packages."""
        return {k: v for k, v in self.environment().items() if k != "PYTHONPATH"}

    def public_environment(self) -> dict[str, str]:
        """Environment without any secret: what ``supervisord.conf`` may hold."""
        site_packages = _venv_site_packages()
        python_path = [str(REPO_DIR), str(REPO_DIR / "cli"), str(REPO_DIR / "ehr"), site_packages]
        environment = {
            "PYTHONPATH": os.pathsep.join(python_path),
            "PIXL_RAW_URL": self.url("raw"),
            "PIXL_ANON_URL": self.url("anon"),
            # orthanc-raw hands each study to the next of these (every anon replica).
            "PIXL_ANON_URLS": ",".join(self.url(name) for name in self.replicas("anon")),
            "PIXL_VNA_URL": self.url("vna"),
            # orthanc-raw's secondary archive (pixl_imaging.archives): the stand-in; asked at
            # 2 studies/s unless a test or `pixl rate --archive secondary` says otherwise
            "PIXL_SECONDARY_AET": SECONDARY_AET,
            "PIXL_SECONDARY_HOST": "127.0.0.1",
            "PIXL_SECONDARY_PORT": str(self.ports["secondary_dicom"]),
            "PIXL_SECONDARY_STUDIES_PER_SECOND": "2",
            "PIXL_SECONDARY_URL": self.url("secondary"),
            "PIXL_ORTHANC_USER": "pixl",
            "PIXL_PROJECTS_DIR": str(self.projects_dir),
            "PIXL_DSH_CA_FILE": str(self.run_dir / "dsh-cert" / "dsh-ftps-cert.pem"),
            "PIXL_EHR_URL": self.url("ehr"),
            "PIXL_COGSTACK_URL": self.url("cogstack"),
            "PIXL_COGSTACK_CA_FILE": str(self.cogstack_ca_file),
            "PIXL_DICOMWEB_CA_FILE": str(self.dicomweb_ca_file),
            "PIXL_STAGING_DIR": str(self.staging_dir),
            **self.extra_env,
        }
        return {k: v for k, v in environment.items() if not is_secret_variable(k)}


def _venv_site_packages() -> str:
    venv = Path(os.environ.get("VIRTUAL_ENV", REPO_DIR / ".venv"))
    candidates = sorted((venv / "lib").glob("python3.11/site-packages"))
    return str(candidates[0]) if candidates else ""
