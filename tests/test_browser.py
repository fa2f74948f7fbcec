"""The web pages in a real browser: Debian's chromium, driven through
chromium-driver (WebDriver) by Selenium, against the real daemon fed
phantom studies by storescu.

The browser is refused without credentials, signs in, sees an urgent study
appear on the live list, opens it and sees its heat map, and retries the
SR's dead letter. With ``TRIAGE_TEST_SCREENSHOTS=DIR`` it leaves a
screenshot of each page there (``docs/screenshots`` holds the last ones).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.peers import WEB_PASSWORD, WEB_USER, TriageDaemon, urgent_oct_studies

pytestmark = pytest.mark.network

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WAIT_SECONDS = 90


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.fail("chromium and chromium-driver are needed: bash tests/install_system_deps.sh")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # the tests run as root in a network namespace
        "--disable-dev-shm-usage",
        "--window-size=1366,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
    ):
        options.add_argument(argument)
    # The driver named, so that Selenium Manager never looks for one online.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _screenshot(driver: WebDriver, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("TRIAGE_TEST_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(folder / f"{name}.png"))


def _sign_in(driver: WebDriver) -> None:
    driver.find_element(By.NAME, "user").send_keys(WEB_USER)
    driver.find_element(By.NAME, "password").send_keys(WEB_PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "form.signin button").click()


def _until(driver: WebDriver, found, reload: bool = False):  # type: ignore[no-untyped-def]
    """Wait for ``found(driver)``; with ``reload``, reload the page between tries."""

    def ask(d: WebDriver):  # type: ignore[no-untyped-def]
        result = found(d)
        if not result and reload:
            d.refresh()
        return result

    return WebDriverWait(driver, WAIT_SECONDS, poll_frequency=1).until(ask)


def test_a_study_followed_in_the_browser(
    tmp_path: Path, web_daemon: TriageDaemon, browser: WebDriver
) -> None:
    base = web_daemon.web_url

    # Without credentials: the sign-in page, never the list.
    browser.get(base + "/")
    assert "/login" in browser.current_url
    assert not browser.find_elements(By.CSS_SELECTOR, "table.studies")
    _sign_in(browser)
    _until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "table.studies"))
    assert not browser.find_elements(By.CSS_SELECTOR, "#study-rows a")  # nothing yet

    # A study arrives while the list is open: it appears without a reload.
    files = urgent_oct_studies(tmp_path)
    sent = web_daemon.storescu(files)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    link = _until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#study-rows a"))[0]
    row = browser.find_element(By.CSS_SELECTOR, "#study-rows tr")
    assert "urgent" in row.text and "OCT" in row.text
    _screenshot(browser, "urgent-list", tmp_path)

    # The study: each image's result, the model, and the heat map, drawn.
    link.click()
    heatmap = _until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "img.heatmap"), True)[0]
    _until(browser, lambda d: d.execute_script("return arguments[0].naturalWidth", heatmap) > 0)
    assert browser.find_elements(By.CSS_SELECTOR, "table.probabilities meter")
    assert "sha256" in browser.page_source.lower() or "SHA-256" in browser.page_source
    _screenshot(browser, "study", tmp_path)

    # The SR's destination is down: its dead letter, retried from the outbox.
    browser.get(base + "/outbox")

    def dead_letter(d: WebDriver):  # type: ignore[no-untyped-def]
        tables = d.find_elements(By.CSS_SELECTOR, "table.deliveries")
        return tables and tables[0].find_elements(By.CSS_SELECTOR, "button")

    _until(browser, dead_letter, reload=True)
    _screenshot(browser, "outbox", tmp_path)
    dead = browser.find_elements(By.CSS_SELECTOR, "table.deliveries")[0]
    retried_id = dead.find_element(By.CSS_SELECTOR, "td.number").text
    dead.find_element(By.CSS_SELECTOR, "button").click()
    _until(browser, lambda d: d.current_url.endswith("/outbox"))
    rows = web_daemon.database().execute(
        "select event, detail from audit_events where event = 'delivery-retried'"
    )
    assert any(f"delivery {retried_id} " in detail for _, detail in rows.fetchall())

    # Signed out: refused again.
    browser.find_element(By.CSS_SELECTOR, "form.signout button").click()
    _until(browser, lambda d: "/login" in d.current_url)
    browser.get(base + "/outbox")
    assert "/login" in browser.current_url
