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
# The portal's pages at a desktop and a phone width, kept from run to run for people to look at.
SCREENSHOTS = Path(__file__).resolve().parents[1] / "var" / "screenshots"

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


def wait_for(driver, condition, timeout=10):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def sign_up(driver, live_server, username="dora"):
    """A new account through the sign-up page (``live_server``: anything with a ``url``)."""
    from selenium.webdriver.common.by import By

    driver.get(f"{live_server.url}/accounts/signup/")
    driver.find_element(By.NAME, "username").send_keys(username)
    driver.find_element(By.NAME, "email").send_keys(f"{username}@example.org")
    driver.find_element(By.NAME, "password1").send_keys("a-long-pass-9")
    driver.find_element(By.NAME, "password2").send_keys("a-long-pass-9")
    driver.find_element(By.CSS_SELECTOR, "main form button").click()
    wait_for(driver, lambda d: d.current_url.endswith("/profile/"))


def log_in(driver, live_server, username, password):
    from selenium.webdriver.common.by import By

    driver.get(f"{live_server.url}/accounts/login/")
    driver.find_element(By.NAME, "username").send_keys(username)
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "main form button").click()
    wait_for(driver, lambda d: "/accounts/login/" not in d.current_url)


def emulate_width(driver, width: int, height: int = 844) -> None:
    """A phone's viewport (headless Chromium's windows are at least 500 px wide): until the driver quits."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )


def screenshot(driver, name: str) -> Path:
    """The whole page (up to 4000 px tall) at the current width, as var/screenshots/NAME.png."""
    import base64

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    width = driver.execute_script("return window.innerWidth")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": min(height, 4000), "scale": 1},
        },
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def sideways_overflow(driver) -> int:
    """How many pixels the page is wider than the window (0: nothing to scroll sideways)."""
    return driver.execute_script(
        "const e = document.documentElement; return Math.max(0, e.scrollWidth - e.clientWidth);"
    )
