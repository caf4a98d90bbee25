"""The viewer's page in a real browser: Debian's headless Chromium (tools/headless_browser.py,
the harness the benchmarks dashboard's test shares) on the server over tests/view_files.py's
slides. The page loads the slide and its tiles arrive, aligned with the slide's own pixels; the
overlay's pixel over a known IDC tile has the heatmap's colour at the set opacity, a tile below
the threshold is transparent, one never analysed grey and an unreadable one blue; the threshold
slider changes the number of coloured cells to tiles.csv's count; hovering names the tile's
probability; no console error, no request off the server; the list opens a moved slide as its
heatmap.png. Skipped without chromium (a failure under CI=true)."""

import csv
import os

import browser_check
import matplotlib
import numpy as np
import pytest
import view_files

# The page's canvases read back at a level-0 point (x, y): the overlay's RGBA, and the RGB
# OpenSeadragon drew of the slide there.
_PIXELS = """
const [x, y] = arguments;
const point = state.viewer.viewport.imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y));
const ratio = window.devicePixelRatio || 1, at = [Math.round(point.x * ratio), Math.round(point.y * ratio)];
const read = (canvas) => Array.from(canvas.getContext('2d').getImageData(at[0], at[1], 1, 1).data);
return {overlay: read(document.getElementById('overlay')), slide: read(state.viewer.drawer.canvas)};
"""
_LOADED = """
return Boolean(state.viewer && state.overlay && state.viewer.world.getItemCount()
               && state.viewer.world.getItemAt(0).getFullyLoaded() && !state.viewer.isAnimating?.());
"""
_SET = """
const [id, value] = arguments, input = document.getElementById(id);
if (input.type === 'checkbox') input.checked = value; else input.value = value;
input.dispatchEvent(new Event(input.type === 'checkbox' ? 'change' : 'input'));
return [state.coloured, document.getElementById('count').textContent];
"""


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return view_files.write_out(tmp_path_factory.mktemp("view_browser"))


def _tiles(out) -> list[dict]:
    with open(os.path.join(out["out"], "ok", "tiles.csv")) as f:
        return [{"x": int(r["x"]), "y": int(r["y"]), "p": float(r["idc_probability"]),
                 "idc": r["idc"] == "1"} for r in csv.DictReader(f)]


def _centre(tile: dict) -> tuple[float, float]:
    return tile["x"] + view_files.CELL / 2, tile["y"] + view_files.CELL / 2


def _wait(driver, script: str, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(
        lambda d: d.execute_script(script))


def _close(rgba, expected) -> bool:
    """Whether a canvas pixel is the RGBA expected: the canvas keeps colours premultiplied by
    alpha, so reading back a colour at alpha a may be off by about 255 / a."""
    tolerance = 2 + 255 / max(expected[3], 1)
    return abs(rgba[3] - expected[3]) <= 1 and all(
        abs(a - b) <= tolerance for a, b in zip(rgba[:3], expected[:3]))


def test_the_page_shows_the_slide_its_overlay_and_recolours_at_the_threshold(out, tmp_path):
    browser = browser_check.require_browser()
    from selenium.webdriver.common.action_chains import ActionChains

    tiles = _tiles(out)
    top = max(tiles, key=lambda t: t["p"])
    below = next(t for t in tiles if 0.05 < t["p"] < 0.45)
    middle = [t for t in tiles if 0.5 <= t["p"] < 0.8]
    glass = (0 + view_files.CELL / 2, 0 + view_files.CELL / 2)  # cell (0, 0): no patch there
    assert (0, 0) not in {(t["x"], t["y"]) for t in tiles} and middle
    colour = np.round(np.asarray(matplotlib.colormaps["magma_r"](top["p"])[:3]) * 255)
    served = view_files.Served(out["out"])
    base = f"http://127.0.0.1:{served.port}/"
    try:
        with browser.chromium(1200, 800, logs=True) as driver:
            driver.get("about:blank")
            browser.console_errors(driver), browser.requested_urls(driver)  # the start's own
            driver.get(base + "#slide=ok")
            _wait(driver, _LOADED)
            pixels = driver.execute_script(_PIXELS, *_centre(top))
            # the slide's tiles arrived where the slide has tissue, glass where it has none
            assert sum(pixels["slide"][:3]) < 3 * 235, pixels
            assert driver.execute_script(_PIXELS, *glass)["slide"][:3] == [255, 255, 255]
            # the IDC tile in the heatmap's colour at opacity 0.6; below the threshold nothing;
            # never analysed: grey, unlike either
            assert _close(pixels["overlay"], [*colour, round(0.6 * 255)]), pixels
            assert driver.execute_script(_PIXELS, *_centre(below))["overlay"][3] == 0
            unanalysed = driver.execute_script(_PIXELS, *glass)["overlay"]
            assert _close(unanalysed, [110, 110, 110, round(0.6 * 115)]), unanalysed
            (col, row), = out["unreadable"].tolist()
            unreadable = driver.execute_script(_PIXELS, (col + 0.5) * view_files.CELL,
                                               (row + 0.5) * view_files.CELL)["overlay"]
            assert _close(unreadable, [33, 150, 243, round(0.6 * 255)]), unreadable
            driver.save_screenshot(str(tmp_path / "viewer.png"))
            # the threshold recolours in the page: as many cells as tiles.csv has at 0.8
            coloured, text = driver.execute_script(_SET, "threshold", 0.8)
            assert coloured == sum(t["p"] >= 0.8 for t in tiles) == int(text.split()[0])
            assert coloured < sum(t["idc"] for t in tiles)  # negative control: it changed
            assert driver.execute_script(_PIXELS, *_centre(middle[0]))["overlay"][3] == 0
            # opacity, then the overlay off
            driver.execute_script(_SET, "opacity", 0.2)
            assert _close(driver.execute_script(_PIXELS, *_centre(top))["overlay"],
                          [*colour, round(0.2 * 255)])
            driver.execute_script(_SET, "overlay-on", False)
            assert driver.execute_script(_PIXELS, *_centre(top))["overlay"] == [0, 0, 0, 0]
            # hovering names the tile and its probability
            point = driver.execute_script(
                "const p = state.viewer.viewport.imageToViewerElementCoordinates("
                "new OpenSeadragon.Point(...arguments)); const r = "
                "state.viewer.canvas.getBoundingClientRect(); return [p.x - r.width / 2, "
                "p.y - r.height / 2];", *_centre(top))
            viewer = driver.find_element("id", "viewer")
            ActionChains(driver).move_to_element_with_offset(viewer, *map(int, point)).perform()
            readout = _wait(driver, "return document.getElementById('readout').textContent")
            cell = (top["x"] // view_files.CELL, top["y"] // view_files.CELL)
            assert f"tile ({cell[0]}, {cell[1]})" in readout and f"{top['p']:.4f}" in readout
            # the list: every slide; a moved one opens as its heatmap.png, with its message
            rows = driver.find_elements("css selector", "#slides tbody tr")
            assert [r.get_attribute("data-name") for r in rows] == [
                "labelled", "moved", "ok", view_files.REPLACED]
            rows[1].click()
            _wait(driver, "const img = document.getElementById('heatmap'); return !img.hidden "
                          "&& img.complete && img.naturalWidth > 0")
            assert "no longer there" in driver.find_element("id", "message").text
            rows[2].click()
            _wait(driver, _LOADED)
            # no console error, no request but to the server, the tiles among them
            errors, urls = browser.console_errors(driver), browser.requested_urls(driver)
            assert errors == []
            assert urls and all(url.startswith(base) for url in urls), urls
            assert any("/slide_files/" in url for url in urls)
            # negative control: a request off the server is refused by the page's policy, and
            # the console check sees it
            driver.execute_script("fetch('http://192.0.2.1/x').catch(() => null)")
            _wait(driver, "return true", 1)
            refused = browser.console_errors(driver)
            assert any("Content Security Policy" in e for e in refused), refused
    finally:
        served.close()
