"""Orthanc's 503 (its database unavailable, e.g. while PostgreSQL restarts) is waited out, except
for a retrieve: asking the VNA again is the fetch worker's audited decision (issue 12)."""

from __future__ import annotations

from typing import Any

import pytest

from pixl_core.transport.orthanc_rest import OrthancClient, OrthancError


class Answer:
    def __init__(self, status: int | tuple[int, dict[str, Any]]) -> None:
        self.status_code, self.body = status if isinstance(status, tuple) else (status, {})
        self.content = b"{}"

    def json(self) -> Any:
        return self.body

    def close(self) -> None:
        pass


def client_answering(monkeypatch, statuses: list[Any]) -> tuple[OrthancClient, list[str]]:  # type: ignore[no-untyped-def]
    client = OrthancClient("http://127.0.0.1:1")
    calls: list[str] = []

    def request(method: str, url: str, **kwargs: Any) -> Answer:
        calls.append(url)
        return Answer(statuses.pop(0))

    monkeypatch.setattr(client._session, "request", request)
    monkeypatch.setattr(OrthancClient, "UNAVAILABLE_PAUSES", (0.0, 0.0, 0.0))
    return client, calls


def test_a_request_is_tried_again_while_orthanc_s_database_is_unavailable(monkeypatch):
    client, calls = client_answering(monkeypatch, [503, 503, 200])
    assert client.get("/instances/x") == {}
    assert len(calls) == 3


def test_unavailable_for_longer_than_the_pauses_is_an_error(monkeypatch):
    client, calls = client_answering(monkeypatch, [503] * 4)
    with pytest.raises(OrthancError) as error:
        client.post_bytes("/instances", b"DICM")
    assert error.value.code == "http_503" and len(calls) == 4


def test_a_retrieve_is_never_repeated_by_the_transport(monkeypatch):
    client, calls = client_answering(monkeypatch, [503, 200])
    with pytest.raises(OrthancError):
        client.post("/queries/abc/answers/0/retrieve", {"TargetAet": "PIXLRAW"})
    assert len(calls) == 1


DATABASE_ERROR = (500, {"OrthancStatus": 11, "OrthancError": "Error with the database engine"})


def test_a_broken_index_connection_is_waited_out_like_a_503(monkeypatch):
    """Orthanc's PostgreSQL index answers 500 with error 11 on a pooled connection that broke
    under the request (the first requests after a Postgres restart)."""
    client, calls = client_answering(monkeypatch, [DATABASE_ERROR, 503, 200])
    assert client.get("/instances/x/file") == {}
    assert len(calls) == 3


def test_any_other_500_fails_at_once(monkeypatch):
    client, calls = client_answering(monkeypatch, [(500, {"OrthancStatus": 15}), 200])
    with pytest.raises(OrthancError) as error:
        client.get("/instances/x")
    assert error.value.code == "http_500" and len(calls) == 1


def test_a_retrieve_that_met_a_database_error_is_not_repeated(monkeypatch):
    client, calls = client_answering(monkeypatch, [DATABASE_ERROR, 200])
    with pytest.raises(OrthancError):
        client.post("/queries/abc/answers/0/retrieve", {"TargetAet": "PIXLRAW"})
    assert len(calls) == 1


def test_a_transaction_its_broken_connection_left_is_waited_out_too(monkeypatch):
    """Orthanc's PostgreSQL index answered error 6 (bad sequence of calls) on a transaction
    whose connection broke, before it answered 11 and 503 (the Postgres drill)."""
    broken = (500, {"OrthancStatus": 6, "OrthancError": "Bad sequence of calls"})
    client, calls = client_answering(monkeypatch, [broken, DATABASE_ERROR, 200])
    assert client.post_bytes("/instances", b"DICM") == {}
    assert len(calls) == 3
