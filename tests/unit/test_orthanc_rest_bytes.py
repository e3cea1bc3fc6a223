"""``OrthancClient.get_bytes`` reads a file in one go over a kept-alive connection, and a body
broken off mid-way is an ``OrthancError``, not a short file (a local HTTP server, 127.0.0.1)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from pixl_core.transport.orthanc_rest import OrthancClient, OrthancError

BODY = os.urandom(3 << 20)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    connections: ClassVar[set[int]] = set()

    def do_GET(self) -> None:
        _Handler.connections.add(id(self.connection))
        body = BODY if self.path != "/missing" else b"{}"
        status = 404 if self.path == "/missing" else 200
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path == "/broken":
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    _Handler.connections = set()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_a_file_is_read_whole_and_the_connection_kept_for_the_next(server):
    client = OrthancClient(server)
    assert client.get_bytes("/instances/a/file") == BODY
    assert client.get_bytes("/instances/b/file") == BODY
    assert len(_Handler.connections) == 1


def test_a_body_broken_off_is_an_error_not_a_short_file(server):
    client = OrthancClient(server)
    with pytest.raises(OrthancError) as error:
        client.get_bytes("/broken")
    assert error.value.code == "unreachable"
    assert client.get_bytes("/instances/a/file") == BODY  # and the client goes on


def test_an_error_status_is_raised_with_its_code(server):
    client = OrthancClient(server)
    with pytest.raises(OrthancError) as error:
        client.get_bytes("/missing")
    assert error.value.code == "not_found"
    assert client.get_bytes("/instances/a/file") == BODY
