"""Start and stop the local stack under supervisord, and wait until every part answers.

One supervisord per stack root owns every process (Postgres, the VNA, orthanc-raw,
orthanc-anon, the DSH's FTPS server, and the EHR module with its Cogstack stand-in when present)
and restarts any that crashes. ``down`` asks that supervisord to stop exactly what it started.
Logs go to ``<root>/logs/``.
"""

from __future__ import annotations

import os
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

from stack.settings import REPO_DIR, StackSettings

ORTHANC_BINARY = shutil.which("Orthanc") or "/usr/bin/Orthanc"
ORTHANCS = ("vna", "raw", "anon")


class StackError(RuntimeError):
    """A part of the stack did not come up; the message names it and its log."""


def render_orthanc_config(settings: StackSettings, name: str) -> Path:
    """Fill an ``orthanc-config/<name>.json`` template; Orthanc expands the secrets itself."""
    template = string.Template((REPO_DIR / "orthanc-config" / f"{name}.json").read_text())
    values = {
        "DATA_DIR": str(settings.data_dir),
        "REPO_DIR": str(REPO_DIR),
        "RAW_CACHE_MB": str(settings.raw_cache_mb),
        **{f"{key.upper()}_PORT": str(port) for key, port in settings.ports.items()},
    }
    target = settings.run_dir / f"orthanc-{name}.json"
    target.write_text(template.safe_substitute(values))
    (settings.data_dir / _storage_name(name)).mkdir(parents=True, exist_ok=True)
    return target


def render_projects(settings: StackSettings) -> list[Path]:
    """Write the stack's project files: every committed ``projects/*.yaml`` and each of
    ``settings.test_projects`` (a copy of chest-xray.yaml), their destination set to this
    stack's DSH. Every process reads them through ``PIXL_PROJECTS_DIR``."""
    sources = {path.stem: path for path in sorted((REPO_DIR / "projects").glob("*.yaml"))}
    sources.update(
        {slug: REPO_DIR / "projects" / "chest-xray.yaml" for slug in settings.test_projects}
    )
    return [
        write_project(settings, slug, source, settings.local_destination())
        for slug, source in sources.items()
    ]


def write_project(
    settings: StackSettings, slug: str, source: Path, ftps: dict[str, object]
) -> Path:
    """Write ``<projects_dir>/<slug>.yaml``: ``source`` with ``destination: ftps:`` replaced.

    Written to a temporary name and renamed, so a process reading it meanwhile (the demo run
    again on a running stack) never sees half a file.
    """
    raw = yaml.safe_load(source.read_text())
    raw["destination"] = {"ftps": dict(ftps)}
    header = f"# Rendered by the local stack from projects/{source.name}, destination replaced.\n"
    settings.projects_dir.mkdir(parents=True, exist_ok=True)
    target = settings.projects_dir / f"{slug}.yaml"
    partial = target.with_name(f".{target.name}.part")
    partial.write_text(header + yaml.safe_dump(raw, sort_keys=False))
    partial.replace(target)
    return target


def _storage_name(name: str) -> str:
    return "vna" if name == "vna" else f"orthanc-{name}"


def _program(name: str, command: Iterable[str], settings: StackSettings, **extra: str) -> str:
    env = {**settings.environment(), "PIXL_PROCESS": name}
    env_line = ",".join(f'{key}="{value}"' for key, value in env.items())
    lines = [
        f"[program:{name}]",
        "command=" + " ".join(command),
        f"directory={REPO_DIR}",
        f"environment={env_line}",
        "autorestart=true",
        "startsecs=2",
        "startretries=5",
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
        config = render_orthanc_config(settings, name)
        process = name if name == "vna" else f"orthanc-{name}"
        # The VNA stand-in logs verbosely so tests can count the C-MOVEs it served
        # ("Incoming Move request"); it plays the hospital archive, whose logs stay inside.
        flags = ["--verbose"] if name == "vna" else []
        sections.append(_program(process, [ORTHANC_BINARY, *flags, str(config)], settings))
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
        ],
    }


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


def up(settings: StackSettings, timeout: float = 90.0) -> None:
    """Start every process (if not already running) and wait until each answers."""
    for folder in (
        settings.data_dir,
        settings.logs_dir,
        settings.run_dir,
        settings.dsh_dir,
        settings.staging_dir,
    ):
        folder.mkdir(parents=True, exist_ok=True)
    render_projects(settings)
    from stack.postgres import ensure_initialised

    ensure_initialised(settings.data_dir / "pg")
    if not is_up(settings):
        conf = settings.run_dir / "supervisord.conf"
        conf.write_text(supervisor_config(settings))
        subprocess.run(
            [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
            check=True,
            cwd=REPO_DIR,
            timeout=60,
        )
    wait_healthy(settings, timeout)


def down(settings: StackSettings) -> None:
    """Stop exactly the processes this stack's supervisord started."""
    if not is_up(settings):
        return
    pid = int((settings.run_dir / "supervisord.pid").read_text().strip())
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
        "orthanc-raw": lambda: _http_ready(settings.url("raw") + "/pixl/status", _auth(settings)),
        "orthanc-anon": lambda: _http_ready(settings.url("anon") + "/pixl/status", _auth(settings)),
        "dsh": lambda: _tcp_ready(settings.ports["dsh_ftps"]),
    }
    if settings.with_reports:
        checks["ehr"] = lambda: _http_ready(settings.url("ehr") + "/health", None)
        checks["cogstack"] = lambda: _http_ready(settings.url("cogstack") + "/api/health", None)
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
                f"not healthy after {timeout:.0f}s: {names}; see {settings.logs_dir}/<name>.log"
            )
        time.sleep(0.5)


def _auth(settings: StackSettings) -> tuple[str, str]:
    return ("pixl", settings.secrets["PIXL_ORTHANC_PASSWORD"])


def _postgres_ready(url: str) -> bool:
    try:
        psycopg2.connect(url, connect_timeout=2).close()
    except psycopg2.OperationalError:
        return False
    return True


def _http_ready(url: str, auth: tuple[str, str] | None) -> bool:
    try:
        return requests.get(url, auth=auth, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _tcp_ready(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True
