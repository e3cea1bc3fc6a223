"""FTPS client that pushes de-identified files to the Data Safe Haven (DSH).

The DSH accepts FTPS only, so this client never speaks plain FTP: explicit TLS (``AUTH TLS``)
by default or implicit TLS, certificate and hostname verification on, ``PROT P`` on every data
connection, passive mode.

Why not stock :class:`ftplib.FTP_TLS`: it opens each data connection with a fresh TLS session.
vsftpd (the usual DSH server) by default requires the data connection to resume the control
connection's session (``require_ssl_reuse=YES``) and answers ``522 SSL connection failed:
session reuse required`` after having created an empty file. :class:`_SessionReusingFtpTls`
passes the control session when wrapping the data socket.

Uploads go to a temporary name (``.<name>.part``) in the target folder and are renamed once
complete, so the DSH never shows a half-written file under its final name. Connection and
temporary failures are retried with exponential backoff on a fresh connection; permanent ones
(a refused login, a 5xx reply, an untrusted certificate) are raised at once.

Each project names its own server in ``projects/<slug>.yaml`` (``destination: ftps:``);
:meth:`FtpsSettings.for_project` is the one place that turns a project and the environment
(its secrets) into settings, for the image exporter and the report export alike.

Error messages name only ``host:port``, the FTP step that failed and a reply code or error
class, never a path or a server reply text, which could echo a file name.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import logging
import os
import posixpath
import re
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from pixl_core.env import env_number
from pixl_core.errors import PixlConfigError, PixlError

if TYPE_CHECKING:
    from pixl_core.config.projects import Project

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Longest pause between two attempts, whatever the backoff and attempt number.
MAX_BACKOFF_SECONDS = 60.0
_BLOCK_SIZE = 64 * 1024
# Replies meaning "this server does not implement that command", as opposed to "no such file".
_NOT_IMPLEMENTED = frozenset({"500", "502", "504"})
PASSWORD_VARIABLE = "PIXL_DSH_PASSWORD"
CA_FILE_VARIABLE = "PIXL_DSH_CA_FILE"


def project_variable(name: str, slug: str) -> str:
    """The per-project form of an environment variable: ``PIXL_DSH_PASSWORD__CHEST_XRAY``."""
    return f"{name}__{slug.upper().replace('-', '_')}"


class FtpsError(PixlError):
    """An FTPS step failed; the message names host:port, the step and the reason only.

    ``transient`` tells whether trying again later may succeed; ``reply_code`` is the FTP reply
    code when the server answered with an error; ``code`` (as for every ``PixlError``) is the
    short error code a work item records, ``ftps_<step>``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        step: str,
        reason: str,
        *,
        transient: bool = False,
        reply_code: str | None = None,
        attempts: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.step = step
        self.reason = reason
        self.transient = transient
        self.reply_code = reply_code
        self.attempts = attempts
        message = f"FTPS {host}:{port}: {step} failed: {reason}"
        if attempts is not None and attempts > 1:
            message += f" (gave up after {attempts} attempts)"
        short_step = "".join(c if c.isalnum() else "_" for c in step.lower())
        super().__init__(message, code=f"ftps_{short_step}"[:60])

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle by keyword so errors survive crossing process boundaries (worker pools)."""
        keywords = {
            "transient": self.transient,
            "reply_code": self.reply_code,
            "attempts": self.attempts,
        }
        return (partial(FtpsError, **keywords), (self.host, self.port, self.step, self.reason))


@dataclass(frozen=True)
class FtpsSettings:
    """Where and how to reach the DSH FTPS server.

    ``remote_root`` is the folder every remote path is relative to. ``verify=False`` switches
    certificate checks off and exists only for diagnosing a misconfigured server; use
    ``ca_file`` to trust a private CA instead. ``retries`` is the number of further attempts
    after the first one fails transiently; the pause before attempt n+1 is
    ``backoff_seconds * 2**(n-1)``, capped at a minute.
    """

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    remote_root: str = "/"
    implicit_tls: bool = False
    ca_file: str | None = None
    verify: bool = True
    timeout: float = 30.0
    retries: int = 3
    backoff_seconds: float = 1.0

    def __post_init__(self) -> None:
        if not self.host:
            raise PixlConfigError("FTPS settings: host is empty; set the DSH FTPS host name")
        if not 0 < self.port < 65536:
            raise PixlConfigError("FTPS settings: port must be between 1 and 65535")
        if not self.timeout > 0:
            raise PixlConfigError("FTPS settings: timeout must be a positive number of seconds")
        if self.retries < 0:
            raise PixlConfigError("FTPS settings: retries must be 0 or more")
        if self.backoff_seconds < 0:
            raise PixlConfigError("FTPS settings: backoff_seconds must be 0 or more")
        if not self.remote_root.startswith("/"):
            raise PixlConfigError("FTPS settings: remote_root must be an absolute path")

    @classmethod
    def for_project(
        cls, project: Project, environ: Mapping[str, str] | None = None
    ) -> FtpsSettings:
        """Settings for ``project``'s destination: the one place FTPS settings are built.

        Where files go (host, port, user, root, TLS mode, verification) is read from the project
        file, which a reviewer sees. What must not be in a repository comes from the
        environment, per project first, then global: ``PIXL_DSH_PASSWORD__<SLUG>`` then
        ``PIXL_DSH_PASSWORD`` (``<SLUG>`` is the slug upper-cased with ``-`` as ``_``:
        ``PIXL_DSH_PASSWORD__CHEST_XRAY``). The CA file is a deployment path, so it is looked up
        most specific first: ``PIXL_DSH_CA_FILE__<SLUG>``, the file's ``ca_file:``,
        ``PIXL_DSH_CA_FILE``, else the system CAs. Tuning is global: ``PIXL_DSH_TIMEOUT``,
        ``PIXL_DSH_RETRIES``, ``PIXL_DSH_BACKOFF_SECONDS``.

        A project without ``destination:`` is refused rather than sent to a server its file
        does not name: fail closed, and the project file stays the truth about where data goes.
        """
        env: Mapping[str, str] = os.environ if environ is None else environ
        slug, destination = project.slug, project.destination
        if destination is None and project.dicomweb is not None:
            raise PixlConfigError(
                f"projects/{slug}.yaml sends images by 'destination: dicomweb:' but names no "
                "server for its files (radiology parquet, OMOP public files); add "
                "'ftps: {host, port, user, root}' beside 'dicomweb:'",
                code="no_destination",
            )
        if destination is None:
            raise PixlConfigError(
                f"projects/{slug}.yaml has no 'destination:'; add "
                "destination: {ftps: {host, port, user, root}} naming the project's DSH server",
                code="no_destination",
            )
        own_password = project_variable(PASSWORD_VARIABLE, slug)
        _, password = _first_given(
            (own_password, env.get(own_password)), (PASSWORD_VARIABLE, env.get(PASSWORD_VARIABLE))
        )
        if password is None:
            raise PixlConfigError(
                f"neither {own_password} nor {PASSWORD_VARIABLE} is set: export one with the "
                f"password of project {slug}'s DSH FTPS account (read only from the environment)",
                code="dsh_password_missing",
            )
        own_ca_file = project_variable(CA_FILE_VARIABLE, slug)
        ca_source, ca_file = _first_given(
            (own_ca_file, (env.get(own_ca_file) or "").strip()),
            (f"projects/{slug}.yaml 'ca_file:'", destination.ca_file),
            (CA_FILE_VARIABLE, (env.get(CA_FILE_VARIABLE) or "").strip()),
        )
        if ca_file is not None and not Path(ca_file).is_file():
            raise PixlConfigError(
                f"{ca_source} names no file: set it to the PEM file of the CA that signed "
                f"project {slug}'s DSH certificate, or unset it to use the system CAs",
                code="dsh_ca_file_missing",
            )
        return cls(
            host=destination.host,
            port=destination.port,
            user=destination.user,
            password=password,
            remote_root=destination.root,
            implicit_tls=destination.implicit_tls,
            ca_file=ca_file,
            verify=destination.verify,
            timeout=env_number("PIXL_DSH_TIMEOUT", 30.0, float, environ=env, positive=True),
            retries=env_number("PIXL_DSH_RETRIES", 3, int, environ=env),
            backoff_seconds=env_number("PIXL_DSH_BACKOFF_SECONDS", 1.0, float, environ=env),
        )

    def ssl_context(self) -> ssl.SSLContext:
        """TLS 1.2+ client context: the given CA file (else the system CAs), hostname checked.

        With ``verify=False`` (a project file's ``verify: false``) every call, so every
        connection, logs a warning: the server is not authenticated, and the DSH password and
        the files could go to whoever answers at that address.
        """
        if self.verify:
            context = ssl.create_default_context(cafile=self.ca_file)
        else:
            logger.warning(
                "TLS verification OFF for FTPS %s:%d (verify: false in the project file): the "
                "server's certificate and name are not checked, so the DSH password and files "
                "may go to an impostor; remove verify: false once the server is fixed",
                self.host,
                self.port,
            )
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


def _first_given(*candidates: tuple[str, str | None]) -> tuple[str | None, str | None]:
    """``(source, value)`` of the first candidate with a non-empty value, else (None, None)."""
    for source, value in candidates:
        if value:
            return source, value
    return None, None


class _SessionReusingFtpTls(ftplib.FTP_TLS):
    """FTP_TLS whose data connections resume the control connection's TLS session.

    Servers such as vsftpd (``require_ssl_reuse=YES``) refuse data connections that do not, as
    a guard against a third party connecting to the passive port first.
    """

    def ntransfercmd(self, cmd: str, rest: int | str | None = None) -> tuple[socket.socket, int]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:  # type: ignore[attr-defined]
            try:
                conn = self.context.wrap_socket(  # type: ignore[attr-defined]
                    conn,
                    server_hostname=self.host,
                    session=self.sock.session,  # type: ignore[union-attr]
                )
            except BaseException:
                conn.close()
                raise
        return conn, size


class _ImplicitFtpTls(_SessionReusingFtpTls):
    """Implicit FTPS: the control connection is TLS from its first byte (usually port 990)."""

    def connect(
        self,
        host: str = "",
        port: int = 0,
        timeout: float = -999,
        source_address: tuple[str, int] | None = None,
    ) -> str:
        if host:
            self.host = host
        if port > 0:
            self.port = port
        if timeout != -999:
            self.timeout = timeout
        if source_address is not None:
            self.source_address = source_address
        raw = socket.create_connection(
            (self.host, self.port), self.timeout, source_address=self.source_address
        )
        try:
            self.sock = self.context.wrap_socket(  # type: ignore[attr-defined]
                raw, server_hostname=self.host
            )
        except BaseException:
            raw.close()
            raise
        self.af = self.sock.family
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome


def _reply_code(exc: BaseException) -> str | None:
    """The three-digit FTP reply code of an ftplib error, if it carries one."""
    text = str(exc)
    return text[:3] if re.fullmatch(r"\d{3}", text[:3]) else None


def _describe(exc: BaseException, timeout: float) -> tuple[str, bool, str | None]:
    """``(reason, transient, code)`` for an exception, with no server text or path in reason."""
    if isinstance(exc, ftplib.error_temp):
        code = _reply_code(exc)
        return f"server replied {code or '4xx'}", True, code
    if isinstance(exc, ftplib.error_perm):
        code = _reply_code(exc)
        return f"server replied {code or '5xx'}", False, code
    if isinstance(exc, ftplib.error_reply):
        return f"unexpected reply {_reply_code(exc) or ''}".rstrip(), True, _reply_code(exc)
    if isinstance(exc, ftplib.error_proto):
        return "malformed reply", True, None
    if isinstance(exc, ssl.SSLCertVerificationError):
        # Retrying cannot make an untrusted certificate trusted.
        return f"certificate verification failed ({exc.verify_message})", False, None
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({exc.reason or type(exc).__name__})", True, None
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout:g} s", True, None
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused", True, None
    if isinstance(exc, socket.gaierror):
        return "host name not resolved", True, None
    if isinstance(exc, EOFError):
        return "connection closed by server", True, None
    if isinstance(exc, OSError):
        return (exc.strerror or type(exc).__name__), True, None
    return type(exc).__name__, False, None


class FtpsClient:
    """A connection to the DSH FTPS server; use as a context manager.

    Remote paths are relative to ``settings.remote_root`` (a leading ``/`` is ignored, ``..`` is
    refused). One client holds one control connection and is not thread-safe.
    """

    def __init__(self, settings: FtpsSettings) -> None:
        self.settings = settings
        self._ftp: ftplib.FTP_TLS | None = None
        self._step = "connect"
        self._known_dirs: set[str] = set()

    # --- connection -------------------------------------------------------------------------

    def __enter__(self) -> FtpsClient:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def connect(self) -> None:
        """Open, secure and log in the control connection now (with retries) if not already."""
        self._with_retries(lambda ftp: None)

    def close(self) -> None:
        """Say goodbye politely if the connection still works; close it regardless."""
        ftp, self._ftp = self._ftp, None
        if ftp is None:
            return
        try:
            ftp.quit()
        except (*ftplib.all_errors, ValueError):
            pass
        finally:
            ftp.close()

    def _open(self) -> ftplib.FTP_TLS:
        """Connect, secure the control channel, log in, protect data channels, binary mode."""
        settings = self.settings
        factory = _ImplicitFtpTls if settings.implicit_tls else _SessionReusingFtpTls
        ftp = factory(context=settings.ssl_context(), timeout=settings.timeout)
        try:
            self._step = "connect"
            ftp.connect(settings.host, settings.port, timeout=settings.timeout)
            if not settings.implicit_tls:
                self._step = "AUTH TLS"
                try:
                    ftp.auth()
                except ftplib.error_perm as exc:
                    # Never fall back to plain FTP: the DSH accepts FTPS only.
                    raise self._error(
                        "server does not accept AUTH TLS; refusing plain FTP",
                        reply_code=_reply_code(exc),
                    ) from None
            self._step = "login"
            ftp.login(settings.user, settings.password)
            self._step = "PROT P"
            ftp.prot_p()
            ftp.set_pasv(True)
            self._step = "TYPE I"
            ftp.voidcmd("TYPE I")
        except BaseException:
            ftp.close()
            raise
        return ftp

    def _connection(self) -> ftplib.FTP_TLS:
        if self._ftp is None:
            self._known_dirs.clear()
            self._ftp = self._open()
        return self._ftp

    def _drop(self) -> None:
        """Forget a connection that may be in an unknown state; the next attempt reconnects."""
        ftp, self._ftp = self._ftp, None
        if ftp is not None:
            ftp.close()

    def _error(
        self,
        reason: str,
        *,
        transient: bool = False,
        reply_code: str | None = None,
        attempts: int | None = None,
        step: str | None = None,
    ) -> FtpsError:
        return FtpsError(
            self.settings.host,
            self.settings.port,
            step or self._step,
            reason,
            transient=transient,
            reply_code=reply_code,
            attempts=attempts,
        )

    def _with_retries(
        self, operation: Callable[[ftplib.FTP_TLS], T], retries: int | None = None
    ) -> T:
        """Run ``operation`` on a live connection, retrying transient failures from scratch.

        The operation must be safe to repeat (uploads are: they rewrite the temporary name).
        ``retries`` overrides the settings, e.g. 0 for an operation that cannot be repeated.
        """
        attempts = (self.settings.retries if retries is None else retries) + 1
        for attempt in range(1, attempts + 1):
            try:
                return operation(self._connection())
            except FtpsError as exc:
                error = exc
            except ftplib.all_errors as exc:
                reason, transient, code = _describe(exc, self.settings.timeout)
                error = self._error(reason, transient=transient, reply_code=code)
            if error.transient or self._ftp is None or error.step in ("connect", "login"):
                self._drop()
            if not error.transient or attempt == attempts:
                if attempt > 1:
                    error = self._error(
                        error.reason,
                        transient=error.transient,
                        reply_code=error.reply_code,
                        attempts=attempt,
                        step=error.step,
                    )
                raise error from None
            delay = min(self.settings.backoff_seconds * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS)
            logger.warning(
                "FTPS %s:%d: %s failed (%s); retry %d of %d in %.2f s",
                self.settings.host,
                self.settings.port,
                error.step,
                error.reason,
                attempt,
                attempts - 1,
                delay,
            )
            time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    # --- paths ------------------------------------------------------------------------------

    def _absolute(self, remote_path: str) -> str:
        """Map a path relative to the remote root onto the server's absolute path."""
        parts = [part for part in PurePosixPath(remote_path).parts if part not in ("/", ".")]
        if ".." in parts:
            raise ValueError("remote paths must not contain '..'")
        return str(PurePosixPath(self.settings.remote_root, *parts))

    def _is_dir(self, ftp: ftplib.FTP_TLS, path: str) -> bool:
        self._step = "CWD"
        try:
            ftp.cwd(path)
        except ftplib.error_perm:
            return False
        return True

    def _make_dirs(self, ftp: ftplib.FTP_TLS, folder: str) -> None:
        """Create ``folder`` and its parents, one MKD per level; existing ones are fine.

        Servers word "already exists" differently (vsftpd says only "550 Create directory
        operation failed"), so a refused MKD is accepted when CWD shows the folder is there.
        """
        current = "/"
        for part in PurePosixPath(folder).parts[1:]:
            current = posixpath.join(current, part)
            if current in self._known_dirs:
                continue
            self._step = "MKD"
            try:
                ftp.mkd(current)
            except ftplib.error_perm as exc:
                if not self._is_dir(ftp, current):
                    raise self._error(
                        f"server replied {_reply_code(exc) or '5xx'}",
                        reply_code=_reply_code(exc),
                        step="MKD",
                    ) from None
            self._known_dirs.add(current)

    def _size(self, ftp: ftplib.FTP_TLS, path: str) -> int | None:
        """SIZE (binary mode is set at login), else the MLST size fact; None if not a file."""
        self._step = "SIZE"
        try:
            return ftp.size(path)
        except ftplib.error_perm as exc:
            if _reply_code(exc) not in _NOT_IMPLEMENTED:
                return None
        self._step = "MLST"
        try:
            reply = ftp.sendcmd(f"MLST {path}")
        except ftplib.error_perm:
            return None
        facts = reply.splitlines()[1] if len(reply.splitlines()) > 1 else ""
        if not re.search(r"(?i)(^|;)\s*type=file;", facts):
            return None
        match = re.search(r"(?i)(?:^|;)\s*size=(\d+);", facts)
        return int(match.group(1)) if match else None

    # --- public operations ------------------------------------------------------------------

    def upload_bytes(
        self, remote_path: str, data: bytes | bytearray | memoryview | BinaryIO
    ) -> None:
        """Upload ``data`` (bytes or a binary file object) to ``remote_path``.

        Parent folders are created; the data goes to ``.<name>.part`` first and is renamed once
        the server reports the full size, replacing any earlier file of that name. A file object
        is read from its current position; if it cannot seek, a failure is not retried.
        """
        target = self._absolute(remote_path)
        folder, name = posixpath.split(target)
        if not name:
            raise ValueError("remote path names no file")
        temporary = posixpath.join(folder, f".{name}.part")
        stream: BinaryIO = (
            io.BytesIO(bytes(data)) if isinstance(data, bytes | bytearray | memoryview) else data
        )
        start = stream.tell() if stream.seekable() else None

        def upload(ftp: ftplib.FTP_TLS) -> None:
            if start is not None:
                stream.seek(start)
            self._make_dirs(ftp, folder)
            sent = 0

            def count(block: bytes) -> None:
                nonlocal sent
                sent += len(block)

            self._step = "STOR"
            ftp.storbinary(f"STOR {temporary}", stream, blocksize=_BLOCK_SIZE, callback=count)
            stored = self._size(ftp, temporary)
            if stored is not None and stored != sent:
                raise self._error(
                    f"server holds {stored} of {sent} bytes", transient=True, step="STOR"
                )
            self._step = "RNFR/RNTO"
            try:
                ftp.rename(temporary, target)
            except ftplib.error_perm:
                # Some servers refuse to rename over an existing file: remove it, then rename.
                if self._size(ftp, target) is None:
                    raise
                self._step = "DELE"
                ftp.delete(target)
                self._step = "RNFR/RNTO"
                ftp.rename(temporary, target)

        try:
            # A stream that cannot seek back cannot be sent twice: one attempt only.
            self._with_retries(upload, retries=None if start is not None else 0)
        except FtpsError:
            self._remove_quietly(temporary)
            raise

    def complete_upload(self, remote_path: str, size: int) -> bool:
        """Finish an upload whose data arrived whole but whose rename never happened (the sender
        died between the two): if ``.<name>.part`` holds exactly ``size`` bytes, rename it to
        ``remote_path`` and return True; otherwise change nothing and return False.

        Only for content that is the same every time it is made (a deterministic zip), where the
        same size means the same bytes: the data is then not sent a second time.
        """
        target = self._absolute(remote_path)
        folder, name = posixpath.split(target)
        temporary = posixpath.join(folder, f".{name}.part")

        def finish(ftp: ftplib.FTP_TLS) -> bool:
            if self._size(ftp, temporary) != size:
                return False
            self._step = "RNFR/RNTO"
            ftp.rename(temporary, target)
            return True

        return self._with_retries(finish)

    def upload_file(self, remote_path: str, local_path: str | os.PathLike[str]) -> None:
        """Upload a local file to ``remote_path`` (see :meth:`upload_bytes`)."""
        with open(local_path, "rb") as handle:
            self.upload_bytes(remote_path, handle)

    def _remove_quietly(self, path: str) -> None:
        """Best effort: do not leave a temporary file behind after giving up."""
        if self._ftp is None:
            return
        try:
            self._ftp.delete(path)
        except (*ftplib.all_errors, ValueError):
            pass

    def read_bytes(self, remote_path: str) -> bytes | None:
        """The content of the (small) file at ``remote_path``; None if there is no such file.

        For files PIXL wrote itself and reads back whole, such as an export's manifest.
        """
        path = self._absolute(remote_path)

        def read(ftp: ftplib.FTP_TLS) -> bytes | None:
            if self._size(ftp, path) is None:
                return None
            buffer = io.BytesIO()
            self._step = "RETR"
            ftp.retrbinary(f"RETR {path}", buffer.write)
            return buffer.getvalue()

        return self._with_retries(read)

    def sha256(
        self, remote_path: str, on_block: Callable[[int], None] | None = None
    ) -> tuple[str, int] | None:
        """``(SHA-256 hex digest, bytes)`` of the file at ``remote_path``, read as a stream (a
        zip is never held whole); None if there is no such file. ``on_block`` is called with
        the size of each block read (a progress bar). A retried read starts the digest again.
        """
        path = self._absolute(remote_path)

        def digest(ftp: ftplib.FTP_TLS) -> tuple[str, int] | None:
            if self._size(ftp, path) is None:
                return None
            hasher = hashlib.sha256()
            size = 0

            def block(data: bytes) -> None:
                nonlocal size
                hasher.update(data)
                size += len(data)
                if on_block is not None:
                    on_block(len(data))

            self._step = "RETR"
            ftp.retrbinary(f"RETR {path}", block, blocksize=_BLOCK_SIZE)
            return hasher.hexdigest(), size

        return self._with_retries(digest)

    def delete(self, remote_path: str) -> bool:
        """Delete the file at ``remote_path``; False if there was none. For a file PIXL wrote
        that turned out corrupt on the DSH (``pixl verify --requeue``)."""
        path = self._absolute(remote_path)

        def remove(ftp: ftplib.FTP_TLS) -> bool:
            if self._size(ftp, path) is None:
                return False
            self._step = "DELE"
            ftp.delete(path)
            return True

        return self._with_retries(remove)

    def exists(self, remote_path: str) -> bool:
        """Whether a file or folder exists at ``remote_path``."""
        path = self._absolute(remote_path)
        return self._with_retries(
            lambda ftp: self._size(ftp, path) is not None or self._is_dir(ftp, path)
        )

    def size(self, remote_path: str) -> int | None:
        """Size in bytes of the file at ``remote_path``; None if there is no such file."""
        path = self._absolute(remote_path)
        return self._with_retries(lambda ftp: self._size(ftp, path))

    def list_dir(self, remote_path: str = "") -> list[str]:
        """Sorted names (not paths) in the folder ``remote_path``, without ``.`` and ``..``."""
        path = self._absolute(remote_path)

        def listing(ftp: ftplib.FTP_TLS) -> list[str]:
            self._step = "MLSD"
            try:
                # No facts requested: that would send OPTS MLST, which vsftpd rejects.
                names = [name for name, _facts in ftp.mlsd(path)]
            except ftplib.error_perm as exc:
                if _reply_code(exc) not in _NOT_IMPLEMENTED:
                    raise
                self._step = "NLST"
                names = [posixpath.basename(entry.rstrip("/")) for entry in ftp.nlst(path)]
            # ftplib lists in ASCII mode (TYPE A) and leaves the connection there, where SIZE
            # is refused (550): back to binary, as every other step of this client expects.
            self._step = "TYPE I"
            ftp.voidcmd("TYPE I")
            return sorted(name for name in names if name not in ("", ".", ".."))

        return self._with_retries(listing)
