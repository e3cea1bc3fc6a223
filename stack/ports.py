"""Free local TCP ports, for the stack's processes and the tests' servers.

Ports are picked at random below the kernel's ephemeral range (which starts at 32768): a port
the kernel hands out itself (``bind(0)``) can be taken, between the probe and the real server's
bind, by any outgoing connection on the machine, and the tests make thousands of those while
several stacks start side by side (`make test` runs suites in parallel). Below that range only
another server picking the same number can collide; each process also never hands out a port
twice. What race is left (another process binding the same random port within milliseconds)
fails loudly and a rerun picks again.
"""

from __future__ import annotations

import random
import socket
import threading

_LOW, _HIGH = 20000, 32000  # below the ephemeral range (/proc/sys/net/ipv4/ip_local_port_range)
_given: set[int] = set()
_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now, never handed out before by this process."""
    with _lock:
        for _ in range(200):
            port = random.randrange(_LOW, _HIGH)
            if port in _given or not _bindable(host, port):
                continue
            _given.add(port)
            return port
    raise RuntimeError(f"no free port found between {_LOW} and {_HIGH}: free some and rerun")


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port_range(count: int, host: str = "127.0.0.1") -> tuple[int, int]:
    """``count`` consecutive free ports below the usual ephemeral range (FTP passive mode)."""
    for _ in range(50):
        first = random.randrange(_LOW, _HIGH - count)
        if any(port in _given for port in range(first, first + count)):
            continue
        sockets: list[socket.socket] = []
        try:
            for port in range(first, first + count):
                probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(probe)
                probe.bind((host, port))
        except OSError:
            continue
        finally:
            for probe in sockets:
                probe.close()
        with _lock:
            _given.update(range(first, first + count))
        return first, first + count - 1
    raise RuntimeError("no range of free ports found for passive mode: free some ports and rerun")
