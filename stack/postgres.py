"""A throwaway PostgreSQL 15 cluster for the demo and the tests, from Debian's packages.

Postgres is PIXL's one source of truth for work state, so the demo and the tests run a real
server rather than a stand-in. This module creates a cluster in a folder of its own, listening on
127.0.0.1 and one port only (its unix socket lives inside the data folder, so two clusters never
collide and nothing else on the machine is touched), with a superuser ``pixl`` and a database
``pixl``. Every connection, over TCP or the unix socket, must give ``pixl``'s password
(scram-sha-256): a local user who can reach the port cannot read or change the work state
without it. The password is the caller's (the stack's ``PIXL_DB_PASSWORD``) or generated; it is
kept in ``<data folder>/pixl_password`` (mode 600, the server's user), so that
:func:`cluster_url` can give a URL with it, and set again whenever the caller's differs. A
cluster created with trust authentication before this is converted on its next start.

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
import hashlib
import os
import pwd
import secrets
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

from pixl_core.errors import PixlConfigError

PG_BIN = Path(os.environ.get("PIXL_PG_BIN", "/usr/lib/postgresql/15/bin"))
SUPERUSER = "pixl"
DATABASE = "pixl"
_SERVICE_USER = "postgres"
_START_TIMEOUT_SECONDS = 30
_CREATED_MARKER = "pixl_database_created"
_PASSWORD_FILE = "pixl_password"
# Every connection authenticates with a password; nothing is trusted, not even the socket.
_HBA = (
    "# Written by stack/postgres.py: every connection gives the user's password.\n"
    "local all all scram-sha-256\n"
    "host all all 127.0.0.1/32 scram-sha-256\n"
    "host all all ::1/128 scram-sha-256\n"
)

# Settings that make a cluster cheap to throw away: no durability across an OS crash. Only the
# tests ask for these; the demo keeps the defaults so a clean restart keeps its work state.
_FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def cluster_url(port: int, database: str = DATABASE, password: str | None = None) -> str:
    """The libpq URL of a cluster started here, with ``pixl``'s password when given."""
    user = f"{SUPERUSER}:{quote(password, safe='')}" if password else SUPERUSER
    return f"postgresql://{user}@127.0.0.1:{port}/{database}"


def cluster_password(data_dir: Path) -> str | None:
    """The password of ``pixl`` on the cluster in ``data_dir`` (None before it is created)."""
    try:
        return (data_dir.absolute() / _PASSWORD_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None


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


def ensure_initialised(data_dir: Path, password: str | None = None) -> str:
    """Create the cluster and its ``pixl`` database once, and make ``password`` the password of
    ``pixl``; return the password in force.

    Without ``password``, the cluster keeps the one it has (a new cluster gets a random one).
    The database is created, and the password set, in single-user mode, so that no server has
    to listen anywhere before they exist (the foreground ``run`` mode then needs no second
    start). A marker file records that the database was created, so an interrupted first run
    is completed by the next one. The password cannot change while the server runs (single-user
    mode needs the folder to itself): it is then left as it is.
    """
    data_dir = data_dir.absolute()
    if not (data_dir / "PG_VERSION").exists():
        password = password or cluster_password(data_dir) or secrets.token_hex(24)
        _initdb(data_dir, password)
        _save_password(data_dir, password)
    current = cluster_password(data_dir)
    wanted = password or current or secrets.token_hex(24)
    trusting = "trust" in _hba_methods(data_dir)
    if (wanted != current or trusting) and not is_running(data_dir):
        _single_user(data_dir, f"ALTER ROLE {SUPERUSER} PASSWORD {_literal(wanted)};", "password")
        _save_password(data_dir, wanted)
        _write_service_file(data_dir / "pg_hba.conf", _HBA)
        current = wanted
    marker = data_dir / _CREATED_MARKER
    if not marker.exists():
        _single_user(data_dir, f"CREATE DATABASE {DATABASE};", "create database")
        marker.write_text("the pixl database exists\n")
        _give_to_service_user(marker)
    return current or wanted


def ensure_databases(data_dir: Path, databases: Mapping[str, str]) -> None:
    """Create each database of ``databases`` (name -> password) owned by a login role of the
    same name with that password: orthanc-raw's and orthanc-anon's index (and storage).

    Each Orthanc gets a role of its own, so neither can read PIXL's work state nor the other's
    files, and the password is a stack secret that Orthanc expands from its environment, never
    written in a config. Done in single-user mode like the ``pixl`` database, before any server
    listens; a marker per database holds a digest of the password in force, so a changed secret
    is set again on the next start. While the server runs nothing is changed (single-user mode
    needs the folder to itself): the running stack keeps what it has.
    """
    data_dir = data_dir.absolute()
    if is_running(data_dir):
        return
    for name, password in databases.items():
        if not name.isidentifier() or name.lower() != name:
            raise PixlConfigError(f"database name {name!r} must be lowercase letters and _")
        marker = data_dir / f"{_CREATED_MARKER}_{name}"
        digest = hashlib.sha256(password.encode()).hexdigest()
        if marker.exists() and marker.read_text().strip() == digest:
            continue
        statements = (
            f"CREATE ROLE {name} LOGIN;\n\n"
            f"ALTER ROLE {name} PASSWORD {_literal(password)};\n\n"
            f"CREATE DATABASE {name} OWNER {name};\n\n"
        )
        _single_user(data_dir, statements, f"create database {name}")
        _write_service_file(marker, digest + "\n")


def _single_user(data_dir: Path, statement: str, what: str) -> None:
    """Run one statement in single-user mode; raise one line on an error other than "exists"."""
    result = _run(
        [str(PG_BIN / "postgres"), "--single", "-D", str(data_dir), "-j", "postgres"],
        what,
        stdin=statement + "\n",
    )
    # Single-user mode exits 0 even when the statement fails: read its log instead.
    errors = [
        line.split("ERROR:", 1)[1].strip()
        for line in result.stderr.splitlines()
        if "ERROR:" in line and "already exists" not in line
    ]
    if errors:
        raise PixlConfigError(f"postgres {what} failed: {errors[-1]}")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _hba_methods(data_dir: Path) -> set[str]:
    """The authentication methods pg_hba.conf names (the last word of each rule)."""
    try:
        lines = (data_dir / "pg_hba.conf").read_text().splitlines()
    except FileNotFoundError:
        return set()
    return {line.split()[-1] for line in lines if line.strip() and not line.startswith("#")}


def _write_service_file(path: Path, text: str) -> None:
    """Write a file only the server's user (and root) can read."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    path.chmod(0o600)
    _give_to_service_user(path)


def _save_password(data_dir: Path, password: str) -> None:
    _write_service_file(data_dir / _PASSWORD_FILE, password + "\n")


def _initdb(data_dir: Path, password: str) -> None:
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
    # initdb reads the password from a file only the server's user can read, beside the data
    # folder and only while initdb runs: never on a command line.
    password_file = data_dir.with_name(f".{data_dir.name}.initdb-password")
    _write_service_file(password_file, password + "\n")
    try:
        _run(
            [str(PG_BIN / "initdb"), "-D", str(data_dir), "-A", "scram-sha-256",
             f"--pwfile={password_file}", "-U", SUPERUSER, "-E", "UTF8", "--locale=C.UTF-8",
             "--no-instructions"],
            "initdb",
        )  # fmt: skip
    finally:
        password_file.unlink(missing_ok=True)
    _write_service_file(data_dir / "pg_hba.conf", _HBA)


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


def start_cluster(
    data_dir: Path,
    port: int,
    log_file: Path,
    *,
    fast: bool = False,
    password: str | None = None,
) -> str:
    """Start (creating it if needed) a cluster on 127.0.0.1:``port``; return its libpq URL,
    password included (see :func:`ensure_initialised` for ``password``).

    Waits until the server accepts connections. Starting a cluster that is already running is
    a no-op. ``fast`` turns off fsync and friends: for test clusters only.
    """
    data_dir = data_dir.absolute()
    log_file = log_file.absolute()
    password = ensure_initialised(data_dir, password)
    if is_running(data_dir):
        return cluster_url(port, password=password)
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
    return cluster_url(port, password=password)


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
