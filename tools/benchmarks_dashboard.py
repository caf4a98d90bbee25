"""The benchmarks' custom-scalars dashboard in a real browser: TensorBoard on a folder, headless
Chromium on its page, the charts read back from the page and a screenshot.

    python -m benchmarks.all --quick --output_dir=OUT     # twice: two points per setting
    python tools/benchmarks_dashboard.py --logdir=OUT/tensorboard --category=train_step \\
        --output=docs/figures/benchmarks_dashboard.png
    python tools/benchmarks_dashboard.py --logdir=OUT/tensorboard --category=input_pipeline \\
        --output=docs/figures/benchmarks_dashboard_input_pipeline.png
    python tools/benchmarks_dashboard.py --logdir=OUT/tensorboard --category=train_step \\
        --page=text --output=docs/figures/benchmarks_provenance.png

Needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver) and
selenium (the dev extra): tools/headless_browser.py, the harness the viewer's browser test shares.
tests/test_benchmarks_tensorboard.py drives the same functions.
The page opens with smoothing 0 (each point is one measurement) and, for the screenshot,
"Ignore outliers in chart scaling" unticked (with a few points it hides real ones).
"""

import contextlib
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run as a script or imported
from headless_browser import CHROMEDRIVER, CHROMIUM, chromium  # noqa: E402, F401

PAGE = "#custom_scalars&_smoothingWeight=0"

# Every custom-scalars chart card of the page: its category, title and the series it drew
# ({"<tag> (<run>)": [[step, value], ...]}), read through the shadow roots of TensorBoard's
# Polymer elements (vz-line-chart2 keeps the series it plotted in _seriesDataCache).
_ALL_ELEMENTS = """
function all(root, out) {
  for (const el of root.querySelectorAll('*')) {
    out.push(el);
    if (el.shadowRoot) all(el.shadowRoot, out);
  }
  return out;
}
"""
_READ_CHARTS = _ALL_ELEMENTS + """
const charts = [];
for (const view of all(document, []).filter(e => e.localName == 'tf-category-paginated-view')) {
  const category = view.category ? view.category.name : null;
  for (const card of all(view, []).concat(view.shadowRoot ? all(view.shadowRoot, []) : [])
                          .filter(e => e.localName == 'tf-custom-scalar-multi-line-chart-card')) {
    const plot = all(card.shadowRoot, []).find(e => e.localName == 'vz-line-chart2');
    const cache = (plot && plot._seriesDataCache) || {};
    charts.push({category: category, title: card.title, series: Object.fromEntries(
      Object.entries(cache).map(([name, points]) => [name, points.map(p => [p.step, p.scalar])]))});
  }
}
return charts;
"""


@contextlib.contextmanager
def tensorboard(logdir: str, timeout: float = 60):
    """TensorBoard serving `logdir` on a free localhost port; yields its base URL."""
    process = subprocess.Popen([sys.executable, "-m", "tensorboard.main", f"--logdir={logdir}",
                                "--host=127.0.0.1", "--port=0"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout],
                     daemon=True).start()
    try:
        deadline, url = time.monotonic() + timeout, None
        while url is None:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"TensorBoard did not start within {timeout} s") from None
            found = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
            url = found and found.group(1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def wait_for_runs(base_url: str, runs: set[str], timeout: float = 60) -> None:
    """Until TensorBoard's loader has found every run of `runs` (it reads in the background)."""
    deadline = time.monotonic() + timeout
    while not runs <= set(get_json(base_url + "data/runs")):
        if time.monotonic() > deadline:
            raise RuntimeError(f"TensorBoard lists {get_json(base_url + 'data/runs')}, not all "
                               f"of {sorted(runs)}, after {timeout} s")
        time.sleep(0.5)


def open_custom_scalars(driver, base_url: str, runs_filter: str = "",
                        timeout: float = 60) -> None:
    """Opens the custom-scalars dashboard with `runs_filter` (a regex) in its runs filter and
    waits for its charts. TensorBoard ticks no run by default when more than 40 runs match
    the filter (every benchmark of a folder together has more), all when 40 or fewer do."""
    query = f"&regexInput={urllib.parse.quote(runs_filter)}" if runs_filter else ""
    driver.get("about:blank")  # a new page load, not a change of the hash only
    driver.get(base_url + PAGE + query)
    read_charts(driver, lambda charts: bool(charts), timeout)


def read_charts(driver, ready, timeout: float = 60) -> list[dict]:
    """The page's charts (see _READ_CHARTS) once `ready(charts)` holds, or RuntimeError with
    what the page showed."""
    deadline, charts = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        charts = driver.execute_script(_READ_CHARTS)
        if ready(charts):
            return charts
        time.sleep(0.5)
    raise RuntimeError(f"the dashboard did not show what was expected in {timeout} s: {charts}")


def selected_runs(driver) -> list[str]:
    """The runs ticked in the page's runs selector."""
    return driver.execute_script(_ALL_ELEMENTS + """
      const box = all(document, []).find(e => e.localName == 'tf-multi-checkbox');
      return box ? box.outSelected : [];
    """)


def untick_ignore_outliers(driver) -> None:
    """Unticks "Ignore outliers in chart scaling" (with a few points it hides real ones)."""
    driver.execute_script(_ALL_ELEMENTS + """
      for (const box of all(document, []).filter(e => e.localName == 'paper-checkbox'))
        if (box.textContent.includes('Ignore outliers') && box.checked) box.click();
    """)


def scroll_to_category(driver, name: str) -> None:
    """Scrolls the page so that the custom-scalars category `name` is at the top."""
    driver.execute_script(_ALL_ELEMENTS + """
      const view = all(document, []).find(e => e.localName == 'tf-category-paginated-view'
                                             && e.category && e.category.name == arguments[0]);
      if (view) view.scrollIntoView(true);
    """, name)


def series_run(name: str) -> str:
    """'<tag> (<run>)', a series of the page, -> run."""
    return re.fullmatch(r".* \((.*)\)", name).group(1)


def screenshot_custom_scalars(driver, url: str, category: str, output: str) -> None:
    """The custom-scalars page, `category`'s runs only, its charts at the top; prints them."""
    open_custom_scalars(driver, url, runs_filter=category + "/")
    scroll_to_category(driver, category)  # a chart loads once it is on the screen
    try:
        charts = read_charts(driver, lambda charts: any(
            c["series"] for c in charts if c["category"] == category))
    finally:
        untick_ignore_outliers(driver)
        time.sleep(2)  # the charts redraw with the new scaling
        driver.save_screenshot(output)
    for chart in charts:
        if chart["category"] == category:
            print(chart["title"], chart["series"])


def screenshot_provenance(driver, url: str, category: str, output: str,
                          timeout: float = 60) -> None:
    """The Text page on `category`'s root run and provenance tag: commit, machine, flags and
    figures of its latest run (the slider goes back to earlier ones)."""
    driver.get(url + "#text&regexInput=" + urllib.parse.quote(f"^{category}$")
               + "&tagFilter=" + urllib.parse.quote(f"{category}/provenance"))
    deadline = time.monotonic() + timeout
    while "commit" not in driver.execute_script(_ALL_ELEMENTS + """
        return all(document, []).filter(e => e.localName == 'tf-markdown-view')
                                .map(e => e.textContent + (e.shadowRoot ? e.shadowRoot.textContent
                                                                        : '')).join(' ');
    """):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no provenance text of {category} in {timeout} s")
        time.sleep(0.5)
    time.sleep(1)
    driver.save_screenshot(output)


def main(argv) -> None:
    from absl import flags

    values = flags.FLAGS
    with tensorboard(values.logdir) as url, chromium(values.width, values.height) as driver:
        runs = {os.path.relpath(root, values.logdir) for root, _, files in os.walk(values.logdir)
                if any(f.startswith("events.out.tfevents.") for f in files)}
        wait_for_runs(url, runs)
        if values.page == "text":
            screenshot_provenance(driver, url, values.category, values.output)
        else:
            screenshot_custom_scalars(driver, url, values.category, values.output)
    print(f"wrote {values.output}")


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("logdir", None, "A benchmarks output folder's tensorboard/.")
    flags.DEFINE_string("category", "train_step", "The benchmark shown.")
    flags.DEFINE_enum("page", "custom_scalars", ["custom_scalars", "text"], "custom_scalars: "
                      "its charts; text: where its figures came from.")
    flags.DEFINE_string("output", "docs/figures/benchmarks_dashboard.png", "The PNG to write.")
    flags.DEFINE_integer("width", 1400, "Window width, pixels.")
    flags.DEFINE_integer("height", 1000, "Window height, pixels.")
    flags.mark_flag_as_required("logdir")
    app.run(main)
