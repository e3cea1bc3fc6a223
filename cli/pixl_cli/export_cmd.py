"""``pixl export-patient-data PROJECT``: ask the EHR module to push the parquet files to the DSH.

The export runs inside the EHR service (it holds the FTPS settings and builds the radiology
parquet next to the database), so this command is only an HTTP client of
``POST {PIXL_EHR_URL}/export/{project}``, authenticated with ``Authorization: Bearer
$PIXL_EHR_TOKEN`` (the service's token; ``.demo/env`` holds the demo's). It prints the counts
the service answers with, which name no patient; errors are one line and a non-zero exit (2 for
what the operator must fix: an unknown project, PIXL_EHR_URL unset or unreachable, the token
missing or wrong; 1 for the rest).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import typer

from pixl_cli.output import console, operator_errors
from pixl_core.config.projects import SLUG_RULE, is_valid_slug
from pixl_core.env import env_number
from pixl_core.errors import PixlConfigError, PixlError

if TYPE_CHECKING:
    import requests

EHR_URL_ENV = "PIXL_EHR_URL"
EHR_TOKEN_ENV = "PIXL_EHR_TOKEN"
TIMEOUT_ENV = "PIXL_EXPORT_TIMEOUT"
EXTRACT_ID_MAX = 2**63 - 1  # extract.id is a bigint


def _ehr_url() -> str:
    url = os.environ.get(EHR_URL_ENV, "").strip().rstrip("/")
    if not url:
        raise PixlConfigError(
            f"{EHR_URL_ENV} is not set: export the EHR service's URL, e.g. "
            f"{EHR_URL_ENV}=http://127.0.0.1:17108 (`make demo` starts one)"
        )
    return url


def _auth_headers() -> dict[str, str]:
    """The bearer token, when set; a service that needs one answers 401, named below."""
    token = os.environ.get(EHR_TOKEN_ENV, "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _detail(response: requests.Response) -> str:
    """The service's one-line error, or the HTTP status if it sent none."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, str) and detail.strip():
        return detail.strip().splitlines()[0]
    return f"the EHR service answered HTTP {response.status_code}"


def request_export(project: str, extract_id: int | None = None) -> dict[str, Any]:
    """POST the export request and return the service's counts, or raise a one-line error."""
    import requests  # ~0.1 s: only when a request is made

    url = _ehr_url()
    params = {"extract_id": extract_id} if extract_id is not None else None
    try:
        response = requests.post(
            f"{url}/export/{project}",
            params=params,
            headers=_auth_headers(),
            timeout=(10, env_number(TIMEOUT_ENV, 3600.0, float, positive=True)),
        )
    except requests.Timeout:
        raise PixlError(
            f"the EHR service at {EHR_URL_ENV}={url} did not finish the export in time: it may "
            f"still be running; run the command again later (or raise {TIMEOUT_ENV})"
        ) from None
    except requests.RequestException as exc:
        raise PixlConfigError(
            f"cannot reach the EHR service at {EHR_URL_ENV}={url} ({type(exc).__name__}): start "
            f"it (`make demo` starts the local stack) or fix {EHR_URL_ENV}"
        ) from None
    if response.status_code == 401:
        given = "is wrong" if _auth_headers() else "is not set"
        raise PixlConfigError(
            f"the EHR service at {EHR_URL_ENV}={url} refused the request: {EHR_TOKEN_ENV} "
            f"{given}; set it to the service's token (the demo's is in .demo/env)"
        )
    if response.status_code == 404:
        raise PixlConfigError(_detail(response))
    if response.status_code == 503:
        # The service could not reach the project's DSH server (it answers with the FTPS
        # step that failed: host:port and the reason, never data).
        raise PixlError(
            f"the DSH did not take the export ({_detail(response)}): check that the server "
            f"named under destination: in projects/{project}.yaml is up and reachable from "
            "the EHR service, then run the command again (nothing is sent twice)"
        )
    if response.status_code != 200:
        raise PixlError(_detail(response))
    try:
        body = response.json()
    except ValueError:
        raise PixlError("the EHR service answered with something that is not JSON") from None
    if not isinstance(body, dict):
        raise PixlError("the EHR service answered with something that is not a JSON object")
    return body


def export_patient_data(
    project: str = typer.Argument(..., help="Project slug, e.g. chest-xray."),
    extract_id: int | None = typer.Option(
        None, "--extract-id", help="Export this extract instead of the project's latest."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print the counts as JSON."),
) -> None:
    """Push the project's public and radiology parquet files to the DSH via the EHR service.

    Running it again sends only what is not already there.
    """
    with operator_errors():
        # Checked here too, so a typo is one line even before the service is reached.
        if not is_valid_slug(project):
            raise PixlConfigError(f"PROJECT must be a project slug ({SLUG_RULE})")
        if extract_id is not None and not 1 <= extract_id <= EXTRACT_ID_MAX:
            raise PixlConfigError(
                "--extract-id must be a whole number from 1 to 2^63-1 (the id `pixl populate` "
                "recorded)"
            )
        result = request_export(project, extract_id)
    if json_output:
        console.print_json(json.dumps(result))
        return
    console.print(
        f"{result.get('project', project)}: {result.get('files_sent', 0)} files sent, "
        f"{result.get('files_skipped', 0)} already in the DSH, "
        f"{result.get('reports_exported', 0)} reports exported "
        f"({result.get('reports_in_parquet', 0)} in the radiology parquet, "
        f"{result.get('reports_flagged', 0)} awaiting review, "
        f"{result.get('reports_in_progress', 0)} still in progress"
        + (
            f", {result['reports_withheld']} withheld: text not the one a reviewer released"
            if result.get("reports_withheld")
            else ""
        )
        + ") "
        f"to {result.get('destination', '?')}",
        highlight=False,
        soft_wrap=True,
    )
