"""Free local TCP ports, for the stack's processes and the tests' servers.

The kernel picks a port nothing listens on; between the probe closing and the real server
binding, another process could take it. That race is accepted here: this is only ever used
for local test and demo servers, where a collision fails loudly and a rerun picks again.
"""

from __future__ import annotations

import random
import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the kernel's pick; tiny race accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def free_port_range(count: int, host: str = "127.0.0.1") -> tuple[int, int]:
    """``count`` consecutive free ports below the usual ephemeral range (FTP passive mode)."""
    for _ in range(50):
        first = random.randrange(20000, 32000 - count)
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
        return first, first + count - 1
    raise RuntimeError("no range of free ports found for passive mode: free some ports and rerun")
