"""The STOW-RS / QIDO-RS client without a server: a fake session records every request.

What is proved: the multipart body is PS3.18's (each part's own Content-Type, exact bytes,
closing delimiter); instances go in batches of ``batch_size`` and each batch is reported as the
server confirms it; transient failures are retried with a doubling pause and permanent ones are
not; errors name host:port, step and status, never a path (it holds UIDs) or reply text.
"""

from __future__ import annotations

import email.parser
import email.policy
from typing import Any

import pytest
import requests

from pixl_core.transport.dicomweb import (
    DicomwebClient,
    DicomwebError,
    DicomwebSettings,
    multipart_related,
    parse_stow_response,
    study_counts,
)

STUDY = "2.25.1234567890"


def stow_answer(uids: list[str], failed: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {
        "00081199": {
            "vr": "SQ",
            "Value": [{"00081155": {"vr": "UI", "Value": [uid]}} for uid in uids],
        },
        "00081198": {"vr": "SQ"},
    }
    if failed:
        body["00081198"]["Value"] = [{"00081197": {"vr": "US", "Value": [0xA700]}}] * failed
    return body


class FakeResponse:
    def __init__(self, status: int, body: Any = None) -> None:
        self.status_code = status
        self._body = body
        self.content = b"x" if body is not None else b""

    def json(self) -> Any:
        return self._body


class FakeSession:
    """Answers from a script: each entry a FakeResponse, an exception, or "echo" (a STOW answer
    confirming every part of the request)."""

    def __init__(self, script: list[Any]) -> None:
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []
        self.headers: dict[str, str] = {}
        self.auth: Any = None
        self.verify: Any = None

    def request(self, method: str, url: str, **kwargs: Any) -> FakeResponse:
        self.requests.append({"method": method, "url": url, **kwargs})
        answer = self.script.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if answer == "echo":
            parts = parse_parts(kwargs["data"], kwargs["headers"]["Content-Type"])
            return FakeResponse(200, stow_answer([uid_of(part) for part in parts]))
        return answer

    def close(self) -> None:
        pass


def parse_parts(body: bytes, content_type: str) -> list[bytes]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    parts = list(message.iter_parts())
    assert all(part.get_content_type() == "application/dicom" for part in parts)
    return [part.get_payload(decode=True) for part in parts]


def uid_of(part: bytes) -> str:
    return part.decode().removeprefix("DICM:")


def part(uid: str) -> bytes:
    return f"DICM:{uid}".encode()


def client(script: list[Any], **settings: Any) -> tuple[DicomwebClient, FakeSession, list[float]]:
    session = FakeSession(script)
    pauses: list[float] = []
    values = {"url": "https://dw.example:8443/dicom-web", "user": "pixl", "password": "pw"}
    made = DicomwebClient(
        DicomwebSettings(**{**values, **settings}),
        session=session,  # type: ignore[arg-type]
        sleep=pauses.append,
    )
    return made, session, pauses


def test_multipart_body_is_each_instance_as_application_dicom() -> None:
    parts = [b"\x00\x01binary\r\n--not-a-boundary", b"second"]
    body, content_type = multipart_related(parts, boundary="b0und4ry")
    assert content_type == 'multipart/related; type="application/dicom"; boundary=b0und4ry'
    assert body == (
        b"--b0und4ry\r\nContent-Type: application/dicom\r\n\r\n"
        + parts[0]
        + b"\r\n--b0und4ry\r\nContent-Type: application/dicom\r\n\r\n"
        + parts[1]
        + b"\r\n--b0und4ry--\r\n"
    )
    assert parse_parts(body, content_type) == parts


def test_random_boundary_never_occurs_in_a_part() -> None:
    body, content_type = multipart_related([b"abc", b"def"])
    boundary = content_type.rsplit("boundary=", 1)[1]
    assert boundary.startswith("pixl-") and body.count(boundary.encode()) == 3
    with pytest.raises(ValueError):
        multipart_related([b"xx-b-xx"], boundary="-b-")


def test_stow_posts_to_studies_with_auth_and_verified_tls() -> None:
    made, session, _ = client(["echo"], ca_file="/etc/ca.pem")
    result = made.stow([part("1.2.3")])
    assert result.stored == {"1.2.3"}
    request = session.requests[0]
    assert request["method"] == "POST"
    assert request["url"] == "https://dw.example:8443/dicom-web/studies"
    assert request["headers"]["Accept"] == "application/dicom+json"
    assert session.auth == ("pixl", "pw") and request["verify"] == "/etc/ca.pem"


def test_bearer_auth_sends_the_token_and_tls_is_never_off() -> None:
    made, session, _ = client(["echo"], auth="bearer", user=None, password=None, token="tok")
    made.stow([part("1")])
    assert session.headers["Authorization"] == "Bearer tok"
    assert session.requests[0]["verify"] is True and session.auth is None


def test_batches_of_batch_size_each_recorded_as_confirmed() -> None:
    uids = [f"1.2.{n}" for n in range(7)]
    made, session, _ = client(["echo", "echo", "echo"], batch_size=3)
    confirmed: list[frozenset[str]] = []
    calls: list[int] = []
    total = made.stow_batched(uids, part, confirmed.append, lambda: calls.append(1))
    assert total == 7 and len(session.requests) == 3 and len(calls) == 3
    assert [sorted(batch) for batch in confirmed] == [uids[0:3], uids[3:6], uids[6:7]]
    sent = [
        [uid_of(p) for p in parse_parts(r["data"], r["headers"]["Content-Type"])]
        for r in session.requests
    ]
    assert sent == [uids[0:3], uids[3:6], uids[6:7]]


def test_a_batch_stops_before_it_is_sent_when_before_batch_raises() -> None:
    made, session, _ = client(["echo"], batch_size=2)
    confirmed: list[frozenset[str]] = []
    calls = iter([None, RuntimeError("lease lost")])

    def before() -> None:
        error = next(calls)
        if error:
            raise error

    with pytest.raises(RuntimeError):
        made.stow_batched(["1", "2", "3"], part, confirmed.append, before)
    assert len(session.requests) == 1 and confirmed == [frozenset({"1", "2"})]


def test_transient_failures_are_retried_with_doubling_pauses() -> None:
    script = [
        requests.exceptions.ConnectionError("refused to https://dw.example/dicom-web/studies"),
        FakeResponse(503),
        "echo",
    ]
    made, session, pauses = client(script, retries=3, backoff_seconds=0.5)
    assert made.stow([part("9.9")]).stored == {"9.9"}
    assert len(session.requests) == 3 and pauses == [0.5, 1.0]


def test_gives_up_after_the_retries_and_says_so_without_the_path() -> None:
    made, session, pauses = client([FakeResponse(503)] * 3, retries=2, backoff_seconds=1)
    with pytest.raises(DicomwebError) as caught:
        made.stow([part("9.9")])
    assert len(session.requests) == 3 and pauses == [1, 2]
    message = str(caught.value)
    assert (
        message == "DICOMweb dw.example:8443: STOW-RS failed: HTTP 503 (gave up after 3 attempts)"
    )
    assert caught.value.code == "dicomweb_stow_rs" and caught.value.transient


def test_unreachable_server_is_marked_so_the_exporter_pauses_it() -> None:
    error = requests.exceptions.ConnectionError(f"https://dw.example/dicom-web/studies/{STUDY}")
    made, _, _ = client([error], retries=0)
    with pytest.raises(DicomwebError) as caught:
        made.instances_of_study(STUDY)
    assert caught.value.unreachable and caught.value.code == "dicomweb_connect"
    assert STUDY not in str(caught.value)


@pytest.mark.parametrize(
    ("answer", "code"),
    [(FakeResponse(401), "dicomweb_login"), (FakeResponse(400), "dicomweb_stow_rs")],
)
def test_permanent_failures_are_not_retried(answer: FakeResponse, code: str) -> None:
    made, session, pauses = client([answer], retries=3)
    with pytest.raises(DicomwebError) as caught:
        made.stow([part("1")])
    assert len(session.requests) == 1 and pauses == []
    assert caught.value.code == code and not caught.value.unreachable


def test_untrusted_certificate_is_permanent_not_a_pause() -> None:
    error = requests.exceptions.SSLError(
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"
    )
    made, session, _ = client([error], retries=3)
    with pytest.raises(DicomwebError) as caught:
        made.probe()
    assert len(session.requests) == 1
    assert caught.value.code == "dicomweb_tls" and not caught.value.unreachable


def test_instances_refused_by_the_server_fail_the_request() -> None:
    made, _, _ = client([FakeResponse(202, stow_answer(["1"], failed=1))])
    with pytest.raises(DicomwebError) as caught:
        made.stow([part("1"), part("2")])
    assert "1 of 2 instance(s) refused (failure reason 0xA700)" in str(caught.value)


def test_a_batch_the_server_does_not_fully_confirm_is_not_recorded() -> None:
    made, _, _ = client([FakeResponse(200, stow_answer(["1"]))], batch_size=5)
    confirmed: list[frozenset[str]] = []
    with pytest.raises(DicomwebError, match="confirmed 1 of 2"):
        made.stow_batched(["1", "2"], part, confirmed.append)
    assert confirmed == []


def test_qido_counts_per_study() -> None:
    found = [
        {"00080018": {"Value": ["1.1"]}, "0020000E": {"Value": ["s1"]}},
        {"00080018": {"Value": ["1.2"]}, "0020000E": {"Value": ["s2"]}},
        {"00080018": {"Value": ["1.3"]}, "0020000E": {"Value": ["s2"]}},
    ]
    made, session, _ = client([FakeResponse(200, found), FakeResponse(204)])
    counts = study_counts(made, [STUDY, "2.25.9"])
    assert counts == {
        STUDY: {"studies": 1, "series": 2, "instances": 3},
        "2.25.9": {"studies": 0, "series": 0, "instances": 0},
    }
    assert session.requests[0]["url"].endswith(f"/dicom-web/studies/{STUDY}/instances")


def test_parse_stow_response_ignores_items_without_a_uid() -> None:
    body = stow_answer(["1"])
    body["00081199"]["Value"].append({})
    assert parse_stow_response(body).stored == {"1"}
    assert parse_stow_response(None).stored == frozenset()
