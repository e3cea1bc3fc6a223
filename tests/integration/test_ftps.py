"""The FTPS client against real servers: the pyftpdlib DSH stand-in, and vsftpd.

The vsftpd tests are the regression tests for TLS session reuse: stock ``ftplib.FTP_TLS`` fails
there with ``522 ... session reuse required``, and PIXL's client must not.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import pickle
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pixl_core.errors import PixlError
from pixl_core.transport import ftps
from pixl_core.transport.ftps import FtpsClient, FtpsError, FtpsSettings
from stack.standins.dsh_ftps import CERT_FILE_NAME, generate_certificate

if TYPE_CHECKING:
    from tests.fixtures.ftps import FtpServerInfo

# Declared here rather than in a conftest so this module runs whatever tests/conftest.py holds.

REPO_ROOT = Path(__file__).resolve().parents[2]
PAYLOAD = os.urandom(300_000) + b"\x00\r\n\x1a" * 1000  # several blocks; bytes ASCII mode mangles


def _files_under(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def _stock_ftps_upload(server: FtpServerInfo, remote_path: str) -> None:
    """Upload with stock ftplib.FTP_TLS (no session reuse on the data connection)."""
    context = ssl.create_default_context(cafile=str(server.ca_file))
    stock = ftplib.FTP_TLS(context=context, timeout=5)
    try:
        stock.connect(server.host, server.port)
        stock.login(server.user, server.password)
        stock.prot_p()
        stock.storbinary(f"STOR {remote_path}", io.BytesIO(b"x" * 1000))
    finally:
        stock.close()


# --- the DSH stand-in (pyftpdlib, TLS required, session reuse required) ------------------


def test_upload_arrives_byte_for_byte_in_nested_folders(dsh_ftps_server: FtpServerInfo) -> None:
    with FtpsClient(dsh_ftps_server.settings()) as client:
        client.upload_bytes("project/extract-1/images/study.zip", PAYLOAD)
        client.upload_bytes("/project/extract-1/omop/public.parquet", io.BytesIO(b"parquet"))

    root = dsh_ftps_server.root
    assert (root / "project/extract-1/images/study.zip").read_bytes() == PAYLOAD
    assert (root / "project/extract-1/omop/public.parquet").read_bytes() == b"parquet"
    assert _files_under(root) == [
        "project/extract-1/images/study.zip",
        "project/extract-1/omop/public.parquet",
    ]  # no .part file left behind


def test_upload_file_and_overwrite(dsh_ftps_server: FtpServerInfo, tmp_path: Path) -> None:
    local = tmp_path / "local.bin"
    local.write_bytes(PAYLOAD)
    with FtpsClient(dsh_ftps_server.settings()) as client:
        client.upload_bytes("out/file.bin", b"an earlier, longer version of the file" * 10)
        client.upload_file("out/file.bin", local)
    assert (dsh_ftps_server.root / "out/file.bin").read_bytes() == PAYLOAD
    assert _files_under(dsh_ftps_server.root) == ["out/file.bin"]


def test_a_whole_part_file_left_by_a_crash_is_renamed_not_sent_again(
    dsh_ftps_server: FtpServerInfo,
) -> None:
    """The sender died between the upload of ``.<name>.part`` and its rename: the retry renames
    a part file of the expected size, and leaves one of another size (a cut upload) alone."""
    root = dsh_ftps_server.root
    (root / "out").mkdir()
    (root / "out/.whole.zip.part").write_bytes(PAYLOAD)
    (root / "out/.cut.zip.part").write_bytes(PAYLOAD[:-1])
    with FtpsClient(dsh_ftps_server.settings()) as client:
        assert client.complete_upload("out/whole.zip", len(PAYLOAD))
        assert not client.complete_upload("out/cut.zip", len(PAYLOAD))
        assert not client.complete_upload("out/none.zip", len(PAYLOAD))
    assert (root / "out/whole.zip").read_bytes() == PAYLOAD
    assert _files_under(root) == ["out/.cut.zip.part", "out/whole.zip"]


def test_exists_size_and_list_dir(dsh_ftps_server: FtpServerInfo) -> None:
    with FtpsClient(dsh_ftps_server.settings()) as client:
        client.upload_bytes("a/b/one.bin", b"12345")
        client.upload_bytes("a/b/two.bin", b"")
        assert client.exists("a/b/one.bin")
        assert client.exists("a/b")
        assert not client.exists("a/b/missing.bin")
        assert client.size("a/b/one.bin") == 5
        assert client.size("a/b/two.bin") == 0
        assert client.size("a/b/missing.bin") is None
        assert client.size("a/b") is None
        assert client.list_dir("a/b") == ["one.bin", "two.bin"]
        assert client.list_dir("/") == ["a"]


def test_read_bytes_returns_the_file_or_none(dsh_ftps_server: FtpServerInfo) -> None:
    with FtpsClient(dsh_ftps_server.settings(remote_root="/incoming")) as client:
        client.upload_bytes("project/manifest.json", PAYLOAD)
        assert client.read_bytes("project/manifest.json") == PAYLOAD
        assert client.read_bytes("/project/manifest.json") == PAYLOAD
        assert client.read_bytes("project/absent.json") is None
        assert client.read_bytes("project") is None  # a folder is not a file
        client.upload_bytes("project/empty.json", b"")
        assert client.read_bytes("project/empty.json") == b""
    assert _files_under(dsh_ftps_server.root) == [
        "incoming/project/empty.json",
        "incoming/project/manifest.json",
    ]


def test_remote_root_is_prefixed(dsh_ftps_server: FtpServerInfo) -> None:
    with FtpsClient(dsh_ftps_server.settings(remote_root="/incoming/pixl")) as client:
        client.upload_bytes("x.bin", b"x")
        assert client.list_dir() == ["x.bin"]
        with pytest.raises(ValueError, match=r"\.\."):
            client.upload_bytes("../escape.bin", b"x")
    assert _files_under(dsh_ftps_server.root) == ["incoming/pixl/x.bin"]


def test_stand_in_refuses_stock_ftplib_without_session_reuse(
    dsh_ftps_server: FtpServerInfo,
) -> None:
    """The stand-in behaves like vsftpd, so local runs catch a client that forgets reuse."""
    # Refused with 522, or reset while the client is still sending, depending on timing.
    with pytest.raises((ftplib.error_perm, OSError)):
        _stock_ftps_upload(dsh_ftps_server, "stock.bin")
    stock = dsh_ftps_server.root / "stock.bin"
    assert not stock.exists() or stock.read_bytes() == b""


def test_bad_password_fails_at_once_without_retrying(dsh_ftps_server: FtpServerInfo) -> None:
    settings = dsh_ftps_server.settings(password="wrong", retries=5, backoff_seconds=5.0)
    started = time.monotonic()
    with pytest.raises(FtpsError) as caught:
        FtpsClient(settings).connect()
    assert time.monotonic() - started < 2.0  # one retry would have slept 5 s
    error = caught.value
    assert isinstance(error, PixlError)
    assert error.step == "login" and error.reply_code == "530" and not error.transient
    assert error.attempts is None
    assert str(error) == f"FTPS 127.0.0.1:{dsh_ftps_server.port}: login failed: server replied 530"


def test_server_not_listening_fails_after_retries(
    unused_tcp_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    port = unused_tcp_port
    settings = FtpsSettings("127.0.0.1", port, "u", "p", retries=2, backoff_seconds=0.01)
    with pytest.raises(FtpsError) as caught, FtpsClient(settings):
        pass
    error = caught.value
    assert error.transient and error.attempts == 3 and error.step == "connect"
    assert str(error) == (
        f"FTPS 127.0.0.1:{port}: connect failed: connection refused (gave up after 3 attempts)"
    )
    assert sum("retry" in record.getMessage() for record in caplog.records) == 2


def test_silent_server_times_out() -> None:
    """A server that accepts the TCP connection but never answers must not hang the export."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(5)
        settings = FtpsSettings("127.0.0.1", silent.getsockname()[1], "u", "p", timeout=0.3)
        started = time.monotonic()
        with pytest.raises(FtpsError, match=r"timed out after 0\.3 s"):
            FtpsClient(replace(settings, retries=0)).connect()
        assert time.monotonic() - started < 2.0


def test_untrusted_certificate_is_refused(dsh_ftps_server: FtpServerInfo, tmp_path: Path) -> None:
    other_ca, _key = generate_certificate(tmp_path / "other")
    for settings in (
        dsh_ftps_server.settings(ca_file=None),  # system CAs only
        dsh_ftps_server.settings(ca_file=str(other_ca)),  # the wrong CA
    ):
        with pytest.raises(FtpsError) as caught:
            FtpsClient(settings).upload_bytes("never.bin", b"x")
        assert caught.value.step == "AUTH TLS"
        assert "certificate verification failed" in str(caught.value)
        assert not caught.value.transient and caught.value.attempts is None
    assert _files_under(dsh_ftps_server.root) == []


def test_plain_ftp_server_is_refused_before_credentials_are_sent(
    plain_ftp_server: FtpServerInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    logins: list[str] = []
    monkeypatch.setattr(ftplib.FTP, "login", lambda self, *args, **kwargs: logins.append("x"))
    settings = plain_ftp_server.settings()
    with pytest.raises(FtpsError, match="refusing plain FTP") as caught:
        FtpsClient(settings).upload_bytes("never.bin", b"x")
    assert caught.value.step == "AUTH TLS" and not caught.value.transient
    assert logins == []
    assert _files_under(plain_ftp_server.root) == []


def test_implicit_tls(dsh_ftps_implicit_server: FtpServerInfo) -> None:
    with FtpsClient(dsh_ftps_implicit_server.settings()) as client:
        client.upload_bytes("implicit/data.bin", PAYLOAD)
        assert client.size("implicit/data.bin") == len(PAYLOAD)
    assert (dsh_ftps_implicit_server.root / "implicit/data.bin").read_bytes() == PAYLOAD


def test_transient_failure_mid_upload_is_retried_on_a_new_connection(
    dsh_ftps_server: FtpServerInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"stor": 0}
    real_storbinary = ftplib.FTP_TLS.storbinary

    def flaky_storbinary(self: ftplib.FTP_TLS, *args: object, **kwargs: object) -> str:
        calls["stor"] += 1
        if calls["stor"] == 1:
            self.sock.close()  # type: ignore[union-attr]
            raise ConnectionResetError(104, "Connection reset by peer")
        return real_storbinary(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ftps._SessionReusingFtpTls, "storbinary", flaky_storbinary)
    stream = io.BytesIO(b"header" + PAYLOAD)
    stream.seek(6)  # uploads start from the stream's position, also on the retry
    with FtpsClient(dsh_ftps_server.settings()) as client:
        client.upload_bytes("retry/file.bin", stream)
    assert calls["stor"] == 2
    assert (dsh_ftps_server.root / "retry/file.bin").read_bytes() == PAYLOAD


def test_non_seekable_stream_is_uploaded_but_never_retried(
    dsh_ftps_server: FtpServerInfo, unused_tcp_port: int
) -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "wb") as writer:
        writer.write(b"streamed")
    with os.fdopen(read_end, "rb") as pipe, FtpsClient(dsh_ftps_server.settings()) as client:
        client.upload_bytes("pipe.bin", pipe)
    assert (dsh_ftps_server.root / "pipe.bin").read_bytes() == b"streamed"

    settings = FtpsSettings("127.0.0.1", unused_tcp_port, "u", "p", retries=5)
    read_end, write_end = os.pipe()
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe, pytest.raises(FtpsError) as caught:
        FtpsClient(settings).upload_bytes("pipe.bin", pipe)
    assert caught.value.reason == "connection refused" and caught.value.attempts is None


def test_ftps_error_survives_pickling() -> None:
    error = FtpsError("dsh", 21, "STOR", "server replied 451", transient=True, attempts=4)
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.transient and copy.attempts == 4


def test_errors_name_the_step_never_the_path(dsh_ftps_server: FtpServerInfo) -> None:
    with FtpsClient(dsh_ftps_server.settings()) as client:
        client.upload_bytes("pseudonym-123.bin", b"a file")
        with pytest.raises(FtpsError) as caught:
            client.upload_bytes("pseudonym-123.bin/inside.bin", b"x")  # parent is a file
    message = str(caught.value)
    assert caught.value.step == "MKD" and caught.value.reply_code == "550"
    assert "pseudonym" not in message and "inside" not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


# --- the stand-in as a process -------------------------------------------------------------


def _wait_until_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert process.poll() is None, "the DSH stand-in exited at start"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail("the DSH stand-in did not listen within 10 s")


def test_stand_in_command_line_serves_and_stops_on_sigterm(
    tmp_path: Path, unused_tcp_port: int
) -> None:
    password = secrets.token_hex(8)  # drawn per run: no password in the repository
    env = {**os.environ, "DSH_TEST_PASSWORD": password}
    command = [sys.executable, "-m", "stack.standins.dsh_ftps", "--host", "127.0.0.1"]
    command += ["--port", str(unused_tcp_port), "--root", str(tmp_path / "root")]
    command += ["--user", "pixl", "--password-env", "DSH_TEST_PASSWORD"]
    command += ["--cert-dir", str(tmp_path / "certs")]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        _wait_until_listening(unused_tcp_port, process)
        settings = FtpsSettings(
            "127.0.0.1",
            unused_tcp_port,
            "pixl",
            password,
            ca_file=str(tmp_path / "certs" / CERT_FILE_NAME),
        )
        with FtpsClient(settings) as client:
            client.upload_bytes("cli/file.bin", b"via the command line")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
            pytest.fail("still running 30 s after SIGTERM:\n" + output.decode(errors="replace"))
    assert process.returncode == 0, output.decode(errors="replace")
    assert b"DSH stand-in stopped" in output
    assert password.encode() not in output
    assert (tmp_path / "root/cli/file.bin").read_bytes() == b"via the command line"


def test_stand_in_command_line_needs_the_password_variable(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "DSH_UNSET_PASSWORD"}
    command = [
        sys.executable,
        "-m",
        "stack.standins.dsh_ftps",
        "--root",
        str(tmp_path),
        "--user",
        "u",
    ]
    command += ["--password-env", "DSH_UNSET_PASSWORD", "--cert-dir", str(tmp_path / "c")]
    result = subprocess.run(
        command,
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert b"DSH_UNSET_PASSWORD is not set" in result.stderr


# --- vsftpd (require_ssl_reuse=YES) ---------------------------------------------------------


def test_vsftpd_upload_with_session_reuse(vsftpd_server: FtpServerInfo) -> None:
    with FtpsClient(vsftpd_server.settings()) as client:
        client.upload_bytes("project/images/study.zip", PAYLOAD)
        assert client.exists("project/images/study.zip")
        assert client.size("project/images/study.zip") == len(PAYLOAD)
        assert client.list_dir("project/images") == ["study.zip"]
        client.upload_bytes("project/images/study.zip", b"replaced")
    assert (vsftpd_server.root / "project/images/study.zip").read_bytes() == b"replaced"
    assert _files_under(vsftpd_server.root) == ["project/images/study.zip"]


def test_vsftpd_read_bytes_with_session_reuse(vsftpd_server: FtpServerInfo) -> None:
    """RETR opens a data connection too: it must resume the control session like STOR."""
    with FtpsClient(vsftpd_server.settings()) as client:
        client.upload_bytes("project/manifest.json", PAYLOAD)
        assert client.read_bytes("project/manifest.json") == PAYLOAD
        assert client.read_bytes("project/absent.json") is None


def test_vsftpd_refuses_stock_ftplib_without_session_reuse(vsftpd_server: FtpServerInfo) -> None:
    """Regression: the failure the session override exists for (see ARCHITECTURE.md)."""
    with pytest.raises(ftplib.error_perm, match=r"^522 .*session reuse required"):
        _stock_ftps_upload(vsftpd_server, f"{vsftpd_server.root}/stock.bin")
    assert (vsftpd_server.root / "stock.bin").read_bytes() == b""  # vsftpd leaves an empty file


@pytest.mark.parametrize("server_name", ["dsh_ftps_server", "vsftpd_server"])
def test_sha256_is_read_as_a_stream_and_delete_removes_only_the_file(
    server_name: str, request: pytest.FixtureRequest
) -> None:
    """``pixl verify`` hashes each zip on the DSH as it downloads it, and ``--requeue`` deletes
    a corrupt one; both against the stand-in and vsftpd (RETR resumes the TLS session)."""
    server: FtpServerInfo = request.getfixturevalue(server_name)
    blocks: list[int] = []
    with FtpsClient(server.settings()) as client:
        client.upload_bytes("project/dicom/2.25.1.zip", PAYLOAD)
        client.upload_bytes("project/dicom/2.25.2.zip", b"other")
        # Listing first: ftplib lists in ASCII mode, where SIZE (and so these reads) failed.
        assert client.list_dir("project/dicom") == ["2.25.1.zip", "2.25.2.zip"]
        assert client.read_bytes("project/dicom/2.25.2.zip") == b"other"
        assert client.sha256("project/dicom/2.25.1.zip", blocks.append) == (
            hashlib.sha256(PAYLOAD).hexdigest(),
            len(PAYLOAD),
        )
        assert sum(blocks) == len(PAYLOAD) and len(blocks) > 1
        assert client.sha256("project/dicom/absent.zip") is None
        assert client.delete("project/dicom/2.25.1.zip") is True
        assert client.delete("project/dicom/2.25.1.zip") is False
    assert _files_under(server.root) == ["project/dicom/2.25.2.zip"]
