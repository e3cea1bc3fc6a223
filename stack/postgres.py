"""A throwaway PostgreSQL 15 cluster for the demo and the tests, from Debian's packages.

Postgres is PIXL's one source of truth for work state, so the demo and the tests run a real
server rather than a stand-in. This module creates a cluster in a folder of its own, listening on
127.0.0.1 and one port only (its unix socket lives inside the data folder, so two clusters never
collide and nothing else on the machine is touched), with a trusted superuser ``pixl`` and a
database ``pixl``.

``initdb`` refuses to run as root, so when this runs as root every server command runs as the
``postgres`` system user (``runuser -u postgres``) on a folder chowned to it; as any other user,
the commands run as that user.

    python -m stack.postgres start --data-dir .demo/postgres --port 5433   # prints the URL
    python -m stack.postgres stop  --data-dir .demo/postgres
    python -m stack.postgres run   --data-dir .demo/postgres --port 5433   # foreground

``run`` replaces the Python process with ``postgres`` itself (same PID, signals go straight to
the server), which is what a process supervisor needs: stop it with SIGINT for a fast shutdown
(SIGTERM waits for clients to disconnect).
"""

from __future__ import annotations

import argparse
import os
import pwd
import subprocess
import sys
from pathlib import Path

from pixl_core.errors import PixlConfigError

PG_BIN = Path(os.environ.get("PIXL_PG_BIN", "/usr/lib/postgresql/15/bin"))
SUPERUSER = "pixl"
DATABASE = "pixl"
_SERVICE_USER = "postgres"
_START_TIMEOUT_SECONDS = 30
_CREATED_MARKER = "pixl_database_created"

# Settings that make a cluster cheap to throw away: no durability across an OS crash. Only the
# tests ask for these; the demo keeps the defaults so a clean restart keeps its work state.
_FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def cluster_url(port: int, database: str = DATABASE) -> str:
    """The libpq URL of a cluster started here (trust authentication, so no password)."""
    return f"postgresql://{SUPERUSER}@127.0.0.1:{port}/{database}"


def _is_root() -> bool:
    return os.geteuid() == 0


def _as_service_user(argv: list[str]) -> list[str]:
    """Prefix a command so it runs as the postgres user when we are root."""
    if _is_root():
        return ["runuser", "-u", _SERVICE_USER, "--", *argv]
    return argv


def _give_to_service_user(path: Path) -> None:
    if _is_root():
        entry = pwd.getpwnam(_SERVICE_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _run(argv: list[str], what: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a server command; on failure raise one line naming the step and the server's reason."""
    result = subprocess.run(
        _as_service_user(argv), input=stdin, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        reason = lines[-1] if lines else f"exit status {result.returncode}"
        raise PixlConfigError(f"postgres {what} failed: {reason}")
    return result


def _server_options(data_dir: Path, port: int, fast: bool) -> list[str]:
    settings = {
        "listen_addresses": "127.0.0.1",
        "port": str(port),
        "unix_socket_directories": str(data_dir),
        # psycopg2 interpolates parameters client-side, so a failing statement's text can hold
        # identifiers: never copy statements into the server log.
        "log_min_error_statement": "panic",
        **(_FAST_SETTINGS if fast else {}),
    }
    options: list[str] = []
    for name, value in settings.items():
        options += ["-c", f"{name}={value}"]
    return options


def ensure_initialised(data_dir: Path) -> None:
    """Create the cluster and its ``pixl`` database once; do nothing if that is already done.

    The database is created in single-user mode, so that no server has to listen anywhere
    before it exists (the foreground ``run`` mode then needs no second start). A marker file
    records that it was created, so an interrupted first run is completed by the next one.
    """
    data_dir = data_dir.absolute()
    if not (data_dir / "PG_VERSION").exists():
        _initdb(data_dir)
    marker = data_dir / _CREATED_MARKER
    if marker.exists():
        return
    result = _run(
        [str(PG_BIN / "postgres"), "--single", "-D", str(data_dir), "-j", "postgres"],
        "create database",
        stdin=f"CREATE DATABASE {DATABASE};\n",
    )
    # Single-user mode exits 0 even when the statement fails: read its log instead.
    errors = [
        line.split("ERROR:", 1)[1].strip()
        for line in result.stderr.splitlines()
        if "ERROR:" in line and "already exists" not in line
    ]
    if errors:
        raise PixlConfigError(f"postgres create database failed: {errors[-1]}")
    marker.write_text("the pixl database exists\n")
    _give_to_service_user(marker)


def _initdb(data_dir: Path) -> None:
    if not (PG_BIN / "initdb").exists():
        raise PixlConfigError(
            f"{PG_BIN}/initdb not found: install PostgreSQL 15 (`apt-get install postgresql`) "
            "or set PIXL_PG_BIN to its bin folder"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    _give_to_service_user(data_dir)
    if _is_root():
        reachable = subprocess.run(
            ["runuser", "-u", _SERVICE_USER, "--", "test", "-w", str(data_dir)], check=False
        )
        if reachable.returncode != 0:
            raise PixlConfigError(
                f"the postgres user cannot write {data_dir}: make every parent folder "
                "traversable (chmod o+x) or choose a data folder elsewhere"
            )
    _run(
        [str(PG_BIN / "initdb"), "-D", str(data_dir), "-A", "trust", "-U", SUPERUSER,
         "-E", "UTF8", "--locale=C.UTF-8", "--no-instructions"],
        "initdb",
    )  # fmt: skip


def is_running(data_dir: Path) -> bool:
    """Whether a server is running on this data folder (``pg_ctl status``)."""
    if not (data_dir / "PG_VERSION").exists():
        return False
    status = subprocess.run(
        _as_service_user([str(PG_BIN / "pg_ctl"), "status", "-D", str(data_dir.absolute())]),
        capture_output=True,
        check=False,
    )
    return status.returncode == 0


def start_cluster(data_dir: Path, port: int, log_file: Path, *, fast: bool = False) -> str:
    """Start (creating it if needed) a cluster on 127.0.0.1:``port``; return its libpq URL.

    Waits until the server accepts connections. Starting a cluster that is already running is
    a no-op. ``fast`` turns off fsync and friends: for test clusters only.
    """
    data_dir = data_dir.absolute()
    log_file = log_file.absolute()
    ensure_initialised(data_dir)
    if is_running(data_dir):
        return cluster_url(port)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.touch()
    _give_to_service_user(log_file)
    options = " ".join(_server_options(data_dir, port, fast))
    try:
        _run(
            [str(PG_BIN / "pg_ctl"), "start", "-D", str(data_dir), "-l", str(log_file),
             "-w", "-t", str(_START_TIMEOUT_SECONDS), "-o", options],
            "start",
        )  # fmt: skip
    except PixlConfigError:
        reason = _last_server_error(log_file)
        raise PixlConfigError(
            f"postgres start on port {port} failed: {reason} (see {log_file})"
        ) from None
    return cluster_url(port)


def _last_server_error(log_file: Path) -> str:
    """The server's own reason for refusing to start, e.g. the port is taken."""
    try:
        lines = log_file.read_text(errors="replace").splitlines()
    except OSError:
        return "no server log"
    for line in reversed(lines):
        for level in ("FATAL:", "PANIC:", "ERROR:"):
            if level in line:
                return line.split(level, 1)[1].strip()
    return "the server did not become ready"


def stop_cluster(data_dir: Path) -> None:
    """Stop the cluster quickly (disconnecting clients); do nothing if it is not running."""
    data_dir = data_dir.absolute()
    if not is_running(data_dir):
        return
    _run([str(PG_BIN / "pg_ctl"), "stop", "-D", str(data_dir), "-m", "fast", "-w"], "stop")


def run_foreground(data_dir: Path, port: int) -> None:
    """Replace this process with ``postgres`` in the foreground, for a process supervisor.

    Privileges are dropped in-process rather than through ``runuser`` so that no intermediate
    process sits between the supervisor and the server: the supervisor's PID is the server's.
    """
    data_dir = data_dir.absolute()
    ensure_initialised(data_dir)
    argv = [str(PG_BIN / "postgres"), "-D", str(data_dir), *_server_options(data_dir, port, False)]
    if _is_root():
        entry = pwd.getpwnam(_SERVICE_USER)
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
        os.environ.update(HOME=entry.pw_dir, USER=_SERVICE_USER, LOGNAME=_SERVICE_USER)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.postgres", description=__doc__)
    parser.add_argument("action", choices=["start", "stop", "run"])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, default=5433)
    parser.add_argument(
        "--log-file", type=Path, help="server log for `start` (default: DATA_DIR.log)"
    )
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            log_file = args.log_file or args.data_dir.with_name(args.data_dir.name + ".log")
            print(start_cluster(args.data_dir, args.port, log_file))
        elif args.action == "stop":
            stop_cluster(args.data_dir)
        else:
            run_foreground(args.data_dir, args.port)
    except PixlConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
