"""A real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium) for the
console's tests, and logging in to the console with it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from .process import wait_for

ARTIFACTS = Path(__file__).parents[2] / "artifacts"  # the test run's screenshots


@contextmanager
def chromium(profile: Path) -> Iterator[webdriver.Chrome]:
    """Headless Chromium with a fresh profile in ``profile``, phone-sized."""
    if shutil.which("chromium") is None or not Path("/usr/bin/chromedriver").exists():
        pytest.fail("the console test needs Debian's chromium and chromium-driver "
                    "(scripts/test installs them)", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                 "--window-size=420,1400"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def log_in(driver: webdriver.Chrome, url: str, token: str) -> None:
    """Open the console at ``url`` and log in with ``token``."""
    driver.get(url)
    driver.find_element(By.NAME, "token").send_keys(token)
    submit(driver)


def submit(driver: webdriver.Chrome) -> None:
    """Press the form's submit button and wait for its answer to replace the page: a page
    asked for before that would cancel the POST, and with it the log-in's cookie."""
    driver.execute_script("window.beforeSubmit = true")
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

    def replaced() -> bool:
        try:
            return bool(driver.execute_script(
                "return window.beforeSubmit === undefined && document.readyState === 'complete'"))
        except WebDriverException:
            return False  # between the two documents
    wait_for(replaced)


def reload_until(driver: webdriver.Chrome, url: str, text: str, timeout: float = 30) -> None:
    """Reload ``url`` until its page shows ``text`` (the service lists it after a pass)."""
    def shown() -> bool:
        driver.get(url)
        return text in body_text(driver)
    wait_for(shown, timeout=timeout)


def body_text(driver: webdriver.Chrome) -> str:
    """The page's text; empty while a form's answer is still replacing the page."""
    try:
        return str(driver.find_element(By.TAG_NAME, "body").text)
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def screenshot(driver: webdriver.Chrome, name: str) -> Path:
    """Save the page as ``name`` among the test run's artifacts."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    return path
