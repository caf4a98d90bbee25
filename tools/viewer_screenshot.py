"""The slide viewer's page in headless Chromium, for the docs: python -m idc_engine.view on an
OUT folder, a slide opened, its most probable IDC tile clicked (outlined, its readout shown), a
screenshot.

    make demo
    python tools/viewer_screenshot.py --output_dir=runs/demo/slides --output=docs/figures/viewer.png
    python tools/viewer_screenshot.py --output_dir=runs/demo/slides --zoom=1 \
        --output=docs/figures/viewer_zoom.png      # centred on that tile, at full resolution

Needs Debian's chromium and chromium-driver and selenium (tools/headless_browser.py).
"""

import csv
import os
import re
import subprocess
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import headless_browser  # noqa: E402

flags.DEFINE_string("output_dir", "runs/demo/slides", "The folder idc-slide wrote into.")
flags.DEFINE_string("slide", "", "The slide (its folder's name) to show; default: the first.")
flags.DEFINE_string("output", "docs/figures/viewer.png", "The PNG to write.")
flags.DEFINE_float("zoom", 0, "Screen pixels per level-0 pixel, centred on the tile; 0: the "
                   "whole slide (the page's opening view).")
flags.DEFINE_integer("width", 1400, "Window width, pixels.")
flags.DEFINE_integer("height", 800, "Window height, pixels.")

_LOADED = """
return Boolean(state.viewer && state.overlay && state.viewer.world.getItemCount()
               && state.viewer.world.getItemAt(0).getFullyLoaded());
"""
_ZOOM = """
const [x, y, zoom] = arguments, viewport = state.viewer.viewport;
viewport.zoomTo(viewport.imageToViewportZoom(zoom), null, true);
viewport.panTo(viewport.imageToViewportCoordinates(x, y), true);
"""
_OFFSET = """
const p = state.viewer.viewport.imageToViewerElementCoordinates(new OpenSeadragon.Point(...arguments));
const r = state.viewer.canvas.getBoundingClientRect();
return [p.x - r.width / 2, p.y - r.height / 2];
"""


def most_probable_tile(folder: str) -> tuple[float, float]:
    """The level-0 centre of the tile of tiles.csv with the highest P(IDC)."""
    with open(os.path.join(folder, "tiles.csv")) as f:
        top = max(csv.DictReader(f), key=lambda r: float(r["idc_probability"]))
    return int(top["x"]) + int(top["width"]) / 2, int(top["y"]) + int(top["height"]) / 2


def main(argv) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import WebDriverWait

    values = flags.FLAGS
    process = subprocess.Popen([sys.executable, "-m", "idc_engine.view", values.output_dir,
                                "--port=0"], stdout=subprocess.PIPE, text=True)
    try:
        url = re.search(r"http://127\.0\.0\.1:\d+/", process.stdout.readline()).group(0)
        with headless_browser.chromium(values.width, values.height) as driver:
            driver.get(url + (f"#slide={values.slide}" if values.slide else ""))
            WebDriverWait(driver, 60, 0.2).until(lambda d: d.execute_script(_LOADED))
            name = driver.execute_script("return state.slide.name")
            x, y = most_probable_tile(os.path.join(values.output_dir, name))
            if values.zoom:
                driver.execute_script(_ZOOM, x, y, values.zoom)
                WebDriverWait(driver, 60, 0.2).until(lambda d: d.execute_script(_LOADED))
            time.sleep(1)  # the opening animation ends
            offset = driver.execute_script(_OFFSET, x, y)
            ActionChains(driver).move_to_element_with_offset(
                driver.find_element("id", "viewer"), *map(int, offset)).click().perform()
            time.sleep(0.5)
            driver.save_screenshot(values.output)
    finally:
        process.terminate()
        process.wait(timeout=30)
    print(f"wrote {values.output}")


if __name__ == "__main__":
    app.run(main)
