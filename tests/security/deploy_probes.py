"""Small probes of the running stack shared by the deployment security tests."""

from __future__ import annotations

import os
import pwd
from pathlib import Path


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on ``port`` (from /proc/net/tcp{,6}):
    what ``ss -ltn`` shows, without depending on iproute2."""
    found: set[str] = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        if not Path(table).exists():
            continue
        with open(table) as handle:
            next(handle)
            for line in handle:
                fields = line.split()
                address, _, hex_port = fields[1].partition(":")
                if int(hex_port, 16) != port or fields[3] != "0A":  # 0A: LISTEN
                    continue
                if width == 8:
                    found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
                else:
                    found.add("::" if set(address) == {"0"} else address)
    return found


def process_user(pid: int) -> str:
    """The name of the user a process runs as (its effective uid)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return pwd.getpwuid(int(line.split()[2])).pw_name
    raise LookupError(f"no Uid line for pid {pid}")


def process_environment(pid: int) -> dict[str, str]:
    """The environment a process was started with (readable by root or its own user)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {name: value for name, _, value in pairs}


def address_space_limit(pid: int) -> int | None:
    """The soft RLIMIT_AS of a process in bytes (None: unlimited)."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max address space"):
            soft = line.split()[3]
            return None if soft == "unlimited" else int(soft)
    raise LookupError(f"no address-space line for pid {pid}")


def is_root() -> bool:
    return os.geteuid() == 0
