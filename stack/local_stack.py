"""Start and stop the local stack under supervisord, and wait until every part answers.

One supervisord per stack root owns every process (Postgres, the VNA, orthanc-raw,
orthanc-anon, the DSH's FTPS server, and the EHR module with its Cogstack stand-in when present)
and restarts any that crashes. ``down`` asks that supervisord to stop exactly what it started.
Logs go to ``<root>/logs/``. The VNA is a third Orthanc, or DCMTK's ``dcmqrscp`` when
``settings.vna_kind`` is ``dcmqrscp`` (``PIXL_STACK_VNA`` for the demo); more dcmqrscp archives
run beside it when ``settings.add_archive`` asked for them (``stack.standins.dcmqrscp_archive``),
as Debian's ``dcmtk`` user when started as root.

What the stack writes is private to the user running it (issue 8, finding 7):

- no secret is in ``supervisord.conf``: each program gets its secrets from
  ``run/secrets/<program>.env`` (mode 600) through :mod:`stack.launch`, only the ones it
  needs, before the launcher drops to the program's user; ``supervisord.conf``,
  ``secrets.env`` and the CLI's ``env`` are mode 600, the data, log, staging and DSH folders
  700, and supervisord's umask is 077;
- who runs as whom, when the stack is started as root: Postgres as Debian's ``postgres`` user
  and the three Orthancs as Debian's ``orthanc`` user (the packages create both, and neither
  server needs root); supervisord stays root because it must start those as their users; the
  EHR module, the DSH and Cogstack stand-ins run as the invoking user, because no Debian
  package provides a user for them and the EHR module shares the staging folder with the
  operator's ``pixl`` CLI. They all listen on 127.0.0.1 only. Started as any other user,
  everything runs as that user;
- Postgres asks for a password (scram-sha-256), generated into ``secrets.env``
  (``PIXL_DB_PASSWORD``);
- each Orthanc runs with an address-space limit (``PIXL_ORTHANC_MEMORY_MB``).
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import pwd
import re
import shutil
import socket
import string
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import psycopg2
import requests
import yaml

from stack.launch import write_env_file
from stack.settings import ORTHANC_DATABASES, RAW_AET, REPO_DIR, StackSettings
from stack.standins import dcmqrscp_archive
from stack.standins.dcmqrscp_archive import LOADER_AET, DcmqrscpArchive, Peer

ORTHANC_BINARY = shutil.which("Orthanc") or "/usr/bin/Orthanc"
# The two archive stand-ins (the VNA; a second Orthanc as the secondary archive, AE title
# PACS) keep their own names as programs; the PIXL Orthancs are orthanc-<name>.
ARCHIVES = ("vna", "secondary")
ORTHANCS = ("vna", "secondary", "raw", "anon", "dicomweb")
# Debian's orthanc package creates this system user; the Orthancs run as it when we are root.
ORTHANC_USER = "orthanc"
# The secrets each program gets (a name also matches its per-project forms, NAME__SLUG).
# A program not listed here gets every secret of the stack (still through its env file).
PROGRAM_SECRETS: dict[str, tuple[str, ...]] = {
    "postgres": (),
    "vna": (),
    "secondary": (),
    "orthanc-raw": (
        "PIXL_HASH_KEY",
        "PIXL_ORTHANC_RAW_DB_PASSWORD",  # its role on the Orthanc database (expanded by Orthanc)
        "PIXL_DB_URL",
        "PIXL_ORTHANC_RAW_PASSWORD",  # its own user pixl (expanded by Orthanc in its config)
        "PIXL_ORTHANC_PASSWORD",  # orthanc-anon's user pixl, to hand instances off
        "PIXL_ORTHANC_OPERATOR_PASSWORD",
    ),
    "orthanc-anon": (
        "PIXL_HASH_KEY",
        "PIXL_ORTHANC_ANON_DB_PASSWORD",
        "PIXL_DB_URL",
        "PIXL_ORTHANC_PASSWORD",
        "PIXL_ORTHANC_OPERATOR_PASSWORD",
        "PIXL_DSH_PASSWORD",
        "PIXL_DICOMWEB_PASSWORD",
    ),
    "orthanc-dicomweb": ("PIXL_DICOMWEB_PASSWORD",),
    "dicomweb-tls": (),
    "dsh": ("PIXL_DSH_PASSWORD",),
    "ehr": ("PIXL_HASH_KEY", "PIXL_DB_URL", "PIXL_DSH_PASSWORD", "PIXL_EHR_TOKEN"),
    "cogstack": (),
}


class StackError(RuntimeError):
    """A part of the stack did not come up; the message names it and its log."""


def render_orthanc_config(settings: StackSettings, name: str, replica: str | None = None) -> Path:
    """Fill an ``orthanc-config/<name>.json`` template; Orthanc expands the secrets itself.

    ``replica`` (``raw2``, ``anon3``...) renders the role's template for that replica: its own
    name, ports and AE title, the role's database and storage folder (replicas share both). The
    archive stand-ins' configs (VNA, secondary) list every orthanc-raw replica's AE title as a
    C-MOVE destination.
    """
    replica = replica or name
    template = string.Template((REPO_DIR / "orthanc-config" / f"{name}.json").read_text())
    ports = {f"{key.upper()}_PORT": str(port) for key, port in settings.ports.items()}
    if replica != name:  # the template names the role's ports (RAW_HTTP_PORT): its own there
        ports[f"{name.upper()}_HTTP_PORT"] = str(settings.ports[f"{replica}_http"])
        ports[f"{name.upper()}_DICOM_PORT"] = str(settings.ports[f"{replica}_dicom"])
    values = {
        "DATA_DIR": str(settings.data_dir),
        "REPO_DIR": str(REPO_DIR),
        "RAW_CACHE_MB": str(settings.raw_cache_mb),
        "POSTGRES_HOST": "127.0.0.1",
        **ports,
    }
    config = json.loads(template.safe_substitute(values))
    if replica != name:
        config["Name"] = f"{config['Name']}-{replica.removeprefix(name)}"
        config["DicomAet"] = replica_aet(config["DicomAet"], replica, name)
    if name in ARCHIVES and "pixl-raw" in config.get("DicomModalities", {}):
        first = config["DicomModalities"]["pixl-raw"]
        for other in settings.replicas("raw")[1:]:
            config["DicomModalities"][f"pixl-{other}"] = {
                **first,
                "AET": replica_aet(first["AET"], other, "raw"),
                "Port": settings.ports[f"{other}_dicom"],
            }
    target = settings.run_dir / f"orthanc-{replica}.json"
    user = orthanc_user()
    _write_private(target, json.dumps(config, indent=2), owner=user)
    storage = settings.data_dir / _storage_name(name)
    storage.mkdir(parents=True, exist_ok=True)
    _own(storage, user, 0o700)
    return target


def replica_aet(aet: str, replica: str, role: str) -> str:
    """A replica's AE title: the role's with the replica's number (PIXLRAW, PIXLRAW2...)."""
    return aet + replica.removeprefix(role)


@functools.cache
def orthanc_user() -> str | None:
    """The user the Orthancs run as: Debian's ``orthanc`` when we are root, else ourselves.

    A clone in a private folder (``d=$(mktemp -d); git clone . $d`` as root: mode 700) is out of
    that user's reach, and Orthanc's Python cannot import from a folder it cannot list. Rather
    than change the permissions of the user's folders, the Orthancs then run as the invoking
    user, and one line says so and how to get the separate user back."""
    if not (_is_root() and _user_exists(ORTHANC_USER)):
        return None
    blocked = _unreadable_for(ORTHANC_USER)
    if blocked is not None:
        print(
            f"stack: the {ORTHANC_USER} user cannot read {blocked}, so the Orthancs run as root; "
            f"make every folder above it readable and traversable by others (chmod o+rx) to run "
            f"them as {ORTHANC_USER}",
            file=sys.stderr,
        )
        return None
    return ORTHANC_USER


def _unreadable_for(user: str) -> Path | None:
    """The first of the paths Orthanc's Python needs (the repository root it imports from, the
    plugin, the packages) that ``user`` cannot read, or None."""
    from stack.settings import _venv_site_packages

    needed = [REPO_DIR, REPO_DIR / "orthanc_plugins" / "raw.py", Path(_venv_site_packages())]
    for path in needed:
        flags = ["-r", str(path)] + (["-a", "-x", str(path)] if path.is_dir() else [])
        check = subprocess.run(["runuser", "-u", user, "--", "test", *flags], check=False)
        if check.returncode != 0:
            return path
    return None


def _is_root() -> bool:
    return os.geteuid() == 0


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _write_private(path: Path, text: str, *, owner: str | None = None) -> None:
    """Write ``text`` to ``path`` with mode 600 from the start (given to ``owner``, if any)."""
    partial = path.with_name(f".{path.name}.part")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    partial.chmod(0o600)
    if owner is not None:
        entry = pwd.getpwnam(owner)
        os.chown(partial, entry.pw_uid, entry.pw_gid)
    partial.replace(path)


def _own(folder: Path, owner: str | None, mode: int) -> None:
    """Give ``folder`` (and, when its owner changes, everything in it) to ``owner``; set its
    mode. A demo folder from before the Orthancs ran as their own user is handed over once."""
    if owner is not None:
        entry = pwd.getpwnam(owner)
        if folder.stat().st_uid != entry.pw_uid:
            for path in [folder, *folder.rglob("*")]:
                os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    folder.chmod(mode)


@functools.cache
def archive_user(run_dir: Path) -> str | None:
    """The user the dcmqrscp archives run as: Debian's ``dcmtk`` when we are root and it can
    reach the stack's run folder (its config is there), else the invoking user, with one line
    saying why (a stack in a private folder, as ``orthanc_user`` does for the Orthancs)."""
    user = dcmqrscp_archive.DCMTK_USER
    if not (_is_root() and _user_exists(user)):
        return None
    reach = subprocess.run(["runuser", "-u", user, "--", "test", "-x", str(run_dir)], check=False)
    if reach.returncode != 0:
        print(
            f"stack: the {user} user cannot reach {run_dir}, so the dcmqrscp archives run as "
            f"root; make every folder above it traversable by others (chmod o+x) to run them "
            f"as {user}",
            file=sys.stderr,
        )
        return None
    return user


def archive_spec(settings: StackSettings, name: str) -> DcmqrscpArchive:
    """The dcmqrscp archive ``name`` of the stack (the VNA, or one added with
    ``StackSettings.add_archive``): orthanc-raw is its C-MOVE destination, and orthanc-raw
    and the loader (``storescu``) may associate with it (every orthanc-raw replica)."""
    raw_aets = {
        replica_aet(RAW_AET, replica, "raw"): settings.ports[f"{replica}_dicom"]
        for replica in settings.replicas("raw")
    }
    return DcmqrscpArchive(
        name=name,
        aet=settings.dcmqrscp_archives()[name],
        port=settings.ports[f"{name}_dicom"],
        storage_dir=settings.data_dir / f"{name}-dcmqrscp",
        run_dir=settings.run_dir,
        logs_dir=settings.logs_dir,
        destinations=tuple(Peer(aet, port) for aet, port in raw_aets.items()),
        callers=(*raw_aets, LOADER_AET),
    )


def render_archive(archive: DcmqrscpArchive) -> None:
    """Write the archive's configuration and logger files (mode 600) and make its storage
    folder (mode 700), all its user's."""
    user = archive_user(archive.run_dir)
    archive.storage_dir.mkdir(parents=True, exist_ok=True)
    _own(archive.storage_dir, user, 0o700)
    _write_private(archive.config_path, dcmqrscp_archive.config_text(archive), owner=user)
    _write_private(archive.log_config_path, dcmqrscp_archive.log_config_text(), owner=user)


def render_projects(settings: StackSettings) -> list[Path]:
    """Write the stack's project files: every committed ``projects/*.yaml`` and each of
    ``settings.test_projects`` (a copy of chest-xray.yaml), their destination set to this
    stack's DSH. Every process reads them through ``PIXL_PROJECTS_DIR``."""
    sources = {path.stem: path for path in sorted((REPO_DIR / "projects").glob("*.yaml"))}
    sources.update(
        {slug: REPO_DIR / "projects" / "chest-xray.yaml" for slug in settings.test_projects}
    )
    sources.update(
        {
            slug: REPO_DIR / "projects" / "chest-xray-research.yaml"
            for slug in settings.test_dicomweb_projects
        }
    )
    return [
        write_project(
            settings, slug, source, settings.local_destination(), settings.local_dicomweb()
        )
        for slug, source in sources.items()
    ]


def write_project(
    settings: StackSettings,
    slug: str,
    source: Path,
    ftps: dict[str, object],
    dicomweb: dict[str, object] | None = None,
) -> Path:
    """Write ``<projects_dir>/<slug>.yaml``: ``source`` with ``destination: ftps:`` replaced,
    and its ``dicomweb:`` (if it has one) replaced by ``dicomweb``.

    Written to a temporary name and renamed, so a process reading it meanwhile (the demo run
    again on a running stack) never sees half a file.
    """
    raw = yaml.safe_load(source.read_text())
    had_dicomweb = "dicomweb" in (raw.get("destination") or {})
    raw["destination"] = {"ftps": dict(ftps)}
    if had_dicomweb and dicomweb is not None:
        raw["destination"]["dicomweb"] = dict(dicomweb)
    header = f"# Rendered by the local stack from projects/{source.name}, destination replaced.\n"
    settings.projects_dir.mkdir(parents=True, exist_ok=True)
    # Read by the Orthancs (their own user) as well: a project file holds no secret.
    settings.projects_dir.chmod(0o755)
    target = settings.projects_dir / f"{slug}.yaml"
    partial = target.with_name(f".{target.name}.part")
    partial.write_text(header + yaml.safe_dump(raw, sort_keys=False))
    partial.chmod(0o644)
    partial.replace(target)
    return target


def program_name(replica: str) -> str:
    """supervisord's name of an Orthanc: ``vna``, ``orthanc-raw``, ``orthanc-raw-2``..."""
    if replica in ARCHIVES:
        return replica
    role = replica.rstrip("0123456789")
    number = replica.removeprefix(role)
    return f"orthanc-{role}" + (f"-{number}" if number else "")


def _storage_name(name: str) -> str:
    return name if name in ARCHIVES else f"orthanc-{name}"


def _program(
    name: str,
    command: Iterable[str],
    settings: StackSettings,
    *,
    user: str | None = None,
    memory_mb: int | None = None,
    env: dict[str, str] | None = None,
    with_secrets: bool = True,
    **extra: str,
) -> str:
    """One ``[program:NAME]`` section: no secret in it, see :mod:`stack.launch`.

    The program's secrets (``PROGRAM_SECRETS``) go to its own env file (mode 600); a program
    with secrets, a ``user`` or a ``memory_mb`` limit is started through the launcher, which
    reads the file, drops to ``user`` and execs the program, so supervisord's pid is the
    program's.
    """
    public = {**settings.public_environment(), "PIXL_PROCESS": name, **(env or {})}
    env_line = ",".join(f'{key}="{value}"' for key, value in public.items())
    secrets = _secrets_for(name, settings) if with_secrets else {}
    command = list(command)
    if secrets or memory_mb or user:
        launch = [sys.executable, "-m", "stack.launch"]
        if secrets:
            env_file = settings.secrets_dir / f"{name}.env"
            write_env_file(env_file, secrets)
            launch += ["--env-file", str(env_file)]
        if user:
            launch += ["--user", user]
        if memory_mb:
            launch += ["--memory-mb", str(memory_mb)]
        command = [*launch, "--", *command]
    lines = [
        f"[program:{name}]",
        "command=" + " ".join(command),
        f"directory={REPO_DIR}",
        f"environment={env_line}",
        "autorestart=true",
        "startsecs=2",
        "startretries=10",
        "stopasgroup=true",
        "killasgroup=true",
        "stopwaitsecs=15",
        "redirect_stderr=true",
        f"stdout_logfile={settings.logs_dir / (name + '.log')}",
        "stdout_logfile_maxbytes=20MB",
        "stdout_logfile_backups=2",
    ]
    lines += [f"{key}={value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def _secrets_for(name: str, settings: StackSettings) -> dict[str, str]:
    every = settings.secret_environment()
    # A replica (orthanc-raw-2) gets its role's secrets.
    wanted = PROGRAM_SECRETS.get(re.sub(r"-\d+$", "", name))
    if wanted is None:
        return every
    return {
        key: value
        for key, value in every.items()
        if any(key == w or key.startswith(w + "__") for w in wanted)
    }


def supervisor_config(settings: StackSettings) -> str:
    python = sys.executable
    run = settings.run_dir
    sections = [
        "[unix_http_server]",
        f"file={run / 'supervisor.sock'}",
        "chmod=0700",
        "",
        "[supervisord]",
        f"logfile={settings.logs_dir / 'supervisord.log'}",
        f"pidfile={run / 'supervisord.pid'}",
        f"childlogdir={settings.logs_dir}",
        "nodaemon=false",
        "minfds=1024",
        # Logs and whatever the programs write are private to their user by default.
        "umask=077",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{run / 'supervisor.sock'}",
        "",
        _program(
            "postgres",
            [
                python,
                "-m",
                "stack.postgres",
                "run",
                "--data-dir",
                str(settings.data_dir / "pg"),
                "--port",
                str(settings.ports["postgres"]),
            ],
            settings,
            stopsignal="INT",
        ),
    ]
    for name in ORTHANCS:
        if (name == "vna" and settings.vna_kind != "orthanc") or (
            name == "secondary" and settings.secondary_kind != "orthanc"
        ):
            continue
        for replica in settings.replicas(name) if name in ("raw", "anon") else [name]:
            config = render_orthanc_config(settings, name, replica)
            # The archive stand-ins log verbosely so tests can count the C-FINDs and C-MOVEs
            # they served ("Incoming Move request"); they play hospital archives, whose logs
            # stay inside.
            flags = ["--verbose"] if name in ARCHIVES else []
            env = {"MALLOC_ARENA_MAX": "4"}  # glibc's per-thread arenas count in the limit
            if name == "raw":  # the AE title the fetch worker asks the VNA to move to
                env["PIXL_RAW_AET"] = replica_aet(RAW_AET, replica, "raw")
            sections.append(
                _program(
                    program_name(replica),
                    [ORTHANC_BINARY, *flags, str(config)],
                    settings,
                    user=orthanc_user(),
                    memory_mb=settings.orthanc_memory_mb,
                    env=env,
                )
            )
    for name in settings.dcmqrscp_archives():
        archive = archive_spec(settings, name)
        render_archive(archive)
        # An archive holds no PIXL secret; its log is what the tests count its work from.
        sections.append(
            _program(
                name,
                archive.command(),
                settings,
                user=archive_user(settings.run_dir),
                with_secrets=False,
            )
        )
    low, high = settings.passive_ports
    sections.append(
        _program(
            "dsh",
            [
                python,
                "-m",
                "stack.standins.dsh_ftps",
                "--host",
                "127.0.0.1",
                "--port",
                str(settings.ports["dsh_ftps"]),
                "--root",
                str(settings.dsh_dir),
                "--user",
                "pixl",
                "--password-env",
                "PIXL_DSH_PASSWORD",
                "--cert-dir",
                str(settings.run_dir / "dsh-cert"),
                *(["--passive-ports", f"{low}-{high}"] if low else []),
            ],
            settings,
            # Its certificate is orthanc-anon's and the EHR module's CA file: readable by all
            # (its key is written 600 whatever the umask; uploads land in the 700 DSH folder).
            umask="022",
        )
    )
    sections.append(
        _program(
            "dicomweb-tls",
            [
                python,
                "-m",
                "stack.standins.tls_proxy",
                "--port",
                str(settings.ports["dicomweb_https"]),
                "--backend-port",
                str(settings.ports["dicomweb_http"]),
                "--certfile",
                str(settings.dicomweb_ca_file),
                "--keyfile",
                str(settings.dicomweb_cert_dir / "dicomweb-key.pem"),
            ],
            settings,
        )
    )
    for name, command in python_programs(settings).items():
        sections.append(_program(name, command, settings))
    return "\n".join(sections)


def python_programs(settings: StackSettings) -> dict[str, list[str]]:
    """The EHR module and the Cogstack stand-in, run with this virtualenv's Python."""
    if not settings.with_reports:
        return {}
    return {
        "ehr": [
            sys.executable,
            "-m",
            "pixl_ehr.service",
            "--port",
            str(settings.ports["ehr_http"]),
        ],
        "cogstack": [
            sys.executable,
            "-m",
            "stack.standins.cogstack_api",
            "--port",
            str(settings.ports["cogstack_http"]),
            "--certfile",
            str(settings.cogstack_ca_file),
            "--keyfile",
            str(settings.cogstack_cert_dir / "cogstack-key.pem"),
        ],
    }


def generate_cogstack_certificate(settings: StackSettings) -> None:
    """A fresh self-signed certificate for the Cogstack stand-in, which serves HTTPS only: the
    EHR module refuses ``http://`` for Cogstack, so the stack runs it as production should,
    with the certificate as the EHR module's CA file (``PIXL_COGSTACK_CA_FILE``)."""
    from stack.standins.dsh_ftps import generate_certificate

    folder = settings.cogstack_cert_dir
    cert, key = generate_certificate(folder, valid_for=datetime.timedelta(days=30))
    cert.replace(settings.cogstack_ca_file)
    key.replace(folder / "cogstack-key.pem")
    folder.chmod(0o755)
    settings.cogstack_ca_file.chmod(0o644)


def generate_dicomweb_certificate(settings: StackSettings) -> None:
    """A fresh self-signed certificate for the DICOMweb endpoint (the TLS proxy in front of the
    DICOMweb Orthanc: see ``stack.standins.tls_proxy``), which is orthanc-anon's CA file for it
    (``PIXL_DICOMWEB_CA_FILE``)."""
    from stack.standins.dsh_ftps import generate_certificate

    folder = settings.dicomweb_cert_dir
    cert, key = generate_certificate(folder, valid_for=datetime.timedelta(days=30))
    cert.replace(settings.dicomweb_ca_file)
    key.replace(folder / "dicomweb-key.pem")
    folder.chmod(0o755)
    settings.dicomweb_ca_file.chmod(0o644)


def supervisorctl(settings: StackSettings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "supervisor.supervisorctl",
            "-c",
            str(settings.run_dir / "supervisord.conf"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def is_up(settings: StackSettings) -> bool:
    pidfile = settings.run_dir / "supervisord.pid"
    if not pidfile.exists():
        return False
    try:
        os.kill(int(pidfile.read_text().strip()), 0)
    except (ValueError, ProcessLookupError):
        return False
    return True


# Folder modes: the root, data and run folders only let the service users through to their
# own folders (711); everything else is the invoking user's alone.
FOLDER_MODES = {
    "root": 0o711,
    "data_dir": 0o711,
    "run_dir": 0o711,
    "secrets_dir": 0o711,
    "logs_dir": 0o700,
    "dsh_dir": 0o700,
    "staging_dir": 0o700,
}


def prepare_folders(settings: StackSettings) -> None:
    """Create the stack's folders with the modes of ``FOLDER_MODES``; make existing log files
    (a demo folder from before) private."""
    for attribute, mode in FOLDER_MODES.items():
        folder: Path = getattr(settings, attribute)
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(mode)
    for log in settings.logs_dir.iterdir():
        if log.is_file():
            log.chmod(0o600)


def up(settings: StackSettings, timeout: float = 90.0) -> None:
    """Start every process (if not already running) and wait until each answers."""
    prepare_folders(settings)
    render_projects(settings)
    from stack.postgres import ensure_databases, ensure_initialised

    ensure_initialised(settings.data_dir / "pg", settings.secrets.get("PIXL_DB_PASSWORD"))
    ensure_databases(
        settings.data_dir / "pg",
        {name: settings.secrets[secret] for name, secret in ORTHANC_DATABASES.items()},
    )
    write_env_file(settings.cli_env_file, settings.cli_environment())
    kind_file = settings.run_dir / "vna-kind"
    if is_up(settings):
        running = kind_file.read_text().strip() if kind_file.exists() else "orthanc"
        if running != settings.vna_kind:
            raise StackError(
                f"the stack in {settings.root} runs the {running} VNA, not {settings.vna_kind}: "
                "stop it first (make down), then start it again"
            )
    else:
        _write_private(kind_file, settings.vna_kind + "\n")
        if settings.with_reports:
            generate_cogstack_certificate(settings)
        generate_dicomweb_certificate(settings)
        conf = settings.run_dir / "supervisord.conf"
        _write_private(conf, supervisor_config(settings))
        subprocess.run(
            [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
            check=True,
            cwd=REPO_DIR,
            timeout=60,
        )
    wait_healthy(settings, timeout)


def down(settings: StackSettings) -> None:
    """Stop exactly the processes this stack's supervisord started: the workers first, then
    the stand-ins, Postgres last, so no worker logs a lost database while shutting down
    (supervisord alone would stop them in reverse name order, Postgres among the first)."""
    if not is_up(settings):
        return
    pid = int((settings.run_dir / "supervisord.pid").read_text().strip())
    conf = (settings.run_dir / "supervisord.conf").read_text()
    programs = re.findall(r"^\[program:([^\]]+)\]", conf, re.MULTILINE)
    workers = [name for name in programs if name.startswith(("orthanc-raw", "orthanc-anon", "ehr"))]
    others = [name for name in programs if name not in workers and name != "postgres"]
    for group in (workers, others):
        if group:
            supervisorctl(settings, "stop", *group)
    supervisorctl(settings, "shutdown")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    raise StackError(f"supervisord (pid {pid}) did not stop; see {settings.logs_dir}")


def wait_healthy(settings: StackSettings, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    checks = {
        "postgres": lambda: _postgres_ready(settings.db_url),
        "vna": lambda: _http_ready(settings.url("vna") + "/system", None),
        "secondary": lambda: _http_ready(settings.url("secondary") + "/system", None),
        "dsh": lambda: _tcp_ready(settings.ports["dsh_ftps"]),
        # Through the TLS proxy, so both it and the DICOMweb Orthanc behind it must answer.
        "orthanc-dicomweb": lambda: _http_ready(
            settings.dicomweb_url + "/studies?limit=1",
            ("pixl", settings.secrets["PIXL_DICOMWEB_PASSWORD"]),
            verify=str(settings.dicomweb_ca_file),
        ),
    }
    for role in ("raw", "anon"):
        for replica in settings.replicas(role):
            checks[program_name(replica)] = functools.partial(
                _http_ready, settings.url(replica) + "/pixl/status", _auth(settings, role)
            )
    for name, aet in settings.dcmqrscp_archives().items():
        port = settings.ports[f"{name}_dicom"]
        checks[name] = lambda aet=aet, port=port: dcmqrscp_archive.echo(aet, port)
    if settings.with_reports:
        checks["ehr"] = lambda: _http_ready(settings.url("ehr") + "/health", None)
        checks["cogstack"] = lambda: _http_ready(
            settings.url("cogstack") + "/api/health", None, verify=str(settings.cogstack_ca_file)
        )
    pending = dict(checks)
    while pending:
        for name, check in list(pending.items()):
            if check():
                del pending[name]
        if not pending:
            return
        if time.monotonic() > deadline:
            names = ", ".join(sorted(pending))
            raise StackError(
                f"not healthy after {timeout:.0f}s: {names} ({_supervisor_states(settings)}); "
                f"see {settings.logs_dir}/<name>.log"
            )
        time.sleep(0.5)


def _supervisor_states(settings: StackSettings) -> str:
    """supervisord's view of every program (RUNNING, BACKOFF, FATAL...), so a part that is
    not healthy says whether it is down, crash-looping or running but not answering."""
    try:
        lines = supervisorctl(settings, "status").stdout.splitlines()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"supervisord not asked: {type(exc).__name__}"
    return "; ".join(" ".join(line.split()[:2]) for line in lines if line.strip())


def _auth(settings: StackSettings, name: str) -> tuple[str, str]:
    """orthanc-raw's or orthanc-anon's own user ``pixl`` (their passwords differ)."""
    variable = "PIXL_ORTHANC_RAW_PASSWORD" if name == "raw" else "PIXL_ORTHANC_PASSWORD"
    return ("pixl", settings.secrets[variable])


def _postgres_ready(url: str) -> bool:
    try:
        psycopg2.connect(url, connect_timeout=2).close()
    except psycopg2.OperationalError:
        return False
    return True


def _http_ready(url: str, auth: tuple[str, str] | None, verify: str | bool = True) -> bool:
    try:
        return requests.get(url, auth=auth, timeout=2, verify=verify).status_code == 200
    except requests.RequestException:
        return False


def _tcp_ready(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True
