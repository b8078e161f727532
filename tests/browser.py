"""Headless Debian Chromium through Selenium and Debian's chromedriver, for the browser tests.

Started with the flags this machine needs (no background networking: the network is closed) and a
fresh profile each time; screenshots go to test-artifacts/ so a failing run can be looked at. Every page
reports its Content-Security-Policy violations to the browser's log, where ``csp_violations`` reads them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

# Runs in every document before its own scripts (DevTools adds it; the page's policy does not apply to it).
REPORT_CSP_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", function (e) {
  console.error("CSP violation: " + e.violatedDirective + " blocked " + (e.blockedURI || "inline")
    + " on " + e.documentURI + (e.sample ? " (" + e.sample + ")" : ""));
});
"""

needs_browser = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="Debian chromium and chromium-driver are needed (bin/voyager setup installs them)",
)


def open_chromium(profile: Path, window: str = "1600,1000"):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--window-size={window}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": REPORT_CSP_VIOLATIONS})
    ARTIFACTS.mkdir(exist_ok=True)
    return driver


def csp_violations(driver) -> list[str]:
    """The Content-Security-Policy violations the browser saw since the last call (reading empties the log)."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if "CSP violation" in entry["message"] or "Content Security Policy" in entry["message"]
    ]
