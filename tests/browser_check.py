"""The browser tests' gate: tools/headless_browser.py (Debian's headless Chromium through
Selenium), or a skip naming what is missing; under CI=true a failure instead, so CI (.ci/run
installs chromium and chromium-driver first) always runs the browser tests."""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import headless_browser  # noqa: E402


def require_browser():
    """tools/headless_browser.py, once chromium, chromedriver and selenium are all there."""
    missing = headless_browser.missing()
    if missing:
        message = (f"the browser test needs {', '.join(missing)}: apt-get install chromium "
                   "chromium-driver (BUILD.md)")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return headless_browser
