"""Finding 6: the EHR service of the running stack answers only the CLI, with its token.

Before issue 8 the service had no authentication: ``GET /status`` and ``/docs`` answered anyone
(200), and a web page in the operator's browser could POST ``/export/<project>`` (a plain form
POST needs no CORS preflight), so every test below failed on that code.
"""

from __future__ import annotations

import pytest
import requests

from stack.driver import Stack
from tests.security.deploy_probes import listening_addresses

pytestmark = pytest.mark.system


def _ehr(stack: Stack) -> str:
    return stack.settings.url("ehr")


def _token(stack: Stack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.settings.secrets['PIXL_EHR_TOKEN']}"}


def _dsh_files(stack: Stack) -> set[str]:
    return {str(p) for p in stack.settings.dsh_dir.rglob("*") if p.is_file()}


def test_unauthenticated_calls_are_refused(stack: Stack):
    url = _ehr(stack)
    before = _dsh_files(stack)
    assert requests.get(f"{url}/status", timeout=10).status_code == 401
    wrong = {"Authorization": "Bearer " + "0" * 48}
    assert requests.get(f"{url}/status", headers=wrong, timeout=10).status_code == 401
    refused = requests.post(f"{url}/export/chest-xray", timeout=30)
    assert refused.status_code == 401
    assert refused.headers.get("www-authenticate") == "Bearer"
    assert stack.settings.secrets["PIXL_EHR_TOKEN"] not in refused.text
    assert _dsh_files(stack) == before, "an unauthenticated export sent files"
    # The stack's own health check stays open, and the token opens /status.
    assert requests.get(f"{url}/health", timeout=10).status_code == 200
    assert requests.get(f"{url}/status", headers=_token(stack), timeout=10).status_code == 200


def test_cross_site_requests_are_refused_even_with_the_token(stack: Stack):
    """What a page on another origin can make a browser send: a form POST (no preflight), a
    preflight, and (were the token ever in a page) a credentialed fetch."""
    url = _ehr(stack)
    before = _dsh_files(stack)
    origin = {"Origin": "https://attacker.example"}
    form = requests.post(
        f"{url}/export/chest-xray",
        headers={**origin, "Content-Type": "application/x-www-form-urlencoded"},
        data="x=1",
        timeout=30,
    )
    assert form.status_code == 403
    preflight = requests.options(
        f"{url}/export/chest-xray",
        headers={
            **origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
        timeout=10,
    )
    assert preflight.status_code == 403
    with_token = requests.get(f"{url}/status", headers={**origin, **_token(stack)}, timeout=10)
    assert with_token.status_code == 403
    for response in (form, preflight, with_token):
        assert not any(h.lower().startswith("access-control-") for h in response.headers)
    assert _dsh_files(stack) == before


def test_api_documentation_is_off(stack: Stack):
    url = _ehr(stack)
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        assert requests.get(url + path, headers=_token(stack), timeout=10).status_code == 404


def test_the_service_listens_on_loopback_only(stack: Stack):
    """The stack starts it without --host; its only listening socket is 127.0.0.1.

    A guard of the default (the stack already passed no --host before issue 8); the finding's
    0.0.0.0 was the production container's, checked in tests/unit/test_deploy_compose.py."""
    port = stack.settings.ports["ehr_http"]
    addresses = listening_addresses(port)
    assert addresses == {"127.0.0.1"}, addresses
