"""Local stand-in for the Data Safe Haven: a TLS-only FTP server (pyftpdlib).

The real DSH accepts FTPS only, so the stand-in refuses anything else: TLS is required on the
control channel before login and on every data channel (``PROT P``). It generates its own
short-lived certificate at start and writes it where clients can load it as their CA file, so
the client is exercised with certificate and hostname verification switched on.

pyftpdlib does not check TLS session reuse on data connections (giampaolo/pyftpdlib#288), but
the DSH's vsftpd does (``require_ssl_reuse=YES``, its default) and refuses a data connection
that does not resume the control connection's session. To catch clients that would fail there,
this server checks it too by default (``require_session_reuse``), answering like vsftpd does.

Run it as::

    PIXL_DSH_PASSWORD=... python -m stack.standins.dsh_ftps --host 127.0.0.1 --port 2121 \\
        --root .demo/dsh --user pixl --password-env PIXL_DSH_PASSWORD --cert-dir .demo/certs

or, in tests, with :func:`start_in_thread`.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler, TLS_DTPHandler, TLS_FTPHandler
from pyftpdlib.servers import FTPServer

logger = logging.getLogger(__name__)

CERT_FILE_NAME = "dsh-ftps-cert.pem"
KEY_FILE_NAME = "dsh-ftps-key.pem"
DEFAULT_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost")
# Every permission pyftpdlib has: the exporter creates folders, uploads, renames and checks sizes.
_ALL_PERMISSIONS = "elradfmwMT"
_SESSION_REUSE_REFUSAL = "522 SSL connection failed: session reuse required."


def generate_certificate(
    cert_dir: str | os.PathLike[str],
    hosts: Sequence[str] = DEFAULT_HOSTS,
    valid_for: datetime.timedelta = datetime.timedelta(days=1),
) -> tuple[Path, Path]:
    """Write a fresh self-signed certificate and its key into ``cert_dir``.

    A new key each start means no long-lived secret sits in the demo folder; one day of validity
    is ample for a demo or a test run. The certificate is its own trust anchor, so clients pass
    the certificate file as their CA file and keep verification and hostname checks on, exactly
    as against the real DSH. Returns ``(cert_file, key_file)``; the key file is mode 0600.
    """
    folder = Path(cert_dir)
    folder.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "PIXL local DSH stand-in"),
            x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "localhost"),
        ]
    )
    alt_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    subject_key_id = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + valid_for)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(subject_key_id, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(subject_key_id),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file = folder / CERT_FILE_NAME
    key_file = folder / KEY_FILE_NAME
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    # Create the key file with 0600 from the start rather than chmod-ing it afterwards.
    descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_file, key_file


def _session_reused(connection: Any) -> bool | None:
    """Whether an OpenSSL connection resumed an earlier session; None if that cannot be told.

    pyOpenSSL has no public call for ``SSL_session_reused``, so this uses its cffi binding and
    degrades to "unknown" (no enforcement) if a future pyOpenSSL hides it.
    """
    try:
        from OpenSSL.SSL import _lib  # type: ignore[attr-defined]

        return bool(_lib.SSL_session_reused(connection._ssl))
    except (ImportError, AttributeError):
        return None


class _SessionReuseCheckingDTPHandler(TLS_DTPHandler):
    """TLS data channel that, like vsftpd, refuses connections not resuming the control session.

    Without this, a client that forgets session reuse passes every local test and fails only
    against the real DSH.
    """

    def handle_ssl_established(self) -> None:
        reused = _session_reused(self.socket)
        if reused is False:
            logger.warning("refused a TLS data connection that did not reuse the session")
            self._resp = (_SESSION_REUSE_REFUSAL, logger.warning)
            self.transfer_finished = False
            # Skip the TLS shutdown dance: the transfer is refused, close at once.
            self._error = True
            self.close()


class _ImplicitTlsHandlerMixin:
    """Start TLS as soon as the client connects (implicit FTPS, usually port 990)."""

    def handle(self) -> None:
        self.secure_connection(self.ssl_context)  # type: ignore[attr-defined]
        super().handle()  # type: ignore[misc]


def build_server(
    root: str | os.PathLike[str],
    user: str,
    password: str,
    cert_dir: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 0,
    passive_ports: Sequence[int] | None = None,
    implicit_tls: bool = False,
    require_session_reuse: bool = True,
    auth_failed_timeout: float = 0.2,
) -> tuple[FTPServer, Path]:
    """Build (not start) the TLS-only FTP server; returns ``(server, ca_file)``.

    Handler settings are class attributes in pyftpdlib, so each server gets its own handler
    subclasses: two servers in one process (tests) never share a certificate or a user.
    ``auth_failed_timeout`` is pyftpdlib's delay after a bad password (3 s by default); it is
    short here because the stand-in only ever faces local clients and tests.
    """
    home = Path(root)
    home.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = generate_certificate(cert_dir, hosts=_hosts_for(host))
    authorizer = DummyAuthorizer()
    authorizer.add_user(user, password, str(home), perm=_ALL_PERMISSIONS)

    dtp_base: type = _SessionReuseCheckingDTPHandler if require_session_reuse else TLS_DTPHandler
    dtp_handler = type("DshDTPHandler", (dtp_base,), {})
    bases: tuple[type, ...] = (TLS_FTPHandler,)
    if implicit_tls:
        bases = (_ImplicitTlsHandlerMixin, TLS_FTPHandler)
    handler = type(
        "DshFtpsHandler",
        bases,
        {
            "certfile": str(cert_file),
            "keyfile": str(key_file),
            "ssl_context": None,
            "tls_control_required": True,
            "tls_data_required": True,
            "authorizer": authorizer,
            "dtp_handler": dtp_handler,
            "passive_ports": list(passive_ports) if passive_ports else None,
            "auth_failed_timeout": auth_failed_timeout,
            "banner": "PIXL local DSH stand-in (FTPS only).",
            "permit_foreign_addresses": False,
        },
    )
    # Build the TLS context now so a bad certificate fails at start, not at the first client.
    handler.get_ssl_context()
    server = FTPServer((host, port), handler)
    return server, cert_file


def build_plain_server(
    root: str | os.PathLike[str],
    user: str,
    password: str,
    host: str = "127.0.0.1",
    port: int = 0,
) -> FTPServer:
    """A plain-FTP server (no TLS at all), only so tests can prove the client refuses it."""
    home = Path(root)
    home.mkdir(parents=True, exist_ok=True)
    authorizer = DummyAuthorizer()
    authorizer.add_user(user, password, str(home), perm=_ALL_PERMISSIONS)
    handler = type(
        "PlainFtpHandler", (FTPHandler,), {"authorizer": authorizer, "auth_failed_timeout": 0.2}
    )
    return FTPServer((host, port), handler)


def _hosts_for(host: str) -> tuple[str, ...]:
    """Names to put in the certificate: the bind address (unless a wildcard) plus loopback."""
    names = [host] if host not in ("", "0.0.0.0", "::") else []
    names += [name for name in DEFAULT_HOSTS if name not in names]
    return tuple(names)


@dataclass
class ServerHandle:
    """A server running on a background thread; ``stop()`` closes it and every connection."""

    server: FTPServer
    host: str
    port: int
    ca_file: Path | None
    root: Path
    _thread: threading.Thread = field(repr=False)
    _stop: threading.Event = field(repr=False)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and wait for the thread; safe to call twice."""
        self._stop.set()
        self._thread.join(timeout)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _run_in_thread(server: FTPServer, ca_file: Path | None, root: Path) -> ServerHandle:
    """Serve in short non-blocking slices so a stop request is seen within ~50 ms.

    pyftpdlib's IO loop is not thread-safe, so ``close_all`` runs on the serving thread itself.
    """
    stop = threading.Event()

    def serve() -> None:
        try:
            while not stop.is_set():
                server.serve_forever(timeout=0.05, blocking=False, handle_exit=False)
        finally:
            server.close_all()

    thread = threading.Thread(target=serve, name="dsh-ftps", daemon=True)
    host, port = server.address[:2]
    thread.start()
    return ServerHandle(server, host, port, ca_file, root, thread, stop)


def start_in_thread(
    root: str | os.PathLike[str],
    user: str,
    password: str,
    cert_dir: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 0,
    passive_ports: Sequence[int] | None = None,
    implicit_tls: bool = False,
    require_session_reuse: bool = True,
) -> ServerHandle:
    """Start the TLS-only stand-in on a background thread (port 0 picks a free port).

    The handle's ``port`` is the bound port and ``ca_file`` the certificate to trust.
    """
    server, ca_file = build_server(
        root,
        user,
        password,
        cert_dir,
        host=host,
        port=port,
        passive_ports=passive_ports,
        implicit_tls=implicit_tls,
        require_session_reuse=require_session_reuse,
    )
    return _run_in_thread(server, ca_file, Path(root))


def start_plain_in_thread(
    root: str | os.PathLike[str], user: str, password: str, host: str = "127.0.0.1", port: int = 0
) -> ServerHandle:
    """Start a plain-FTP server on a background thread; for refusal tests only."""
    server = build_plain_server(root, user, password, host=host, port=port)
    return _run_in_thread(server, None, Path(root))


def _parse_port_range(text: str) -> list[int]:
    """Parse ``MIN-MAX`` into the list of passive ports."""
    low, sep, high = text.partition("-")
    try:
        first, last = int(low), int(high if sep else low)
    except ValueError:
        raise argparse.ArgumentTypeError("expected MIN-MAX, e.g. 30000-30009") from None
    if not 0 < first <= last < 65536:
        raise argparse.ArgumentTypeError("expected 0 < MIN <= MAX < 65536")
    return list(range(first, last + 1))


def _argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stack.standins.dsh_ftps",
        description="Local TLS-only FTP server standing in for the Data Safe Haven.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=2121, help="control port")
    parser.add_argument("--root", required=True, help="folder the user's uploads land in")
    parser.add_argument("--user", required=True, help="the one FTP user name")
    parser.add_argument(
        "--password-env",
        required=True,
        metavar="VAR",
        help="name of the environment variable holding the password (never on the command line)",
    )
    parser.add_argument(
        "--cert-dir", required=True, help=f"where to write {CERT_FILE_NAME} (the CA file) and key"
    )
    parser.add_argument("--passive-ports", type=_parse_port_range, default=None, metavar="MIN-MAX")
    parser.add_argument("--implicit-tls", action="store_true", help="TLS from connect (FTPS 990)")
    parser.add_argument(
        "--no-require-session-reuse",
        dest="require_session_reuse",
        action="store_false",
        help="accept data connections that do not resume the control TLS session",
    )
    return parser


def _serve_until_signalled(server: FTPServer) -> None:
    """Serve in short slices until SIGTERM or SIGINT, then close every connection.

    The handler only sets a flag: an exception raised from it lands wherever the main thread
    happens to be, and pyftpdlib's handlers log and swallow errors raised inside a TLS
    handshake or a transfer, which once left the process running after SIGTERM.
    """
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        while not stop.is_set():
            server.serve_forever(timeout=0.1, blocking=False, handle_exit=False)
    finally:
        server.close_all()


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    args = _argument_parser().parse_args(argv)
    password = os.environ.get(args.password_env)
    if not password:
        print(
            f"error: {args.password_env} is not set; export it with the DSH user's password",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server, ca_file = build_server(
        args.root,
        args.user,
        password,
        args.cert_dir,
        host=args.host,
        port=args.port,
        passive_ports=args.passive_ports,
        implicit_tls=args.implicit_tls,
        require_session_reuse=args.require_session_reuse,
    )
    host, port = server.address[:2]
    logger.info("DSH stand-in listening on %s:%d; CA file %s", host, port, ca_file)
    _serve_until_signalled(server)
    logger.info("DSH stand-in stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
