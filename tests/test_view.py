"""The viewer's server (idc_engine/view/) over real slides OpenSlide reads (tests/view_files.py),
through real HTTP on a localhost port: Deep Zoom XML and tiles (serially, under 32 parallel
requests, against OpenSlide's own pixels), the overlay against tiles.csv, what is never
served (other paths, other methods, traversal attempts, label and macro images)."""

import concurrent.futures
import csv
import http.client
import io
import json
import os
import xml.etree.ElementTree as ElementTree

import numpy as np
import openslide
import pytest
import view_files
from PIL import Image

from idc_engine.view.deepzoom import TileCache

DZI = "{http://schemas.microsoft.com/deepzoom/2008}"


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return view_files.write_out(tmp_path_factory.mktemp("view"))


@pytest.fixture
def served(out):
    running = view_files.Served(out["out"])
    yield running
    running.close()


def _dzi(served, name: str) -> dict:
    status, headers, body = served.get(served.slides[name]["dzi"])
    assert status == 200 and headers["Content-Type"].startswith("application/xml")
    image = ElementTree.fromstring(body)
    size = image.find(f"{DZI}Size")
    return {"tile": int(image.get("TileSize")), "overlap": int(image.get("Overlap")),
            "format": image.get("Format"), "width": int(size.get("Width")),
            "height": int(size.get("Height"))}


def _levels(width: int, height: int) -> list[tuple[int, int]]:
    """(width, height) of each Deep Zoom level, coarsest (1 x 1) first: the format's halving."""
    sizes = [(width, height)]
    while sizes[-1] != (1, 1):
        w, h = sizes[-1]
        sizes.append((max(1, -(-w // 2)), max(1, -(-h // 2))))
    return sizes[::-1]


def _tile_urls(served, name: str) -> dict[str, tuple[int, int]]:
    """{URL: (width, height) the tile must have} of every tile of the slide's pyramid."""
    dzi, base = _dzi(served, name), served.slides[name]["dzi"].removesuffix(".dzi")
    expected = {}
    for level, (w, h) in enumerate(_levels(dzi["width"], dzi["height"])):
        step, overlap = dzi["tile"], dzi["overlap"]
        for col in range(-(-w // step)):
            for row in range(-(-h // step)):
                tw = min(step, w - col * step) + overlap * (col > 0) + overlap * (
                    (col + 1) * step < w)
                th = min(step, h - row * step) + overlap * (row > 0) + overlap * (
                    (row + 1) * step < h)
                expected[f"{base}_files/{level}/{col}_{row}.jpeg"] = (tw, th)
    return expected


def test_the_dzi_describes_the_slide_at_level_0(served, out):
    dzi = _dzi(served, "ok")
    with openslide.OpenSlide(out["slide"]) as slide:
        assert (dzi["width"], dzi["height"]) == slide.dimensions == (1920, 1280)
    assert (dzi["tile"], dzi["overlap"], dzi["format"]) == (254, 1, "jpeg")
    assert (_dzi(served, "labelled")["width"], _dzi(served, "labelled")["height"]) == (1536, 1024)


def test_tiles_have_their_sizes_and_the_same_bytes_serially_and_under_32_parallel_requests(out):
    """Two servers with empty caches: one asked tile by tile, the other by 32 threads at once
    on their own connections (every tile twice, so cached and encoded answers race too)."""
    serial, parallel = view_files.Served(out["out"]), view_files.Served(out["out"])
    try:
        expected = _tile_urls(serial, "ok")
        assert len(expected) > 40
        first = {url: serial.get(url) for url in expected}
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            urls = list(expected) * 2
            second = list(pool.map(parallel.get, urls))
    finally:
        serial.close()
        parallel.close()
    for url, (status, headers, body) in first.items():
        assert status == 200 and headers["Content-Type"] == "image/jpeg", url
        size, wanted = Image.open(io.BytesIO(body)).size, expected[url]
        if min(wanted) >= 10:
            assert size == wanted, url
        else:  # OpenSlide's generator rounds the regions of its few-pixel levels down
            assert 0 <= wanted[0] - size[0] <= 1 and 0 <= wanted[1] - size[1] <= 1, url
    for url, (status, _, body) in zip(urls, second):
        assert status == 200 and body == first[url][2], url
    # negative control: tiles differ from one another (equality is not the same bytes always)
    assert len({body for _, _, body in first.values()}) > len(first) / 2


def test_a_full_resolution_tile_is_the_slides_pixels_there(served, out):
    """The tile (2, 1) of the finest level against OpenSlide's read_region of its area; the
    neighbouring tile's pixels (the negative control) are far from it."""
    levels = len(_levels(1920, 1280)) - 1
    base = served.slides["ok"]["dzi"].removesuffix(".dzi")

    def tile(col, row):
        body = served.get(f"{base}_files/{levels}/{col}_{row}.jpeg")[2]
        return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"), np.float64)

    with openslide.OpenSlide(out["slide"]) as slide:
        region = np.asarray(slide.read_region((2 * 254 - 1, 254 - 1), 0, (256, 256))
                            .convert("RGB"), np.float64)
    assert np.abs(tile(2, 1) - region).mean() < 6         # JPEG at quality 75
    assert np.abs(tile(3, 1) - region).mean() > 15


def test_overlay_cells_at_the_threshold_are_the_idc_column_of_tiles_csv(served, out):
    status, headers, body = served.get(served.slides["ok"]["overlay"])
    assert status == 200 and "immutable" in headers["Cache-Control"]
    overlay = json.loads(body)
    with open(os.path.join(out["out"], "ok", "tiles.csv")) as f:
        rows = list(csv.DictReader(f))
    cell = overlay["cell"]
    assert cell == 160 and (overlay["columns"], overlay["rows"]) == (12, 8)
    # each row's tile is the overlay's cell, at the same level-0 place
    placed = {(c * cell, r * cell): p for c, r, p in zip(overlay["col"], overlay["row"],
                                                         overlay["p"])}
    assert set(placed) == {(int(r["x"]), int(r["y"])) for r in rows}
    coloured = {xy for xy, p in placed.items() if p >= overlay["threshold"]}
    idc = {(int(r["x"]), int(r["y"])) for r in rows if r["idc"] == "1"}
    assert coloured == idc and 0 < len(idc) < len(rows)
    # negative control: the CSV's rounded probabilities alone put the tile within rounding
    # of the threshold on the wrong side
    rounded = {(int(r["x"]), int(r["y"])) for r in rows
               if float(r["idc_probability"]) >= overlay["threshold"]}
    assert rounded != idc and len(rounded ^ idc) == 1
    assert [[c, r] for c, r in zip(overlay["unreadable_col"], overlay["unreadable_row"])] == \
        out["unreadable"].tolist()
    # the heatmap's colours: matplotlib's magma_r at each probability
    import matplotlib

    cmap = matplotlib.colormaps["magma_r"]
    for p in (0.0, 0.37, 0.5, 0.999, 1.0):
        expected = np.round(np.asarray(cmap(p)[:3]) * 255)
        assert overlay["colours"][min(255, int(p * 256))] == expected.tolist()


def test_unknown_paths_wrong_versions_and_tiles_outside_the_pyramid_are_404(served):
    ok = served.slides["ok"]
    base = ok["dzi"].removesuffix(".dzi")
    levels = len(_levels(1920, 1280))
    wrong_version = ok["dzi"].replace(ok["dzi"].split("/")[3], "0" * 12)
    for path in ("/nothing", "/api/slides/ok", wrong_version, "/slides/nope/0123456789ab/slide.dzi",
                 f"{base}_files/{levels}/0_0.jpeg", f"{base}_files/{levels - 1}/99_0.jpeg",
                 f"{base}_files/0/0_1.jpeg", f"{base}_files/1/0_0.png",
                 served.slides["moved"]["heatmap"].replace("heatmap.png", "slide.dzi"),
                 ok["heatmap"].replace("heatmap.png", "tiles.csv"),
                 ok["heatmap"].replace("heatmap.png", "summary.json")):
        assert served.get(path)[0] == 404, path
    # negative control: the same kinds of path, right
    for path in (ok["dzi"], f"{base}_files/{levels - 1}/0_0.jpeg", f"{base}_files/0/0_0.jpeg",
                 ok["heatmap"], ok["overlay"], "/", "/static/viewer.js"):
        assert served.get(path)[0] == 200, path


def test_every_method_but_get_is_405(served):
    for method in ("POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"):
        status, headers, _ = served.request(method, "/api/slides")
        assert status == 405 and headers["Allow"] == "GET", method
    assert served.request("GET", "/api/slides")[0] == 200


def test_traversal_attempts_are_404(served, out):
    version = served.slides["ok"]["dzi"].split("/")[3]
    secret = os.path.join(out["out"], "ok", "summary.json")
    with open(secret, "rb") as f:
        summary_bytes = f.read()
    attempts = ["/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/etc/passwd",
                "/static/..%2f..%2f__main__.py", "/static/vendor/../../catalog.py",
                "//etc/passwd", f"/slides/ok/{version}/../summary.json",
                f"/slides/ok/{version}/..%2Fsummary.json", f"/slides/..%2Fok/{version}/heatmap.png",
                f"/slides/%2E%2E/{version}/heatmap.png", f"/slides/ok%2Fsummary.json/{version}/x",
                f"/slides/{secret.replace('/', '%2F')}/{version}/heatmap.png",
                "/static/viewer.js/../../server.py", "/..", "/%00", "/static/%00viewer.js"]
    for path in attempts:
        status, _, body = served.get(path)
        assert status == 404 and body == b"not found\n", path
        assert summary_bytes not in body
    # negative control: the file is reachable by a legitimate URL's shape only
    assert served.get("/static/viewer.js")[0] == 200


def test_label_and_macro_images_are_never_served(served, out):
    """The SVS's label and macro (pure green) are associated images OpenSlide reads; no tile of
    any level of its pyramid holds green, and no URL names them."""
    with openslide.OpenSlide(out["labelled"]) as slide:
        assert {"label", "macro"} <= set(slide.associated_images)
        label = np.asarray(slide.associated_images["label"].convert("RGB"))
    assert (label == view_files.LABEL_RGB).all()  # the check below would see it

    def greens(body: bytes) -> int:
        pixels = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"), np.int64)
        return int(((pixels[..., 1] > 200) & (pixels[..., 0] < 80) & (pixels[..., 2] < 80)).sum())

    label_jpeg = io.BytesIO()
    Image.fromarray(label).save(label_jpeg, "JPEG", quality=75)
    assert greens(label_jpeg.getvalue()) > 0.9 * label.shape[0] * label.shape[1]
    tiles = _tile_urls(served, "labelled")
    for url in tiles:
        status, _, body = served.get(url)
        assert status == 200 and greens(body) == 0, url
    base = served.slides["labelled"]["dzi"].rsplit("/", 1)[0]
    for name in ("label", "macro", "thumbnail"):
        for path in (f"{base}/{name}", f"{base}/{name}.jpeg", f"{base}/associated/{name}",
                     f"{base}/slide_files/{name}.jpeg", f"/{name}"):
            assert served.get(path)[0] == 404, path


def test_a_moved_or_replaced_slide_is_listed_with_its_heatmap_and_a_message(served):
    for name, says in (("moved", "no longer there"), (view_files.REPLACED, "not the file analysed")):
        slide = served.slides[name]
        assert says in slide["message"] and "dzi" not in slide and "overlay" not in slide
        status, headers, body = served.get(slide["heatmap"])
        assert status == 200 and headers["Content-Type"] == "image/png"
        assert body.startswith(b"\x89PNG")
    ok = served.slides["ok"]
    assert ok["message"] == "" and ok["dzi"] and ok["idc_fraction"] > 0
    assert (ok["model"], ok["date"]) == ("/models/test, savedmodel", "2026-01-02T03:04:05+00:00")


def test_responses_keep_the_connection_alive_and_forbid_other_origins(served):
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    try:
        connection.connect()
        sock = connection.sock
        for path in ("/", "/api/slides", served.slides["ok"]["dzi"], "/static/viewer.css"):
            status, headers, _ = served.request("GET", path, connection)
            assert status == 200 and connection.sock is sock, path  # one connection throughout
            policy = headers["Content-Security-Policy"]
            assert "default-src 'self'" in policy and "http" not in policy and "*" not in policy
    finally:
        connection.close()
    assert served.get(served.slides["ok"]["dzi"])[1]["Cache-Control"].endswith("immutable")
    assert served.get("/api/slides")[1]["Cache-Control"] == "no-store"


def test_the_tile_cache_keeps_the_most_recent_tiles_within_its_bytes():
    cache = TileCache(max_bytes=10)
    for key in "abc":
        cache.put(key, b"xxxx")
    assert cache.get("a") is None and cache.get("b") == b"xxxx"  # 12 bytes > 10: a went
    cache.put("d", b"yyyy")  # b was used last, so c goes
    assert cache.get("c") is None and cache.get("b") == b"xxxx" and cache.get("d") == b"yyyy"
    cache.put("huge", b"z" * 11)
    assert cache.get("huge") is None and cache.get("d") == b"yyyy"


def test_a_second_request_of_a_tile_comes_from_the_cache(served):
    base = served.slides["ok"]["dzi"].removesuffix(".dzi")
    cache = served.httpd.deepzoom.cache
    first = served.get(f"{base}_files/8/0_0.jpeg")[2]
    hits = cache.hits
    assert served.get(f"{base}_files/8/0_0.jpeg")[2] == first and cache.hits == hits + 1
    served.get(f"{base}_files/8/1_0.jpeg")
    assert cache.hits == hits + 1  # negative control: another tile is a miss


def test_a_tile_openslide_cannot_decode_is_500_and_the_tiles_after_it_are_served(out, tmp_path):
    """A copy of the slide with one TIFF tile of level 0 overwritten (tests/slide_files.py):
    OpenSlide's handle is dead after the error, so the server must reopen it."""
    import shutil

    import slide_files

    slide = str(tmp_path / "ok.tiff")
    shutil.copy(out["slide"], slide)
    slide_files.corrupt_tile(slide, 0, 300, 300)  # TIFF tile (1, 1): level-0 256..511
    cells = out["cells"]
    view_files.write_outputs(str(tmp_path / "out"), "corrupt", slide, out["probability"],
                             cells, out["unreadable"])
    served = view_files.Served(str(tmp_path / "out"))
    try:
        finest = len(_levels(1920, 1280)) - 1
        base = served.slides["corrupt"]["dzi"].removesuffix(".dzi")
        for _ in range(2):  # not cached as a tile
            status, _, body = served.get(f"{base}_files/{finest}/1_1.jpeg")
            assert status == 500 and b"cannot decode" in body
        assert served.get(f"{base}_files/{finest}/6_4.jpeg")[0] == 200
    finally:
        served.close()
    # negative control: the same tile of the intact slide
    intact = view_files.Served(out["out"])
    try:
        base = intact.slides["ok"]["dzi"].removesuffix(".dzi")
        assert intact.get(f"{base}_files/{finest}/1_1.jpeg")[0] == 200
    finally:
        intact.close()


def test_a_request_for_another_host_name_is_403(served):
    """A page of another site that rebinds its name to 127.0.0.1 sends its own name as Host."""
    # negative control: local names, on any port (an SSH tunnel's local port may differ)
    expected = {**dict.fromkeys(("evil.example", "evil.example:8765", "127.0.0.1.evil.example"),
                                403),
                **dict.fromkeys(("127.0.0.1:9000", "localhost", "[::1]:8765"), 200)}
    for host, status in expected.items():
        connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
        try:
            connection.request("GET", "/api/slides", headers={"Host": host})
            assert connection.getresponse().status == status, host
        finally:
            connection.close()
