"""Finding 10: hostile arguments to ``pixl rate`` and to the EHR service's export.

``pixl rate nan`` was stored and switched orthanc-raw's rate limit off; a long project slug or a
huge ``extract_id`` made the EHR service answer 500. Now the rate is refused with one line and
left as it was, and the service answers 4xx with one line that does not echo the value. On the
old code ``rate nan`` exits 0 and the service answers 500.
"""

from __future__ import annotations

import pytest
import requests

from stack.driver import Stack

pytestmark = pytest.mark.system


def _stored_rate(stack: Stack) -> list[tuple[float, int]]:
    return stack.query(
        "SELECT studies_per_second, max_in_flight FROM fetch_rate WHERE project = '*'"
    )


# `pixl rate 0` alone pauses (issue 10; tested in tests/integration/test_operator_cli.py, not
# here: it would pause this shared stack); with --in-flight it is refused like the others.
@pytest.mark.parametrize(
    "args",
    [["--", "nan"], ["--", "inf"], ["--", "-1"], ["--in-flight", "2", "0"]],
    ids=["nan", "inf", "-1", "0"],
)
def test_rate_that_would_switch_the_limit_off_is_refused(stack: Stack, args: list[str]):
    before = _stored_rate(stack)
    result = stack.pixl("rate", *args, check=False)
    assert result.returncode == 2, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "the rate must be a number of studies per second" in lines[0]
    assert _stored_rate(stack) == before


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/export/" + "a" * 5_000, 404),  # longer than a file name may be: was a 500
        ("/export/" + "a" * 100_000, None),  # any 4xx (the HTTP server may refuse it first)
        ("/export/chest-xray?extract_id=" + "9" * 40, 422),  # beyond bigint: was a 500
        ("/export/chest-xray?extract_id=-1", 422),
    ],
)
def test_ehr_service_answers_hostile_parameters_with_a_one_line_4xx(
    stack: Stack, path: str, status: int | None
):
    # With the bearer token: the parameters, not the missing credentials, must be what is refused.
    token = stack.settings.secrets["PIXL_EHR_TOKEN"]
    response = requests.post(
        stack.settings.url("ehr") + path, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    if status is None:
        assert 400 <= response.status_code < 500, response.status_code
    else:
        assert response.status_code == status, response.text[:300]
        detail = response.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail
        assert "a" * 100 not in detail and "9" * 40 not in detail
