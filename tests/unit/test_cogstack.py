"""The Cogstack client against the real stand-in service, fake misbehaving servers, and the
stand-in's rule-based de-identifier on typical radiology reports.

The stand-in runs for real (uvicorn in a thread, and once as the subprocess the stack starts),
so the client is tested over HTTP exactly as it talks to medcat-service in production.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import uvicorn

from pixl_core.errors import PixlConfigError
from pixl_ehr.cogstack import CogstackClient, CogstackError, CogstackSettings
from stack.ports import free_port
from stack.standins.cogstack_api import create_app
from stack.standins.cogstack_redactor import redact

REPO_ROOT = Path(__file__).resolve().parents[2]

REPORT = """XR CHEST PA
Patient: John SMITH    DOB: 03/07/1956    NHS No: 943 476 5919    MRN: RRV12345678
Address: 12 Acacia Avenue, Camden, London NW1 2AB. Tel: 020 7946 0958, mobile 07700 900123.
Email: john.smith@example.com
Clinical details: known Hodgkin lymphoma and Parkinson's disease. ?Pancoast tumour.
Findings: Swan-Ganz catheter tip in the right pulmonary artery. Kerley B lines.
CTR 0.55. A 5 mm nodule projects at the level of T4. May represent a vessel end-on.
Compared with the film of 14 March 2023.
Reported by: Dr Sarah O'Brien, Consultant Radiologist, 2 May 2024.
"""

IDENTIFIERS = [
    "John",
    "SMITH",
    "03/07/1956",
    "943 476 5919",
    "RRV12345678",
    "12 Acacia Avenue",
    "NW1 2AB",
    "020 7946 0958",
    "07700 900123",
    "john.smith@example.com",
    "14 March 2023",
    "Sarah",
    "O'Brien",
    "2 May 2024",
]
KEPT = [
    "Hodgkin lymphoma",
    "Parkinson's disease",
    "Pancoast tumour",
    "Swan-Ganz catheter",
    "Kerley B lines",
    "CTR 0.55",
    "5 mm",
    "T4",
    "May represent",
    "Consultant Radiologist",
]


def _settings(url: str, **overrides: float) -> CogstackSettings:
    values: dict[str, float] = {"timeout": 5, "retries": 2, "backoff_seconds": 0.001}
    values.update(overrides)
    return CogstackSettings(
        url=url,
        timeout=values["timeout"],
        retries=int(values["retries"]),
        backoff_seconds=values["backoff_seconds"],
        allow_plain_http=True,  # the local test servers speak plain HTTP on loopback
    )


# --- servers -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def standin_url() -> Iterator[str]:
    """The stand-in app served by uvicorn in a background thread."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the Cogstack stand-in did not start")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=5)


@dataclass
class FakeServer:
    """A tiny HTTP server that answers every POST with ``status`` and ``body`` (bytes)."""

    status: int = 200
    body: bytes = b"{}"
    delay: float = 0.0
    requests: list[bytes] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    fake = FakeServer()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            fake.requests.append(self.rfile.read(length))
            if fake.delay:
                time.sleep(fake.delay)
            self.send_response(fake.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(fake.body)))
            self.end_headers()
            with contextlib.suppress(OSError):  # the client gave up (timeout test)
                self.wfile.write(fake.body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()


# --- client against the stand-in -----------------------------------------------------------


def test_deidentify_removes_identifiers_and_keeps_clinical_content(standin_url: str) -> None:
    with CogstackClient(_settings(standin_url)) as client:
        result = client.deidentify(REPORT)
    for identifier in IDENTIFIERS:
        assert identifier not in result
    for kept in KEPT:
        assert kept in result
    for tag in ("[NAME]", "[DATE]", "[NHS_NUMBER]", "[ID]", "[ADDRESS]", "[POSTCODE]", "[PHONE]"):
        assert tag in result
    assert "[EMAIL]" in result


def test_deidentify_bulk_keeps_order_and_blank_texts(standin_url: str) -> None:
    texts = [
        "Seen by Dr Jones on 01/02/2023.",
        "   ",
        "No acute abnormality. CTR 0.48.",
        "Contact Mrs Margaret Taylor on 0161 496 0000.",
    ]
    with CogstackClient(_settings(standin_url)) as client:
        results = client.deidentify_bulk(texts)
        assert client.deidentify_bulk([]) == []
    assert results == [
        "Seen by Dr [NAME] on [DATE].",
        "   ",
        "No acute abnormality. CTR 0.48.",
        "Contact Mrs [NAME] on [PHONE].",
    ]


def test_standin_speaks_the_medcat_service_shapes(standin_url: str) -> None:
    single = requests.post(
        f"{standin_url}/api/process", json={"content": {"text": "Mr Smith, NW1 2AB"}}, timeout=5
    )
    assert single.status_code == 200
    body = single.json()
    assert set(body) == {"medcat_info", "result"}
    result = body["result"]
    assert result["text"] == "Mr [NAME], [POSTCODE]"
    assert result["success"] is True
    assert isinstance(result["timestamp"], str)
    assert result["annotations"] == [
        {"start": 3, "end": 8, "type": "NAME"},
        {"start": 10, "end": 17, "type": "POSTCODE"},
    ]

    bulk = requests.post(
        f"{standin_url}/api/process_bulk",
        json={"content": [{"text": "Dr Jones"}, {"text": "clear", "footer": {"id": 7}}]},
        timeout=5,
    ).json()
    assert [item["text"] for item in bulk["result"]] == ["Dr [NAME]", "clear"]
    assert bulk["result"][1]["footer"] == {"id": 7}

    missing = requests.post(f"{standin_url}/api/process", json={"content": {}}, timeout=5)
    assert missing.json()["result"]["success"] is False

    info = requests.get(f"{standin_url}/api/info", timeout=5).json()
    assert {"service_app_name", "service_version", "service_model"} <= set(info)
    health = requests.get(f"{standin_url}/api/health", timeout=5)
    assert (health.status_code, health.json()) == (200, {"status": "ok"})


def test_standin_invalid_request_is_400_without_echo(standin_url: str) -> None:
    answer = requests.post(
        f"{standin_url}/api/process", json={"content": "Mr Secretname"}, timeout=5
    )
    assert answer.status_code == 400
    assert "Secretname" not in answer.text
    with CogstackClient(_settings(standin_url)) as client, pytest.raises(CogstackError) as info:
        client._post("/api/process", {"content": "Mr Secretname"})
    assert info.value.code == "cogstack_http_400"


# --- client failures ---------------------------------------------------------------------------


def test_service_down_raises_unreachable_after_retries() -> None:
    port = free_port()  # nothing listens there
    pauses: list[float] = []
    client = CogstackClient(
        _settings(f"http://127.0.0.1:{port}", retries=3, backoff_seconds=0.01),
        sleep=pauses.append,
    )
    with pytest.raises(CogstackError) as info:
        client.deidentify("Mr Secretname, NHS 943 476 5919")
    error = info.value
    assert error.code == "cogstack_unreachable"
    assert pauses == [0.01, 0.02, 0.04]  # exponential backoff between four attempts
    message = str(error)
    assert f"127.0.0.1:{port}" in message
    assert "4 attempts" in message
    # the NHS number whole, not a fragment: a fragment may be part of the random port
    assert "Secretname" not in message and "943 476 5919" not in message
    assert "4765919" not in message.replace(" ", "")
    assert "\n" not in message


def test_server_error_is_retried_then_raised(fake_server: FakeServer) -> None:
    fake_server.status = 500
    fake_server.body = b"Internal processing error: Mr Secretname"
    client = CogstackClient(_settings(fake_server.url, retries=2))
    with pytest.raises(CogstackError) as info:
        client.deidentify("Mr Secretname")
    assert info.value.code == "cogstack_http_500"
    assert len(fake_server.requests) == 3
    assert "Secretname" not in str(info.value)


def test_client_error_is_not_retried(fake_server: FakeServer) -> None:
    fake_server.status = 400
    fake_server.body = b"Input Payload should be JSON"
    client = CogstackClient(_settings(fake_server.url, retries=3))
    with pytest.raises(CogstackError) as info:
        client.deidentify_bulk(["Mr Secretname"])
    assert info.value.code == "cogstack_http_400"
    assert len(fake_server.requests) == 1
    assert json.loads(fake_server.requests[0]) == {"content": [{"text": "Mr Secretname"}]}


def test_timeout_raises_cogstack_timeout(fake_server: FakeServer) -> None:
    fake_server.delay = 0.5
    client = CogstackClient(_settings(fake_server.url, timeout=0.1, retries=0))
    with pytest.raises(CogstackError) as info:
        client.deidentify("Mr Secretname")
    assert info.value.code == "cogstack_timeout"


@pytest.mark.parametrize(
    ("bulk", "body"),
    [
        (False, b"not json at all Mr Secretname"),
        (False, b'{"result": {"annotations": [], "success": true}}'),
        (False, b'{"result": {"text": 42, "success": true}}'),
        (False, b'{"result": {"text": "Mr Secretname", "success": false}}'),
        (False, b'{"result": [{"text": "x"}]}'),
        (False, b"[]"),
        (True, b'{"result": {"text": "x"}}'),
        (True, b'{"result": [{"text": "one"}]}'),
        (True, b'{"result": [{"text": "one"}, {"text": null}]}'),
    ],
)
def test_malformed_response_is_bad_response(
    fake_server: FakeServer, bulk: bool, body: bytes
) -> None:
    fake_server.body = body
    client = CogstackClient(_settings(fake_server.url))
    with pytest.raises(CogstackError) as info:
        if bulk:
            client.deidentify_bulk(["Mr Secretname", "Dr Othername"])
        else:
            client.deidentify("Mr Secretname")
    assert info.value.code == "cogstack_bad_response"
    assert len(fake_server.requests) == 1
    assert "Secretname" not in str(info.value)


# --- settings ------------------------------------------------------------------------------


def test_from_env_without_url_is_a_one_line_config_error() -> None:
    with pytest.raises(PixlConfigError) as info:
        CogstackSettings.from_env({})
    message = str(info.value)
    assert "PIXL_COGSTACK_URL" in message
    assert "\n" not in message


def test_from_env_reads_every_variable_and_hides_the_password() -> None:
    password = secrets.token_hex(8)  # drawn per run: no password in the repository
    settings = CogstackSettings.from_env(
        {
            "PIXL_COGSTACK_URL": "https://cogstack.example:8443/",
            "PIXL_COGSTACK_USER": "pixl",
            "PIXL_COGSTACK_PASSWORD": password,
            "PIXL_COGSTACK_TIMEOUT": "12.5",
        }
    )
    assert settings.url == "https://cogstack.example:8443"
    assert (settings.username, settings.password, settings.timeout) == ("pixl", password, 12.5)
    assert settings.host_port == "cogstack.example:8443"
    assert password not in repr(settings)
    with pytest.raises(PixlConfigError):
        CogstackSettings.from_env({"PIXL_COGSTACK_URL": "x", "PIXL_COGSTACK_TIMEOUT": "soon"})
    with pytest.raises(PixlConfigError):
        CogstackSettings.from_env({"PIXL_COGSTACK_URL": "cogstack:5000"})


# --- the stand-in as the stack runs it ----------------------------------------------------------


def test_standin_module_serves_and_client_fails_once_it_stops() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "stack.standins.cogstack_api", "--port", str(port)],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 8
        while True:
            try:
                if requests.get(f"{url}/api/health", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert process.poll() is None, "the stand-in exited"
            assert time.monotonic() < deadline, "the stand-in did not answer /api/health"
            time.sleep(0.05)
        client = CogstackClient(_settings(url, retries=1))
        assert client.deidentify("Dr Jones") == "Dr [NAME]"
    finally:
        process.terminate()
        process.wait(timeout=5)
    with pytest.raises(CogstackError) as info:
        CogstackClient(_settings(url, retries=1)).deidentify("Dr Jones")
    assert info.value.code == "cogstack_unreachable"


# --- the rule-based de-identifier ------------------------------------------------------------


def test_redact_typical_report() -> None:
    text, annotations = redact(REPORT)
    for identifier in IDENTIFIERS:
        assert identifier not in text
    for kept in KEPT:
        assert kept in text
    # Offsets point into the input and carry no text.
    for annotation in annotations:
        assert set(annotation) == {"start", "end", "type"}
        assert REPORT[annotation["start"] : annotation["end"]].strip()
    spans = {REPORT[a["start"] : a["end"]]: a["type"] for a in annotations}
    assert spans["943 476 5919"] == "NHS_NUMBER"
    assert spans["john.smith@example.com"] == "EMAIL"
    assert spans["NW1 2AB"] == "POSTCODE"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("NHS number 9434765919.", "NHS number [NHS_NUMBER]."),
        ("Hospital no: AB123456", "Hospital no: [ID]"),
        ("Ref 123456789", "Ref [ID]"),
        ("Seen on 1/2/23 and 2023-05-01", "Seen on [DATE] and [DATE]"),
        ("Since 5th of June 2021, and Mar 2019.", "Since [DATE], and [DATE]."),
        ("Call +44 (0)20 7946 0958 or bleep 4455", "Call [PHONE] or bleep [PHONE]"),
        ("Lives at Flat 3, 45 Kings Road, SW3 4NB", "Lives at [ADDRESS], [POSTCODE]"),
        ("Patient: JONES, Mary Anne", "Patient: [NAME]"),
        ("SMITH, Peter attended", "[NAME] attended"),
        ("Discussed with Prof. A. B. Clarke.", "Discussed with Prof. [NAME]."),
        ("MR JOHN SMITH. DR WALKER.", "MR [NAME]. DR [NAME]."),
        ("Copy to Xavier Patel and J. Brown", "Copy to [NAME] and [NAME]"),
        ("Mrs Ward and June Hill", "Mrs [NAME] and [NAME]"),
        ("Mrs Smith-Jones's son", "Mrs [NAME]'s son"),
        ("Dr Parkinson reviewed.", "Dr [NAME] reviewed."),
    ],
)
def test_redact_identifier_forms(source: str, expected: str) -> None:
    assert redact(source)[0] == expected


@pytest.mark.parametrize(
    "source",
    [
        "Heart size normal. Lungs clear. No pleural effusion or pneumothorax.",
        "May represent atelectasis. Will need follow-up. Ward 5. Max diameter 12 mm.",
        "Non-Hodgkin lymphoma. Hodgkin's disease. Crohn's. Graves' disease. Bell's palsy.",
        "Salter-Harris II fracture. Hill-Sachs lesion. Wolff-Parkinson-White syndrome.",
        "Barrett's oesophagus. Baker's cyst. Ann Arbor staging. Ewing sarcoma.",
        "NG tube tip below the diaphragm. ETT 4 cm above the carina. CTR 0.55. T4 and L1.",
        "Follow-up in 3/12. Dose 2.5 mGy. DAP 0.12 Gy.cm2. 12 x 8 mm at 14:30.",
        "Left IJ line tip in the SVC. Right PICC. C5/6 disc. 2 views.",
    ],
)
def test_redact_keeps_clinical_text(source: str) -> None:
    assert redact(source) == (source, [])


def test_redact_merges_overlaps_and_is_stable() -> None:
    text, annotations = redact("Contact: john.smith@nhs.net, 0161 496 0000")
    assert text == "Contact: [EMAIL], [PHONE]"
    assert [a["type"] for a in annotations] == ["EMAIL", "PHONE"]
    assert redact(text) == (text, [])
