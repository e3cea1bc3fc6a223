"""The EHR service's HTTP guard (finding 6) and the CLI's side of it, without servers.

``/status`` with no reachable database answers 503: a 503 here means the request got past the
guard, which is all these tests need to know.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from pixl_cli import export_cmd
from pixl_cli.main import app as pixl_app
from pixl_core.errors import PixlConfigError
from pixl_ehr import service
from pixl_ehr.service import ServiceConfig, create_app, docs_enabled, token_from_env

TOKEN = "s" * 40
UNREACHABLE_DB = "postgresql://pixl:x@127.0.0.1:1/pixl"


@pytest.fixture
def client() -> TestClient:
    config = ServiceConfig(db_url=UNREACHABLE_DB, start_worker=False, token=TOKEN)
    with TestClient(create_app(config, docs=False)) as test_client:
        yield test_client


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_status_and_export_need_the_token(client: TestClient):
    assert client.get("/status").status_code == 401
    assert client.get("/status", headers=_bearer("wrong" * 8)).status_code == 401
    assert client.get("/status", headers={"Authorization": TOKEN}).status_code == 401
    assert client.post("/export/chest-xray").status_code == 401
    assert client.get("/status", headers=_bearer(TOKEN)).status_code == 503
    assert client.get("/health").status_code == 200


def test_a_wrong_token_is_not_echoed(client: TestClient):
    response = client.get("/status", headers=_bearer("guess-" * 8))
    assert "guess-" not in response.text and TOKEN not in response.text


def test_any_request_from_a_web_page_is_refused(client: TestClient):
    origin = {"Origin": "http://127.0.0.1:9999"}
    assert client.get("/health", headers=origin).status_code == 403
    assert client.get("/status", headers={**origin, **_bearer(TOKEN)}).status_code == 403
    preflight = client.options(
        "/export/chest-xray", headers={**origin, "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 403
    assert "access-control-allow-origin" not in preflight.headers


def test_docs_are_off_unless_asked_for():
    config = ServiceConfig(db_url=UNREACHABLE_DB, start_worker=False, token=TOKEN)
    with TestClient(create_app(config, docs=False)) as off:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert off.get(path).status_code == 404, path
    with TestClient(create_app(config, docs=True)) as on:
        assert on.get("/openapi.json").status_code == 200
    assert docs_enabled({}) is False
    assert docs_enabled({"PIXL_EHR_DOCS": "true"}) is True
    with pytest.raises(PixlConfigError, match="PIXL_EHR_DOCS"):
        docs_enabled({"PIXL_EHR_DOCS": "yes please"})


def test_the_token_comes_from_the_environment_and_is_required():
    assert token_from_env({"PIXL_EHR_TOKEN": TOKEN}) == TOKEN
    with pytest.raises(PixlConfigError) as missing:
        token_from_env({})
    assert missing.value.code == "ehr_token_missing"
    with pytest.raises(PixlConfigError) as short:
        token_from_env({"PIXL_EHR_TOKEN": "abc"})
    assert short.value.code == "ehr_token_short" and "abc" not in str(short.value)


def test_the_service_refuses_to_start_without_a_token(monkeypatch, capsys):
    monkeypatch.delenv("PIXL_EHR_TOKEN", raising=False)
    monkeypatch.setenv("PIXL_DB_URL", UNREACHABLE_DB)
    assert service.main(["--port", "1"]) == 2
    assert "PIXL_EHR_TOKEN is not set" in capsys.readouterr().err


def test_the_service_listens_on_loopback_by_default(monkeypatch):
    """--host defaults to PIXL_EHR_HOST, else 127.0.0.1 (the container no longer says 0.0.0.0)."""
    seen: dict[str, Any] = {}
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **options: seen.update(options))
    monkeypatch.setenv("PIXL_EHR_TOKEN", TOKEN)
    monkeypatch.setenv("PIXL_DB_URL", UNREACHABLE_DB)
    monkeypatch.delenv("PIXL_EHR_HOST", raising=False)
    assert service.main(["--port", "1"]) == 0
    assert seen["host"] == "127.0.0.1"


# --- the CLI ----------------------------------------------------------------------------------


class _Answer:
    def __init__(self, status_code: int, body: dict[str, Any]) -> None:
        self.status_code = status_code
        self._body = body

    def json(self) -> dict[str, Any]:
        return self._body


def test_the_cli_sends_the_token_and_names_it_when_refused(monkeypatch):
    sent: list[dict[str, str]] = []

    def post(url: str, **kwargs: Any) -> _Answer:
        sent.append(kwargs.get("headers") or {})
        if kwargs.get("headers", {}).get("Authorization") == f"Bearer {TOKEN}":
            return _Answer(200, {"project": "chest-xray", "files_sent": 1})
        return _Answer(401, {"detail": "missing or wrong bearer token"})

    monkeypatch.setattr(requests, "post", post)
    monkeypatch.setenv("PIXL_EHR_URL", "http://127.0.0.1:1")
    runner = CliRunner()

    monkeypatch.delenv("PIXL_EHR_TOKEN", raising=False)
    unset = runner.invoke(pixl_app, ["export-patient-data", "chest-xray"])
    assert unset.exit_code == 2
    assert "PIXL_EHR_TOKEN is not set" in unset.output

    monkeypatch.setenv("PIXL_EHR_TOKEN", "w" * 40)
    wrong = runner.invoke(pixl_app, ["export-patient-data", "chest-xray"])
    assert wrong.exit_code == 2 and "PIXL_EHR_TOKEN is wrong" in wrong.output
    assert "w" * 40 not in wrong.output

    monkeypatch.setenv("PIXL_EHR_TOKEN", TOKEN)
    assert export_cmd.request_export("chest-xray")["files_sent"] == 1
    assert sent[-1] == {"Authorization": f"Bearer {TOKEN}"}
