"""The slide viewer's tile latency: python -m idc_engine.view, the real command in a process of its
own, serving a generated pyramidal TIFF of 20,000 x 20,000 pixels, asked for Deep Zoom tiles over
HTTP/1.1 keep-alive connections as a browser asks for them.

    python -m benchmarks.viewer              # 50 x 50 cells of 400 px at 0.5 um/px (20x): 20,000 px
    python -m benchmarks.viewer --quick      # every figure on a 2,400-px slide, 12 tiles each

The slide (benchmarks/generated_slides.py): synthetic patches on a --grid x --grid cell grid,
an ellipse of tissue in white glass, level 0 at --um_per_pixel, 5 levels halving each (20,000 to
1,250 px), zlib-compressed 256-px TIFF tiles; beside it the outputs idc-slide leaves (a
summary.json and a tiles.csv on the run's grid), so the viewer's catalog lists it. The slide
file is in the OS page cache (just written), as a slide being viewed soon is.

Figures, milliseconds from sending a request to its tile's last byte, p50 and p95 over the
tiles asked (each a 254-px tile with its 1-px overlaps, JPEG):
    single_connection   --tiles tiles of the finest level over tissue, never asked before
                        (read, encoded, put in the LRU), one connection, one request at a time
    six_connections     6 x --tiles / 6 other such tiles on 6 connections at once (a browser's
                        per-host limit); six_connections_tiles_per_s: their throughput
    six_connections_viewports   the same, the tiles of --tiles / 20 views of 5 x 4 neighbouring
                        tiles (a browser's view of 1,270 x 1,016 pixels), view after view: the
                        neighbours share the slide's TIFF tiles, which OpenSlide decodes once
    cached              the single connection's tiles asked again (the server's LRU)
    first_view_uncached every tile of the Deep Zoom levels up to the one that fits a 1,280-px
                        window (what a page asks first), never asked before, one connection;
                        first_view_cached: the same again
    deepzoom_alone      DeepZoomGenerator.get_tile and the JPEG encoding in this process, no
                        HTTP, other finest-level tiles: the floor the server adds to
Targets (issue 27): single_connection p95 <= 10 ms, six_connections (and its viewports) p95
<= 30 ms, cached p95 <= 2 ms; each *_p95_vs_target is p95 / target (<= 1 meets it).
"""

import concurrent.futures
import http.client
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from absl import app, flags

from benchmarks import generated_slides, quick
from benchmarks.report import BenchmarkReport

FLAGS = flags.FLAGS
flags.DEFINE_integer("grid", 50, "Grid cells per side of the slide (tissue: the inscribed "
                     "ellipse).")
flags.DEFINE_float("um_per_pixel", 0.5, "Level-0 scale of the generated slide: a cell is "
                   "200 / um_per_pixel level-0 pixels (400 at 0.5: 20,000 px for 50 cells).")
flags.DEFINE_integer("levels", 5, "Pyramid levels of the generated slide, each halving.")
flags.DEFINE_integer("tiles", 600, "Finest-level tiles timed per figure (six_connections: the "
                     "same number over the 6 connections).")
flags.DEFINE_integer("cache_mb", 256, "The viewer's --cache_mb.")
flags.DEFINE_string("work_dir", "", "Where the slide is generated (kept, and reused when it is "
                    "there); default: a temporary folder, removed.")
flags.DEFINE_string("output_dir", "runs/benchmarks", "Where the JSON and TensorBoard go.")
quick.define_flag()
QUICK_SIZES = {"grid": 6, "tiles": 12}
TARGETS_MS = {"single_connection": 10.0, "six_connections": 30.0,
              "six_connections_viewports": 30.0, "cached": 2.0}
CONNECTIONS = 6
VIEWPORT = (5, 4)      # tiles across and down: a 1,270 x 1,016-pixel view
FIRST_VIEW_PIXELS = 1280


def _tissue(grid: int) -> np.ndarray:
    """bool [grid, grid]: the cells (row, column) of the slide's ellipse of tissue."""
    mask = np.zeros((grid, grid), bool)
    cells = generated_slides.ellipse_cells(grid)
    mask[cells[:, 1], cells[:, 0]] = True
    return mask


def _write_slide(path: str) -> None:
    """generated_slides' ellipse of patches, with --levels levels."""
    from idc_engine.slides import pyramid_tiff

    pool = generated_slides.patch_pool(os.path.dirname(path))
    cells = generated_slides.ellipse_cells(FLAGS.grid)
    pyramid_tiff.write_slide(path, pool[np.arange(len(cells)) % len(pool)], cells,
                             (FLAGS.grid, FLAGS.grid), FLAGS.um_per_pixel, FLAGS.levels)


def _write_outputs(out: str, slide: str) -> None:
    """OUT/slide/: tiles.csv (random probabilities on the run's grid over the tissue) and
    summary.json, as idc-slide writes them (the viewer's catalog reads these)."""
    from idc_engine.slides import outputs, reader, tiles

    info = reader.open_info(slide)
    level = reader.choose_level(info.level_downsamples, info.um_per_pixel, 4.0)
    grid = tiles.make_grid(level, info.level_dimensions[level], info.level_downsamples[level],
                           info.um_per_pixel, 4.0, 50)
    r, c = np.nonzero(_tissue(FLAGS.grid))
    x, y = grid.level0_xy(c, r)  # one cell of the slide per tile of the grid at 4.0 um/px
    p = np.random.default_rng(0).uniform(0, 1, len(x))
    folder = os.path.join(out, "slide")
    os.makedirs(folder, exist_ok=True)
    outputs.write_tiles_csv(os.path.join(folder, outputs.TILES_CSV), x, y, grid.level0_size, p,
                            p >= 0.5)
    outputs.write_summary(os.path.join(folder, outputs.SUMMARY_JSON), {
        "slide": os.path.abspath(slide), "slide_quickhash": info.quickhash,
        "level0_dimensions": list(info.dimensions), "threshold": 0.5, "tiles_read": len(x),
        "idc_fraction": float(np.mean(p >= 0.5)), "unreadable_regions": [],
        "scale": {"slide_um_per_pixel": info.um_per_pixel, "model_um_per_pixel": 4.0,
                  "model_patch_size": 50, "level": level}})


class Viewer:
    """python -m idc_engine.view OUT on a free port, in its own process."""

    def __init__(self, out: str):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "idc_engine.view", out, "--port=0",
             f"--cache_mb={FLAGS.cache_mb}"], stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if not found:
            self.close()
            raise RuntimeError(f"idc-view did not start: {line!r}")
        self.port = int(found.group(1))
        connection = self.connect()
        slide = json.loads(self.get(connection, "/api/slides"))[0]
        self.base = slide["dzi"].removesuffix(".dzi") + "_files"
        self.dzi = self.get(connection, slide["dzi"]).decode()
        connection.close()

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)

    @staticmethod
    def get(connection, path: str) -> bytes:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"{path}: HTTP {response.status}")
        return body

    def timed(self, connection, tiles) -> list[float]:
        """Milliseconds per tile ((level, col, row) each), one request at a time."""
        times = []
        for level, col, row in tiles:
            start = time.perf_counter()
            self.get(connection, f"{self.base}/{level}/{col}_{row}.jpeg")
            times.append((time.perf_counter() - start) * 1000)
        return times

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def _finest_level(slide: str) -> tuple[int, tuple[int, int], tuple[int, int], list]:
    """(the finest Deep Zoom level, its (columns, rows) of tiles, its (width, height), every
    tile (level, col, row) of the levels up to FIRST_VIEW_PIXELS a side)."""
    import openslide
    from openslide import deepzoom

    with openslide.OpenSlide(slide) as handle:
        generator = deepzoom.DeepZoomGenerator(handle, 254, 1)
        finest = generator.level_count - 1
        first_view = [(level, c, r) for level in range(generator.level_count)
                      if max(generator.level_dimensions[level]) <= FIRST_VIEW_PIXELS
                      for c in range(generator.level_tiles[level][0])
                      for r in range(generator.level_tiles[level][1])]
        return (finest, generator.level_tiles[finest], generator.level_dimensions[finest],
                first_view)


def _plan(slide: str, rng) -> dict:
    """The tiles each figure asks, (level, col, row) each, none asked twice across figures:
    VIEWPORT blocks of neighbouring finest-level tiles over tissue (as a browser asks for a
    view), disjoint random samples of the other finest-level tiles over tissue, and every tile
    of the first view's levels."""
    finest, (columns, rows), (width, height), first_view = _finest_level(slide)
    c, r = np.meshgrid(np.arange(columns), np.arange(rows))
    cell = np.minimum(((r + 0.5) * 254 / height * FLAGS.grid).astype(int), FLAGS.grid - 1), \
        np.minimum(((c + 0.5) * 254 / width * FLAGS.grid).astype(int), FLAGS.grid - 1)
    over_tissue = _tissue(FLAGS.grid)[cell]
    across, down = VIEWPORT
    blocks = [(bc, br) for bc in range(0, columns - across + 1, across)
              for br in range(0, rows - down + 1, down)
              if over_tissue[br:br + down, bc:bc + across].all()]
    n = FLAGS.tiles
    picked = [blocks[i] for i in rng.permutation(len(blocks))[:max(1, n // (across * down))]]
    viewports = [(finest, bc + i, br + j) for bc, br in picked
                 for j in range(down) for i in range(across)]
    used = np.zeros_like(over_tissue)
    for _, col, row in viewports:
        used[row, col] = True
    candidates = np.stack([c[over_tissue & ~used], r[over_tissue & ~used]], 1)
    chosen = candidates[rng.permutation(len(candidates))]
    if len(chosen) < 3 * n or not picked:
        raise ValueError(f"--tiles={n}: the slide has {len(chosen)} finest-level tiles over "
                         f"tissue outside {len(picked)} viewports, fewer than the 3 x {n} the "
                         "figures ask; enlarge --grid")
    take = lambda part: [(finest, int(a), int(b)) for a, b in chosen[part * n:(part + 1) * n]]
    return {"single": take(0), "six": take(1), "alone": take(2), "viewports": viewports,
            "first_view": first_view, "dimensions": (width, height)}


def _six_connections(viewer: Viewer, tiles: list) -> tuple[list[float], float]:
    """(milliseconds per tile, seconds for all) over CONNECTIONS connections at once."""
    parts = [tiles[i::CONNECTIONS] for i in range(CONNECTIONS)]
    connections = [viewer.connect() for _ in parts]
    for connection in connections:
        connection.connect()
    start_line = threading.Barrier(CONNECTIONS + 1)

    def run(connection, part):
        start_line.wait()
        return viewer.timed(connection, part)

    with concurrent.futures.ThreadPoolExecutor(CONNECTIONS) as pool:
        futures = [pool.submit(run, c, p) for c, p in zip(connections, parts)]
        start_line.wait()
        start = time.perf_counter()
        times = [t for future in futures for t in future.result()]
        seconds = time.perf_counter() - start
    for connection in connections:
        connection.close()
    return times, seconds


def _deepzoom_alone(slide: str, tiles: list) -> list[float]:
    import openslide
    from openslide import deepzoom

    times = []
    with openslide.OpenSlide(slide) as handle:
        generator = deepzoom.DeepZoomGenerator(handle, 254, 1)
        for level, col, row in tiles:
            start = time.perf_counter()
            buffer = io.BytesIO()
            generator.get_tile(level, (col, row)).save(buffer, "JPEG", quality=75)
            times.append((time.perf_counter() - start) * 1000)
    return times


def _add_latency(report: BenchmarkReport, name: str, times: list[float]) -> None:
    p50, p95 = np.percentile(times, [50, 95])
    report.add(f"{name}_p50_ms", p50, tiles=len(times), max_ms=round(max(times), 3))
    report.add(f"{name}_p95_ms", p95)
    if name in TARGETS_MS:
        report.add(f"{name}_p95_vs_target", p95 / TARGETS_MS[name], target_ms=TARGETS_MS[name])


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def measure(work: str) -> BenchmarkReport:
    slide, out = os.path.join(work, "slide.tiff"), os.path.join(work, "out")
    if not os.path.exists(slide):
        _write_slide(slide)
    _write_outputs(out, slide)
    plan = _plan(slide, np.random.default_rng(0))
    load_before = _load()
    viewer = Viewer(out)
    try:
        connection = viewer.connect()
        viewer.timed(connection, plan["first_view"][:1])  # the server's first request
        first_view = viewer.timed(connection, plan["first_view"])
        first_view_cached = viewer.timed(connection, plan["first_view"])
        single = viewer.timed(connection, plan["single"])
        cached = viewer.timed(connection, plan["single"])
        connection.close()
        six, six_seconds = _six_connections(viewer, plan["six"])
        viewports, viewports_seconds = _six_connections(viewer, plan["viewports"])
    finally:
        viewer.close()
    alone = _deepzoom_alone(slide, plan["alone"])
    width, height = plan["dimensions"]
    report = BenchmarkReport("viewer", FLAGS.output_dir, config={
        "command": " ".join(["python -m benchmarks.viewer", *sys.argv[1:]]),
        "quick": FLAGS.quick, "slide_pixels": [width, height], "grid": FLAGS.grid,
        "um_per_pixel": FLAGS.um_per_pixel, "levels": FLAGS.levels,
        "slide_mb": round(os.path.getsize(slide) / 2**20, 1), "tiles_per_figure": FLAGS.tiles,
        "first_view_tiles": len(plan["first_view"]), "connections": CONNECTIONS,
        "viewport_tiles": list(VIEWPORT), "viewports": len(plan["viewports"]) // (
            VIEWPORT[0] * VIEWPORT[1]),
        "cache_mb": FLAGS.cache_mb, "tile": "254 px + 1-px overlap, JPEG quality 75",
        "load_average_before_after": [load_before, _load()],
        "targets_ms_p95": TARGETS_MS})
    for name, times in (("single_connection", single), ("six_connections", six),
                        ("six_connections_viewports", viewports),
                        ("cached", cached), ("first_view_uncached", first_view),
                        ("first_view_cached", first_view_cached), ("deepzoom_alone", alone)):
        _add_latency(report, name, times)
    report.add("six_connections_tiles_per_s", len(six) / six_seconds)
    report.add("six_connections_viewports_tiles_per_s", len(viewports) / viewports_seconds)
    report.add("single_connection_tiles_per_s", 1000 * len(single) / sum(single))
    return report


def main(argv) -> int:
    quick.apply(QUICK_SIZES)
    if FLAGS.work_dir:
        os.makedirs(FLAGS.work_dir, exist_ok=True)
        report = measure(FLAGS.work_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="viewer_benchmark_") as work:
            report = measure(work)
    report.write()
    return 0


if __name__ == "__main__":
    app.run(main)
