"""Finding 9: who may talk to orthanc-raw and orthanc-anon over HTTP, on the running stack.

Orthanc 1.10.1 listens on every interface whatever the configuration says (``HttpBindAddress``
is not an Orthanc setting at all; the configs no longer pretend it is): the first test records
that, so the README's statement is checked rather than believed. What keeps other hosts out is
``RemoteAccessAllowed: false`` (a client that is not 127.0.0.1 is refused, checked from
127.0.0.2, which is still loopback) and, in production, the ports compose publishes.

Before issue 8 orthanc-raw and orthanc-anon shared one password and had no read-only user, so
the credential tests failed on that code.
"""

from __future__ import annotations

import pytest
import requests

from stack.driver import Stack
from tests.security.deploy_probes import listening_addresses

pytestmark = pytest.mark.system


def _password(stack: Stack, variable: str) -> str:
    return stack.settings.secrets[variable]


def test_orthanc_http_listens_everywhere_but_refuses_other_clients(stack: Stack):
    """No rendered config claims a bind address Orthanc ignores; other clients are refused."""
    settings = stack.settings
    for config in settings.run_dir.glob("orthanc-*.json"):
        assert "HttpBindAddress" not in config.read_text(), config.name
    raw_port = settings.ports["raw_http"]
    assert listening_addresses(raw_port) == {"0.0.0.0"}, "Orthanc honours a bind address now: "
    "update README (Running it for real) and orthanc-config/README.md"
    auth = ("pixl", _password(stack, "PIXL_ORTHANC_RAW_PASSWORD"))
    url = settings.url("raw") + "/system"
    assert requests.get(url, auth=auth, timeout=10).status_code == 200
    remote = _from_address("127.0.0.2")
    for name in ("raw", "anon", "vna"):
        response = remote.get(settings.url(name) + "/system", auth=auth, timeout=10)
        assert response.status_code in {401, 403}, name


def test_raw_and_anon_do_not_accept_each_others_password(stack: Stack):
    settings = stack.settings
    raw_password = _password(stack, "PIXL_ORTHANC_RAW_PASSWORD")
    anon_password = _password(stack, "PIXL_ORTHANC_PASSWORD")
    assert raw_password != anon_password
    raw, anon = settings.url("raw") + "/system", settings.url("anon") + "/system"
    assert requests.get(raw, auth=("pixl", anon_password), timeout=10).status_code == 401
    assert requests.get(anon, auth=("pixl", raw_password), timeout=10).status_code == 401
    assert requests.get(raw, auth=("pixl", raw_password), timeout=10).status_code == 200
    assert requests.get(anon, auth=("pixl", anon_password), timeout=10).status_code == 200


def test_the_operator_user_can_look_but_not_change(stack: Stack):
    operator = ("operator", _password(stack, "PIXL_ORTHANC_OPERATOR_PASSWORD"))
    for name in ("raw", "anon"):
        base = stack.settings.url(name)
        for path in ("/pixl/status", "/pixl/ui/", "/system", "/studies", "/app/explorer.html"):
            assert requests.get(base + path, auth=operator, timeout=10).status_code == 200, path
        find = requests.post(
            base + "/tools/find", json={"Level": "Study", "Query": {}}, auth=operator, timeout=10
        )
        assert find.status_code == 200
        refused = {
            ("POST", "/instances"): b"not a dicom file",
            ("POST", "/tools/execute-script"): b"print(1)",
            ("POST", "/tools/reset"): b"",
            ("PUT", "/modalities/evil"): b'{"AET": "EVIL", "Host": "10.0.0.1", "Port": 104}',
            ("DELETE", "/studies/0"): b"",
            ("POST", "/modalities/vna/query"): b'{"Level": "Study", "Query": {}}',
            # the operator's page shows the controls; pressing them needs a user with rights
            ("POST", "/pixl/control"): b'{"action": "pause", "project": "*"}',
        }
        for (method, path), body in refused.items():
            response = requests.request(method, base + path, data=body, auth=operator, timeout=10)
            assert response.status_code == 403, (name, method, path, response.status_code)


def _from_address(address: str) -> requests.Session:
    """A session whose connections leave from ``address`` (a loopback address other than
    127.0.0.1: to Orthanc, a remote client)."""
    from requests.adapters import HTTPAdapter

    class SourceAddressAdapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            kwargs["source_address"] = (address, 0)
            super().init_poolmanager(*args, **kwargs)

    session = requests.Session()
    session.mount("http://", SourceAddressAdapter())
    return session
