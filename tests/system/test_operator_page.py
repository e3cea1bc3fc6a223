"""The operator's page in a real browser: Debian's chromium, headless, driven by selenium through
Debian's chromium-driver, against the shared session stack.

What it proves: Orthanc Explorer has a "PIXL" button that opens ``/pixl/ui/``; the page shows
the numbers PIXL's database holds (states and reasons); pressing Pause on the page stops new
C-MOVEs, counted in the VNA's own log for this test's studies, while their work stays queued
(never failed); Resume lets them through. Screenshots of both Orthancs' pages are saved in the
test's temporary folder. The browser sends the Orthanc user's credentials as a header (Chrome
DevTools ``Network.setExtraHTTPHeaders``), the way a logged-in browser does.
"""

from __future__ import annotations

import base64
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from pixl_core.db.states import STUDY_STATES
from stack.driver import Stack
from stack.synthetic.dicom_builder import base_dataset, to_bytes
from tests.fixtures.stack import MAIN

pytestmark = pytest.mark.system

PROJECT = "operator-page"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
N_STUDIES = 8


class Study:
    """A synthetic CR study of one instance, with its own patient."""

    def __init__(self, n: int) -> None:
        tag = f"OPPAGE{n:02d}"
        self.mrn = f"{tag}MRN"
        self.accession = f"{tag}ACC"
        self.uid = f"2.25.8800{zlib.crc32(tag.encode())}"
        self.data = to_bytes(
            base_dataset(
                sop_uid=self.uid + ".1.1",
                study_uid=self.uid,
                series_uid=self.uid + ".1",
                patient_id=self.mrn,
                accession=self.accession,
                patient_name=f"PAGE^{tag}",
            )
        )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("chromium and chromium-driver are not installed: run `make system-deps`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # runs as root here
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Network.enable", {})
    try:
        yield driver
    finally:
        driver.quit()


def log_in(driver: Any, password: str) -> None:
    token = base64.b64encode(f"pixl:{password}".encode()).decode()
    driver.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
    )


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.5)


def db_states(stack: Stack, project: str) -> dict[str, int]:
    counts = dict.fromkeys(STUDY_STATES, 0)
    counts.update(
        dict(
            stack.query("SELECT state, count(*) FROM study WHERE project = %s GROUP BY 1", project)
        )
    )
    return counts


def page_states(driver: Any, project: str) -> dict[str, int] | None:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, f'#studies tr[data-project="{project}"]')
    if not rows:
        return None
    cells = rows[0].find_elements(By.CSS_SELECTOR, "td[data-state]")
    return {cell.get_attribute("data-state"): int(cell.text) for cell in cells}


def page_reasons(driver: Any, project: str) -> str:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, f'#studies tr[data-reasons-for="{project}"]')
    return rows[0].text if rows else ""


def moves_of(stack: Stack, resource_ids: set[str]) -> int:
    """C-MOVEs the VNA served for these studies, from its own log."""
    sent = stack.vna_sent_resources()
    return sum(sent[resource] for resource in resource_ids)


def test_the_page_shows_the_database_and_its_pause_stops_the_vna_traffic(
    stack: Stack,
    first_run: dict[str, int],
    browser: Any,
    tmp_path: Path,
    request: pytest.FixtureRequest,
):
    from selenium.webdriver.common.by import By

    studies = [Study(n) for n in range(N_STUDIES)]
    resource_ids: set[str] = set()
    for study in studies:
        response = requests.post(
            stack.settings.url("vna") + "/instances",
            data=study.data,
            headers={"Content-Type": "application/dicom"},
            timeout=60,
        )
        response.raise_for_status()
        answer = response.json()
        resource_ids |= {answer["ID"], answer["ParentSeries"], answer["ParentStudy"]}
    # Slow enough that most studies are still queued when Pause is pressed.
    stack.pixl("rate", "0.5", "--in-flight", "1", "--project", PROJECT)
    csv = tmp_path / "cohort.csv"
    csv.write_text(
        "mrn,accession_number,study_datetime\n"
        + "".join(f"{s.mrn},{s.accession},\n" for s in studies)
    )

    # Explorer's top bar has the PIXL button, and it opens the page.
    log_in(browser, stack.settings.secrets["PIXL_ORTHANC_RAW_PASSWORD"])
    raw = stack.settings.url("raw")
    browser.get(raw + "/app/explorer.html")
    button = wait_for(
        lambda: [
            b for b in browser.find_elements(By.CSS_SELECTOR, ".pixl-button") if b.is_displayed()
        ],
        20,
        "the PIXL button in Orthanc Explorer",
    )[0]
    assert button.text.strip() == "PIXL"
    browser.save_screenshot(str(tmp_path / "explorer-raw.png"))
    button.click()
    wait_for(lambda: browser.current_url.endswith("/pixl/ui/"), 10, "the page to open")
    wait_for(lambda: page_states(browser, MAIN), 20, "the page to render the projects")

    # The main project's row and reasons are what the database holds.
    assert page_states(browser, MAIN) == db_states(stack, MAIN)
    refused = stack.query(
        "SELECT last_error_code, count(*) FROM study WHERE project = %s AND state = 'refused' "
        "GROUP BY 1",
        MAIN,
    )
    assert refused, "the main project's first run has a refused study (wrong modality)"
    for code, count in refused:
        assert f"{code} {count}" in page_reasons(browser, MAIN)

    stack.pixl("populate", str(csv), "--project", PROJECT)
    wait_for(lambda: moves_of(stack, resource_ids) >= 1, 60, "a first C-MOVE of the page's project")
    browser.refresh()
    pause = wait_for(
        lambda: browser.find_elements(
            By.CSS_SELECTOR, f'button[data-action="pause"][data-project="{PROJECT}"]'
        ),
        20,
        "the project's Pause button",
    )[0]
    pause.click()
    request.addfinalizer(lambda: stack.pixl("resume", PROJECT, check=False))
    wait_for(
        lambda: (
            stack.query("SELECT paused, paused_by FROM fetch_control WHERE project = %s", PROJECT)
            == [(True, "page:pixl")]
        ),
        10,
        "the pause to be stored",
    )
    # What was already claimed finishes; then nothing more is asked of the VNA.
    wait_for(lambda: db_states(stack, PROJECT)["fetching"] == 0, 60, "in-flight fetches to end")
    time.sleep(2)
    before = moves_of(stack, resource_ids)
    held = db_states(stack, PROJECT)
    time.sleep(8)  # four rate slots of the project
    assert moves_of(stack, resource_ids) == before, "a C-MOVE was sent while paused"
    after = db_states(stack, PROJECT)
    assert after["queued"] == held["queued"] > 0
    assert after["failed"] == 0

    # The page says so, and shows exactly the database's counts.
    wait_for(lambda: page_states(browser, PROJECT) == db_states(stack, PROJECT), 15, "page = db")
    status = browser.find_element(
        By.CSS_SELECTOR, f'#studies tr[data-project="{PROJECT}"] td[data-fetch]'
    )
    assert status.get_attribute("data-fetch") == "paused"
    assert "PAUSED" in status.text
    cli = stack.pixl("status", PROJECT).stdout
    assert "PAUSED" in cli and f"pixl resume {PROJECT}" in cli
    page_text = browser.page_source
    for study in studies:
        assert study.mrn not in page_text and study.accession not in page_text
    browser.save_screenshot(str(tmp_path / "pixl-ui-raw.png"))

    # Resume on the page: the rest is fetched and exported.
    browser.find_element(
        By.CSS_SELECTOR, f'button[data-action="resume"][data-project="{PROJECT}"]'
    ).click()
    counts = stack.wait_until_settled([PROJECT], timeout=120).studies[PROJECT]
    assert counts["exported"] == N_STUDIES
    assert moves_of(stack, resource_ids) > before

    # orthanc-anon's page: its own figures, for every project.
    log_in(browser, stack.settings.secrets["PIXL_ORTHANC_PASSWORD"])
    browser.get(stack.settings.url("anon") + "/pixl/ui/")
    wait_for(lambda: page_states(browser, PROJECT) == db_states(stack, PROJECT), 20, "anon page")
    anon_rows = browser.find_elements(By.CSS_SELECTOR, f'#anon tr[data-project="{PROJECT}"]')
    assert anon_rows and "reachable" in anon_rows[0].text
    browser.save_screenshot(str(tmp_path / "pixl-ui-anon.png"))
    for name in ("explorer-raw.png", "pixl-ui-raw.png", "pixl-ui-anon.png"):
        assert (tmp_path / name).stat().st_size > 10_000
