"""TLS off-switches (finding 11): refused unless explicit, and loud every time they are used.

Before issue 8 ``PIXL_COGSTACK_URL=http://...`` was taken silently and ``verify: false`` in a
project file switched FTPS certificate checks off without a word; these tests failed then.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from pixl_core.errors import PixlConfigError
from pixl_core.transport.ftps import FtpsSettings
from pixl_ehr.cogstack import CogstackClient, CogstackError, CogstackSettings
from stack.ports import free_port
from stack.standins.dsh_ftps import generate_certificate

REPO = Path(__file__).resolve().parents[2]


def test_plain_http_cogstack_is_refused_with_the_setting_named():
    with pytest.raises(PixlConfigError) as refused:
        CogstackSettings.from_env({"PIXL_COGSTACK_URL": "http://cogstack.example:5000"})
    assert refused.value.code == "cogstack_plain_http"
    assert "PIXL_COGSTACK_ALLOW_PLAIN_HTTP=true" in str(refused.value)
    assert len(str(refused.value).splitlines()) == 1
    with pytest.raises(PixlConfigError, match="PIXL_COGSTACK_ALLOW_PLAIN_HTTP"):
        CogstackSettings.from_env(
            {"PIXL_COGSTACK_URL": "http://c:5000", "PIXL_COGSTACK_ALLOW_PLAIN_HTTP": "yes"}
        )


def test_plain_http_allowed_explicitly_warns_for_every_client(caplog):
    settings = CogstackSettings.from_env(
        {"PIXL_COGSTACK_URL": "http://127.0.0.1:5000", "PIXL_COGSTACK_ALLOW_PLAIN_HTTP": "true"}
    )
    with caplog.at_level(logging.WARNING, logger="pixl_ehr.cogstack"):
        CogstackClient(settings).close()
        CogstackClient(settings).close()
    warnings = [r for r in caplog.records if "TLS OFF" in r.getMessage()]
    assert len(warnings) == 2 and all(r.levelno == logging.WARNING for r in warnings)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pixl_ehr.cogstack"):
        CogstackClient(CogstackSettings(url="https://cogstack.example")).close()
    assert not caplog.records


def test_a_missing_cogstack_ca_file_is_a_config_error(tmp_path):
    with pytest.raises(PixlConfigError) as missing:
        CogstackSettings.from_env(
            {
                "PIXL_COGSTACK_URL": "https://cogstack.example",
                "PIXL_COGSTACK_CA_FILE": str(tmp_path / "absent.pem"),
            }
        )
    assert missing.value.code == "cogstack_ca_file_missing"


def test_https_cogstack_is_verified_against_its_ca_file(tmp_path):
    """The stand-in with a certificate, as the stack runs it: trusted with the CA file, refused
    without it (an impostor's certificate fails the same way)."""
    cert, key = generate_certificate(tmp_path)
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stack.standins.cogstack_api",
            "--port",
            str(port),
            "--certfile",
            str(cert),
            "--keyfile",
            str(key),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.get(url + "/api/health", verify=str(cert), timeout=1)
                break
            except requests.RequestException:
                assert time.monotonic() < deadline, "the stand-in did not start"
                time.sleep(0.1)
        trusted = CogstackSettings(url=url, ca_file=str(cert), retries=0)
        with CogstackClient(trusted) as client:
            assert client.deidentify("Seen by Dr Jones.") != ""
        untrusted = CogstackSettings(url=url, retries=0)
        with CogstackClient(untrusted) as client, pytest.raises(CogstackError) as refused:
            client.deidentify("Seen by Dr Jones.")
        assert refused.value.code == "cogstack_unreachable"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_ftps_verify_off_warns_on_every_connection(caplog):
    settings = FtpsSettings(host="dsh.example", port=21, user="pixl", password="p", verify=False)
    with caplog.at_level(logging.WARNING, logger="pixl_core.transport.ftps"):
        settings.ssl_context()
        settings.ssl_context()
    warnings = [r.getMessage() for r in caplog.records if "verification OFF" in r.getMessage()]
    assert len(warnings) == 2
    assert "dsh.example:21" in warnings[0] and "verify: false" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pixl_core.transport.ftps"):
        FtpsSettings(host="dsh.example", port=21, user="pixl", password="p").ssl_context()
    assert not caplog.records
