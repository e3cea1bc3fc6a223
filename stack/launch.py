"""Start one process of the local stack with its secrets, its user and its memory limit.

supervisord starts the stack's programs through this launcher so that no secret is written
into ``supervisord.conf`` (which any tool that reads the stack's configuration, and before
issue 8 any local user, could read). Each program's secrets are in a file of its own,
``run/secrets/<program>.env``, mode 600, read by the launcher before it drops to the program's
user: the program gets only its own secrets, in its environment, and no other local user can
read them. The launcher then applies the memory limit, becomes the program's user (``--user``,
when started as root) and replaces itself with the program (``exec``), so supervisord's PID and
signals are the program's own. (Privileges are dropped here rather than by supervisord's
``user=`` because the virtualenv's Python may live where only root can run it.)

    python -m stack.launch --env-file run/secrets/orthanc-raw.env --user orthanc \\
        --memory-mb 4096 -- /usr/sbin/Orthanc run/orthanc-raw.json

The env file has one ``NAME=value`` line per variable, the value quoted as a POSIX shell word
(``shlex.quote``), so the same file can be sourced by a shell (``set -a; . FILE``). The memory
limit is ``RLIMIT_AS`` (what ``ulimit -v`` sets): an Orthanc that a malformed instance drives to
gigabytes fails an allocation and is restarted by supervisord instead of exhausting the host.

Only the standard library is imported: this runs before every program of the stack, as the
program's own (unprivileged) user.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path


class EnvFileError(ValueError):
    """An env file line is not ``NAME=value``; the message names the file and line number."""


def write_env_file(path: Path, values: Mapping[str, str]) -> None:
    """Write ``values`` as ``NAME=quoted-value`` lines, mode 600 from the start.

    The file is created with mode 600 before anything is written, so a secret is never briefly
    readable by others, and renamed into place, so a reader never sees half of it.
    """
    text = "".join(f"{name}={shlex.quote(value)}\n" for name, value in values.items())
    partial = path.with_name(f".{path.name}.part")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.chmod(partial, 0o600)  # an existing partial file kept its old mode
    partial.replace(path)


def read_env_file(path: Path) -> dict[str, str]:
    """The variables of an env file written by :func:`write_env_file` (or by hand)."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            words = shlex.split(line)
        except ValueError:
            words = []
        name, equals, value = words[0].partition("=") if len(words) == 1 else ("", "", "")
        if not equals or not name.isidentifier():
            raise EnvFileError(f"{path}:{number}: not a NAME=value line; rewrite it or delete it")
        values[name] = value
    return values


def limit_memory(megabytes: int) -> None:
    """Cap this process's address space (and so the program it becomes) at ``megabytes``."""
    limit = megabytes * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def become(user: str) -> None:
    """Drop to ``user`` (its own group, no supplementary groups) and set HOME, USER, LOGNAME."""
    import pwd

    entry = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    os.environ.update(HOME=entry.pw_dir, USER=user, LOGNAME=user)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.launch", description=__doc__)
    parser.add_argument("--env-file", type=Path, help="NAME=value lines added to the environment")
    parser.add_argument("--memory-mb", type=int, help="address-space limit (ulimit -v), in MB")
    parser.add_argument("--user", help="run the program as this user (needs root)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- PROGRAM [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no program given: add -- PROGRAM [ARGS...]")
    try:
        if args.env_file is not None:
            os.environ.update(read_env_file(args.env_file))
        if args.memory_mb is not None:
            if args.memory_mb <= 0:
                raise ValueError("--memory-mb must be a positive number of megabytes")
            limit_memory(args.memory_mb)
        if args.user is not None:
            become(args.user)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execvp(command[0], command)
    except (OSError, ValueError, KeyError) as error:
        print(f"stack.launch: cannot start {command[0]}: {error}", file=sys.stderr)
        return 2
    return 0  # not reached: execvp replaced this process


if __name__ == "__main__":
    sys.exit(main())
