"""Headless Chromium driven by Selenium, for the browser tests and the docs' screenshots: the
benchmarks' TensorBoard dashboard (tools/benchmarks_dashboard.py) and the slide viewer
(tools/viewer_screenshot.py, tests/test_view_browser.py).

Needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver: no
browser is downloaded) and selenium (the dev extra). Each browser gets a new empty profile and
no background networking, so the only requests it makes are the page's.
"""

import contextlib
import json
import os
import tempfile

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")


def missing() -> list[str]:
    """What this machine lacks to run the browser ([] when nothing)."""
    absent = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        absent.append("the selenium package (pip install -e '.[dev]')")
    return absent


@contextlib.contextmanager
def chromium(width: int = 1400, height: int = 1000, logs: bool = False):
    """A headless Chromium driven by Selenium, with a new empty profile. logs: keep the page's
    console messages and the browser's network events, for console_errors and requested_urls."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    if logs:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    with tempfile.TemporaryDirectory(prefix="chromium_profile_") as profile:
        for flag in CHROMIUM_FLAGS + (f"--window-size={width},{height}",
                                      f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def console_errors(driver) -> list[str]:
    """The page's console errors (and failed loads, which Chromium logs there) since the last
    call; needs chromium(logs=True)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def requested_urls(driver) -> list[str]:
    """Every URL the browser requested since the last call, from its network events; needs
    chromium(logs=True)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls
