"""Benchmarks in TensorBoard (benchmarks/tensorboard_runs.py through BenchmarkReport): a run per
setting, the settings of a comparison under one tag, each write one more step, the
custom-scalars layout, HParams and the provenance text; read back with TensorFlow's own event
reader from tiny reports written in this process. Then the same in a real browser: TensorBoard
on two writes, its custom-scalars dashboard in headless Chromium."""

import glob
import json
import os
import re
import subprocess
import sys
import threading

import benchmark_events
import browser_check
import pytest

# benchmarks/ is a folder of the repository, not part of the installed package
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from benchmarks import charts, tensorboard_runs  # noqa: E402
from benchmarks.report import BenchmarkReport  # noqa: E402

CHARTS = {
    "throughput/images_per_s": {"engine": "engine_img_per_s",
                                "keras_fit": "keras_fit_img_per_s",
                                "engine_{setting}": "engine_{setting}_img_per_s"},
    "ratio/engine_vs_keras_fit": {"ratios": "engine_vs_fit"},
    "ratio/engine_{setting}_vs_reference": {"ratios": "engine_{setting}_vs_reference"},
}
THROUGHPUT = "demo/throughput/images_per_s"
# the charts of the layout: a chart per tag written, in the order declared
CHART_TITLES = ["throughput/images_per_s", "ratio/engine_vs_keras_fit",
                "ratio/engine_xla_vs_reference"]


def write_demo(output_dir, engine: float, fit: float, undeclared: bool = False) -> dict:
    """One run of a tiny benchmark `demo`; returns its JSON record."""
    report = BenchmarkReport("demo", str(output_dir), config={"batch_size": 16}, charts=CHARTS)
    report.add("engine_img_per_s", engine, all=[engine])
    report.add("keras_fit_img_per_s", fit)
    report.add("engine_xla_img_per_s", engine / 4)
    report.add("engine_vs_fit", engine / fit)
    report.add("engine_xla_vs_reference", 0.25)
    if undeclared:
        report.add("latency_ms", 3.5)
    with open(report.write()) as f:
        return json.load(f)


def test_each_setting_is_a_run_sharing_the_tag_and_each_write_adds_a_step(tmp_path):
    first = write_demo(tmp_path, 750.0, 500.0)  # figures a float32 holds exactly
    second = write_demo(tmp_path, 900.0, 450.0)
    runs = benchmark_events.setting_runs(str(tmp_path / "tensorboard" / "demo"))
    assert sorted(runs) == ["engine", "engine_xla", "keras_fit", "ratios"]
    # engine and fit under one tag (one chart), every rerun one more point
    assert runs["engine"][THROUGHPUT] == [(0, 750.0), (1, 900.0)]
    assert runs["keras_fit"][THROUGHPUT] == [(0, 500.0), (1, 450.0)]
    assert runs["engine_xla"][THROUGHPUT] == [(0, 187.5), (1, 225.0)]
    assert runs["ratios"]["demo/ratio/engine_vs_keras_fit"] == [(0, 1.5), (1, 2.0)]
    assert runs["ratios"]["demo/ratio/engine_xla_vs_reference"] == [(0, 0.25), (1, 0.25)]
    assert [r["tensorboard"]["step"] for r in (first, second)] == [0, 1]
    # the JSON keeps its keys and figures as they were, with the commit and flags added
    assert list(second)[:6] == ["benchmark", "time", "machine", "config", "results", "details"]
    assert second["results"]["engine_img_per_s"] == 900.0
    assert second["details"] == {"engine_img_per_s": {"all": [900.0]}}
    commit = second["git"]["commit"]
    assert subprocess.run(["git", "-C", REPO, "cat-file", "-t", commit], capture_output=True,
                          text=True).stdout.strip() == "commit"
    assert isinstance(second["git"]["dirty"], bool)
    # a copy of each run's record beside the runs, one per step
    steps = sorted(glob.glob(str(tmp_path / "tensorboard" / "demo" / "step-*.json")))
    assert [json.load(open(p))["results"]["keras_fit_img_per_s"] for p in steps] == [500.0, 450.0]


def test_a_figure_no_chart_declares_lands_in_the_run_other(tmp_path):
    write_demo(tmp_path, 800.0, 500.0, undeclared=True)
    runs = benchmark_events.setting_runs(str(tmp_path / "tensorboard" / "demo"))
    assert runs[tensorboard_runs.OTHER_RUN] == {"demo/other/latency_ms": [(0, 3.5)]}


def test_two_output_folders_count_their_own_runs(tmp_path):
    """A quick run and a full run write to different folders: neither moves the other's step."""
    for _ in range(2):
        write_demo(tmp_path / "quick", 80.0, 50.0)
    assert write_demo(tmp_path / "full", 800.0, 500.0)["tensorboard"]["step"] == 0
    assert write_demo(tmp_path / "quick", 80.0, 50.0)["tensorboard"]["step"] == 2


def test_concurrent_writers_of_one_folder_claim_distinct_steps(tmp_path):
    claimed, start = [], threading.Barrier(8)

    def claim():
        start.wait()
        claimed.append(tensorboard_runs.claim_step(str(tmp_path)))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == list(range(8))


def test_layout_groups_each_comparison_on_one_chart(tmp_path):
    write_demo(tmp_path, 800.0, 500.0)
    write_demo(tmp_path, 900.0, 450.0)
    benchmark_dir = str(tmp_path / "tensorboard" / "demo")
    layouts = benchmark_events.layouts(benchmark_dir)
    assert len(layouts) == 2  # one per write: TensorBoard shows the latest
    (category,) = layouts[-1].category
    assert category.title == "demo"
    assert [c.title for c in category.chart] == CHART_TITLES
    regexes = {c.title: c.multiline.tag for c in category.chart}
    tags = {tag for scalars in benchmark_events.setting_runs(benchmark_dir).values()
            for tag in scalars}
    for tag in tags:  # each tag on exactly one chart
        assert len([t for t, (rx,) in regexes.items() if re.match(rx, tag)]) == 1, tag
    (throughput,) = regexes["throughput/images_per_s"]
    assert re.match(throughput, THROUGHPUT)
    assert not re.match(throughput, "demo/ratio/engine_vs_keras_fit")
    assert not re.match(throughput, "other_benchmark/throughput/images_per_s")


def test_hparams_say_what_each_setting_is_and_the_text_where_each_point_came_from(tmp_path):
    write_demo(tmp_path, 800.0, 500.0)
    record = write_demo(tmp_path, 900.0, 450.0)
    benchmark_dir = tmp_path / "tensorboard" / "demo"
    for run in ("engine", "keras_fit", "ratios"):
        (hparams,) = benchmark_events.hparams(str(benchmark_dir / run))  # the first write's
        assert hparams["benchmark"] == "demo" and hparams["setting"] == run
        assert hparams["cpu_model"] == record["machine"]["cpu_model"]
        assert hparams["cpus"] == os.cpu_count()
    texts = benchmark_events.texts(str(benchmark_dir), "demo/provenance")
    assert [step for step, _ in texts] == [0, 1]
    text = texts[1][1]
    assert record["git"]["commit"] in text and record["machine"]["cpu_model"] in text
    assert "| engine | demo/throughput/images_per_s | 900 |" in text
    assert '"batch_size": 16' in text


def test_a_run_or_tag_placeholder_missing_from_its_figure_is_refused():
    with pytest.raises(ValueError, match="setting"):
        tensorboard_runs.check_charts({"t": {"engine_{setting}": "engine_img_per_s"}})


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "docs", "benchmarks",
                                                               "*.json"))),
                         ids=os.path.basename)
def test_every_committed_figure_lands_on_exactly_one_declared_chart(path):
    """The full runs' figures (every setting of train_step, stain_shift, ...) of the JSONs the
    README quotes: none undeclared, no two on one run and tag, each tag on one chart."""
    with open(path) as f:
        record = json.load(f)
    name = record["benchmark"]
    placed = tensorboard_runs.placed_figures(name, charts.CHARTS[name], record["results"])
    assert [f.key for f in placed if f.run == tensorboard_runs.OTHER_RUN] == []
    runs = tensorboard_runs.by_run(placed)  # no two figures on one run and tag
    assert sum(len(tags) for tags in runs.values()) == len(record["results"])
    (category,) = tensorboard_runs.layout(name, placed).category
    for tags in runs.values():
        for tag in tags:
            assert len([c for c in category.chart if re.match(c.multiline.tag[0], tag)]) == 1, tag


def browser_tools():
    """tools/benchmarks_dashboard.py, or a skip (a failure under CI=true) naming what is
    missing to run TensorBoard's page in headless Chromium."""
    browser_check.require_browser()
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import benchmarks_dashboard

    return benchmarks_dashboard


def test_the_dashboard_in_chromium_overlays_engine_and_baseline_a_point_per_run(tmp_path):
    """TensorBoard on two writes; its data API (what the page reads) and the custom-scalars
    page in headless Chromium: engine, fit and the xla setting on one chart with two points
    each, the ratio on its own. Negative control: with the runs filter on keras_fit the same
    chart holds fit's line only, so the page is read as drawn, not as stored."""
    dashboard = browser_tools()
    write_demo(tmp_path, 750.0, 500.0)
    write_demo(tmp_path, 900.0, 450.0)
    expected = {"throughput/images_per_s": {"demo/engine": [[0, 750], [1, 900]],
                                            "demo/keras_fit": [[0, 500], [1, 450]],
                                            "demo/engine_xla": [[0, 187.5], [1, 225]]},
                "ratio/engine_vs_keras_fit": {"demo/ratios": [[0, 1.5], [1, 2]]},
                "ratio/engine_xla_vs_reference": {"demo/ratios": [[0, 0.25], [1, 0.25]]}}

    def shown(charts):  # {chart title: {run: points}}, as the page draws them
        return {c["title"]: {dashboard.series_run(name): points
                             for name, points in c["series"].items()} for c in charts}

    with dashboard.tensorboard(str(tmp_path / "tensorboard")) as url:
        dashboard.wait_for_runs(url, {"demo", "demo/engine", "demo/engine_xla",
                                      "demo/keras_fit", "demo/ratios"})
        (category,) = dashboard.get_json(url + "data/plugin/custom_scalars/layout")["category"]
        assert [chart["title"] for chart in category["chart"]] == CHART_TITLES
        points = dashboard.get_json(url + "data/plugin/scalars/scalars?run=demo/keras_fit&tag="
                                    + THROUGHPUT)
        assert [(step, value) for _, step, value in points] == [(0, 500.0), (1, 450.0)]
        with dashboard.chromium() as driver:
            dashboard.open_custom_scalars(driver, url)
            dashboard.read_charts(driver, lambda charts: shown(charts) == expected)
            driver.save_screenshot(str(tmp_path / "dashboard.png"))
            dashboard.open_custom_scalars(driver, url, runs_filter="keras_fit")
            only_fit = dashboard.read_charts(driver, lambda charts: dashboard.selected_runs(
                driver) == ["demo/keras_fit"] and shown(charts)["throughput/images_per_s"])
    assert shown(only_fit)["throughput/images_per_s"] == {
        "demo/keras_fit": [[0, 500], [1, 450]]}
    with open(tmp_path / "dashboard.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
