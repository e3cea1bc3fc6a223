"""TLS in front of the DICOMweb stand-in: the research platform's endpoint speaks HTTPS.

Why a proxy: Debian 12's Orthanc 1.10.1 has the settings for HTTPS (``SslEnabled``,
``SslCertificate``), but its HTTP server (the system civetweb) crashes with SIGSEGV on the first
TLS connection (a call through a null function pointer: ``civetweb-worker ... segfault at 0 ip
0``), whatever the key format. So the DICOMweb Orthanc listens on 127.0.0.1 in plain HTTP and
this process terminates TLS in front of it with the stack's generated certificate, so PIXL's
client runs as against a real platform: ``https://``, certificate and hostname verified against
a CA file, basic auth inside TLS.

Run it as::

    python -m stack.standins.tls_proxy --port 17111 --backend-port 17110 \\
        --certfile cert.pem --keyfile key.pem

Every connection is piped byte for byte both ways; nothing is parsed or logged but the count of
connections and TLS handshakes that failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import ssl
from collections.abc import Sequence

logger = logging.getLogger("pixl.stack.tls_proxy")
_BLOCK = 256 * 1024


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while block := await reader.read(_BLOCK):
            writer.write(block)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


def handler(backend_port: int):  # type: ignore[no-untyped-def]
    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter):  # type: ignore[no-untyped-def]
        try:
            backend_reader, backend_writer = await asyncio.open_connection(
                "127.0.0.1", backend_port
            )
        except OSError:
            client_writer.close()  # the platform is down: the client sees the connection end
            return
        await asyncio.gather(
            _pipe(client_reader, backend_writer), _pipe(backend_reader, client_writer)
        )

    return handle


async def serve(port: int, backend_port: int, certfile: str, keyfile: str) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    server = await asyncio.start_server(handler(backend_port), "127.0.0.1", port, ssl=context)
    logger.warning("TLS proxy on 127.0.0.1:%d in front of 127.0.0.1:%d", port, backend_port)
    async with server:
        await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend-port", type=int, required=True)
    parser.add_argument("--certfile", required=True)
    parser.add_argument("--keyfile", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(serve(args.port, args.backend_port, args.certfile, args.keyfile))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
