"""python -m idc_engine.slide on slide files other tools wrote, the bad ones in one command with
good ones, in several orders: OpenSlide's own test files (tests/fixtures/openslide/: an Aperio
SVS whose JPEG tiles do not decode, a TIFF in a compression OpenSlide lacks, a generic TIFF at
72 dpi, a DICOM WSI, a non-ASCII name) and TIFFs written with tifffile and Pillow in other
layouts (JPEG tiles, strips, resolution tags in inches or absent, a corrupted tile, scales about
the model's 4.0 um/px). Each bad slide gets one `error:` line naming it, the good ones their
complete outputs, whatever the order; each refusal has a file beside it that is accepted."""

import csv
import json
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import slide_files

from idc_engine.slides import cohort_table, outputs, reader, tiles
from idc_engine.slides.config import SlideConfig, SlideConfigError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "openslide")
MM_PER_INCH = 25.4


def _slide_set(folder, patches: np.ndarray) -> tuple[dict, dict]:
    """({good slide: its output folder's name}, {bad slide: fragments its error line holds}),
    the files written in `folder` from 64 patches uint8 [64, 50, 50, 3]."""
    def path(name):
        return str(folder / name)

    at_1_25 = slide_files.mosaic(patches, 1.25, 8, 8)            # 1280x1280, 160-px tiles
    slide_files.write_tiled_tiff(path("good.tiff"), at_1_25, 3, 1.25)
    slide_files.write_tiled_tiff(path("jpeg ü😐.tiff"), at_1_25, 3, 1.25, jpeg=True)
    slide_files.write_tiled_tiff(path("dpi72.tiff"), at_1_25, 3, None, dpi=72)
    slide_files.write_tiled_tiff(path("noscale.tiff"), at_1_25, 3, None)
    slide_files.write_stripped_tiff(path("stripped.tiff"), at_1_25, 1.25)
    slide_files.write_tiled_tiff(path("one_tile.tiff"), at_1_25[:160, :160], 1, 1.25)
    slide_files.write_tiled_tiff(path("tiny.tiff"), at_1_25[:150, :150], 1, 1.25)
    at_2_5 = slide_files.mosaic(patches, 2.5, 8, 16)             # 1280x1280, read at level 0
    for name, level in (("level0_corrupt.tiff", 0), ("last_corrupt.tiff", 1)):
        slide_files.write_tiled_tiff(path(name), at_2_5, 2, 2.5)
        slide_files.corrupt_tile(path(name), level, 0, 0)          # patches 0-2, 8-10, 16-18
    for um, name in ((4.9, "coarse_4_9um.tiff"), (5.1, "coarse_5_1um.tiff")):
        slide_files.write_tiled_tiff(path(name), slide_files.mosaic(patches, um, 8, 8), 1, um)
    dpi72_um = f"{1000 * MM_PER_INCH / 72:g} um/px"
    good = {path("good.tiff"): "good", path("jpeg ü😐.tiff"): "jpeg ü😐",
            path("one_tile.tiff"): "one_tile", path("level0_corrupt.tiff"): "level0_corrupt",
            path("coarse_4_9um.tiff"): "coarse_4_9um"}
    bad = {
        os.path.join(FIXTURES, "unreadable.svs"): [
            "OpenSlide failed reading its thumbnail (level 0 of levels 0-0", "Bogus marker length"],
        os.path.join(FIXTURES, "unopenable.tiff"): [
            "OpenSlide cannot open this file", "Unsupported TIFF compression: 52479"],
        os.path.join(FIXTURES, "boxes.tiff"): [
            f"{1e4 / 28.346456527709961:g} um/px (tiff.XResolution=28.346456527709961 "
            "tiff.YResolution=28.346456527709961 tiff.ResolutionUnit=centimeter)",
            "not one a microscope produces", "the model's patches are 4 um/px",
            "--override_slide_scale"],
        os.path.join(FIXTURES, "😐.svs"): ["16x16 px (8x8 um), is smaller than one tile (401 px"],
        os.path.join(FIXTURES, "boxes_0.dcm"): ["16x16 px (8x8 um), is smaller than one tile"],
        path("stripped.tiff"): ["OpenSlide cannot open this file (OpenSlideUnsupportedFormat"],
        path("noscale.tiff"): ["the slide has no scale", "--slide_um_per_pixel"],
        path("dpi72.tiff"): [
            f"its scale, {dpi72_um} (tiff.XResolution=72 tiff.YResolution=72 "
            "tiff.ResolutionUnit=inch), is not one a microscope produces",
            "the model's patches are 4 um/px", "--slide_um_per_pixel=UM --override_slide_scale"],
        path("last_corrupt.tiff"): ["OpenSlide failed reading its thumbnail (level 1 of levels 0-1"],
        path("coarse_5_1um.tiff"): [
            "its finest level, 5.1 um/px (tiff.XResolution=", "1.27x coarser than the model's "
            "4 um/px patches (at most 1.25x", "--override_slide_scale"],
        path("tiny.tiff"): ["150x150 px (188x188 um), is smaller than one tile (160 px"]}
    return good, bad


def _command(model_dir: str, slides: list, out, *flags) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "idc_engine.slide", f"--model_dir={model_dir}",
         f"--output_dir={out}", "--batch_size=64", *flags, *slides], capture_output=True,
        text=True, encoding="utf-8", timeout=600)


def _rows(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _summary(out, name: str) -> dict:
    with open(os.path.join(out, name, "summary.json"), encoding="utf-8") as f:
        return json.load(f)


def _older_outputs(out) -> None:
    """What earlier runs left in OUT: a complete output of a slide that now fails, one of a good
    slide with a file its new output does not have, and a killed run's staging folder."""
    for name in ("last_corrupt", "good"):
        os.makedirs(out / name)
        (out / name / "summary.json").write_text('{"older": "complete"}\n')
        (out / name / "tiles.csv").write_text("x,y,width,height,idc_probability,idc\n")
    (out / "good" / "stale.txt").write_text("from an older run\n")
    os.makedirs(out / "good.partial")
    (out / "good.partial" / "tiles.csv").write_text("half-written\n")


@pytest.fixture(scope="module")
def field_runs(eval_data, trained_model_dir, tmp_path_factory):
    """{order: (slides in command order, the CompletedProcess, OUT)} for bad-first, bad-last
    and a shuffled order, plus the good and bad slides."""
    folder = tmp_path_factory.mktemp("field")
    patches = slide_files.split_patches(eval_data[0])["images"][:64]
    good, bad = _slide_set(folder, patches)
    shuffled = [*good, *bad]
    random.Random(0).shuffle(shuffled)
    orders = {"bad_first": [*bad, *good], "bad_last": [*good, *bad], "shuffled": shuffled}
    runs = {}
    for order, slides in orders.items():
        out = folder / f"out_{order}"
        if order == "bad_last":
            _older_outputs(out)
        runs[order] = (slides, _command(trained_model_dir, slides, out), out)
    return {"runs": runs, "good": good, "bad": bad, "folder": folder}


@pytest.mark.parametrize("order", ["bad_first", "bad_last", "shuffled"])
def test_each_bad_slide_is_named_once_and_the_good_ones_complete(field_runs, order):
    slides, result, out = field_runs["runs"][order]
    good, bad = field_runs["good"], field_runs["bad"]
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stdout.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(bad), errors
    for path, fragments in bad.items():
        lines = [line for line in errors if line.startswith(f"error: {path}: ")]
        assert len(lines) == 1, (path, errors)
        for fragment in fragments:
            assert fragment in lines[0], (fragment, lines[0])
    assert json.loads(result.stdout.splitlines()[-1]) == {
        "slides": len(slides), "failed": [s for s in slides if s in bad]}
    assert f"{len(bad)} of {len(slides)} slides failed" in result.stderr
    older = ["last_corrupt"] if order == "bad_last" else []
    assert sorted(set(os.listdir(out)) - set(cohort_table.COHORT_FILES)) == sorted(
        [*good.values(), *older])
    for path, name in good.items():
        assert sorted(os.listdir(out / name)) == sorted(
            ["tiles.csv", "idc.geojson", "heatmap.png", "tissue_mask.png", "summary.json"])
        summary = _summary(out, name)
        assert summary["slide"] == os.path.abspath(path)
        assert summary["output_dir"] == str(out / name)
        assert len(_rows(out / name / "tiles.csv")) == summary["tiles_read"] > 0


def test_a_failed_slide_leaves_its_older_output_and_a_good_one_replaces_its_own(field_runs):
    _, _, out = field_runs["runs"]["bad_last"]
    assert (out / "last_corrupt" / "summary.json").read_text() == '{"older": "complete"}\n'
    assert sorted(os.listdir(out / "last_corrupt")) == ["summary.json", "tiles.csv"]
    assert not (out / "good" / "stale.txt").exists()  # replaced whole, not mixed
    assert _summary(out, "good")["tiles_read"] > 0
    assert not [n for n in os.listdir(out) if n.endswith(".partial")]


def test_the_good_slides_give_the_same_tiles_in_every_order(field_runs):
    runs = field_runs["runs"]
    for name in field_runs["good"].values():
        first, *others = [_rows(out / name / "tiles.csv") for _, _, out in runs.values()]
        for rows in others:
            assert [(r["x"], r["y"]) for r in rows] == [(r["x"], r["y"]) for r in first]
            np.testing.assert_allclose([float(r["idc_probability"]) for r in rows],
                                       [float(r["idc_probability"]) for r in first], atol=1e-5)


def test_what_each_good_slide_was_read_as(field_runs):
    out = field_runs["runs"]["bad_first"][2]
    good = _summary(out, "good")
    assert (good["scale"]["level"], good["scale"]["tile_size_at_level"]) == (1, 80)
    assert good["scale"]["slide_scale_source"] == (
        "tiff.XResolution=8000 tiff.YResolution=8000 tiff.ResolutionUnit=centimeter")
    assert good["unreadable_regions"] == []
    jpeg = _summary(out, "jpeg ü😐")  # the same pixels through JPEG at quality 90
    assert jpeg["scale"] == good["scale"]
    good_p = {(r["x"], r["y"]): float(r["idc_probability"]) for r in _rows(out / "good" / "tiles.csv")}
    jpeg_p = {(r["x"], r["y"]): float(r["idc_probability"])
              for r in _rows(out / "jpeg ü😐" / "tiles.csv")}
    both = sorted(set(good_p) & set(jpeg_p))
    assert len(both) >= 0.9 * len(good_p)
    assert np.corrcoef([good_p[k] for k in both], [jpeg_p[k] for k in both])[0, 1] > 0.9
    coarse = _summary(out, "coarse_4_9um")  # 1.225x coarser than the model: accepted
    assert coarse["scale"]["slide_um_per_pixel"] == pytest.approx(4.9)
    assert (coarse["scale"]["level"], coarse["scale"]["tile_size_at_level"]) == (0, 41)
    assert _summary(out, "one_tile")["grid_tiles"] == 1  # exactly one tile: accepted
    corrupt = _summary(out, "level0_corrupt")  # the TIFF tile at level-0 pixels [0, 256)^2
    regions = corrupt["unreadable_regions"]
    assert regions and corrupt["unreadable_tiles"] == len(regions)
    assert all(r["x"] < 256 and r["y"] < 256 for r in regions)
    assert corrupt["tiles_read"] == corrupt["tissue_tiles"] - len(regions) > 0


def test_the_override_flag_reads_the_refused_files_at_the_scale_given(field_runs,
                                                                     trained_model_dir, tmp_path):
    """The 72-dpi TIFF and the one without tags are the good slide's pixels: at
    --slide_um_per_pixel=1.25 --override_slide_scale they give its tiles exactly; OpenSlide's
    72-dpi boxes.tiff is read too."""
    folder = field_runs["folder"]
    slides = [str(folder / "dpi72.tiff"), str(folder / "noscale.tiff"),
              os.path.join(FIXTURES, "boxes.tiff")]
    out = tmp_path / "out"
    result = _command(trained_model_dir, slides, out, "--slide_um_per_pixel=1.25",
                      "--override_slide_scale")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    good = _rows(field_runs["runs"]["bad_first"][2] / "good" / "tiles.csv")
    for name in ("dpi72", "noscale"):
        rows = _rows(out / name / "tiles.csv")
        assert [(r["x"], r["y"]) for r in rows] == [(r["x"], r["y"]) for r in good]
        np.testing.assert_allclose([float(r["idc_probability"]) for r in rows],
                                   [float(r["idc_probability"]) for r in good], atol=1e-5)
    assert _summary(out, "dpi72")["scale"]["slide_scale_source"] == (
        "--slide_um_per_pixel=1.25 --override_slide_scale (the file's: "
        f"{1000 * MM_PER_INCH / 72:g} um/px from tiff.XResolution=72 tiff.YResolution=72 "
        "tiff.ResolutionUnit=inch)")
    assert _summary(out, "noscale")["scale"]["slide_scale_source"] == (
        "--slide_um_per_pixel=1.25 --override_slide_scale (the file's: no openslide.mpp-x/mpp-y)")
    assert _summary(out, "boxes")["scale"]["slide_um_per_pixel"] == 1.25


def test_the_scale_source_names_the_property_or_flag():
    cases = {"😐.svs": (0.499, "openslide.mpp-x=0.499 openslide.mpp-y=0.499 (aperio)"),
             "boxes_0.dcm": (0.499, "openslide.mpp-x=0.499 openslide.mpp-y=0.499 (dicom)")}
    for name, expected in cases.items():
        info = reader.open_info(os.path.join(FIXTURES, name))
        assert (info.um_per_pixel, info.scale_source) == expected
    tags = {"openslide.mpp-x": "352.77777777777777", "openslide.mpp-y": "352.77777777777777",
            "tiff.XResolution": "72", "tiff.YResolution": "72", "tiff.ResolutionUnit": "inch"}
    assert reader.slide_scale(tags, "s")[1] == (
        "tiff.XResolution=72 tiff.YResolution=72 tiff.ResolutionUnit=inch")
    vendor = {**tags, "openslide.mpp-x": "0.25", "openslide.mpp-y": "0.25",
              "openslide.vendor": "hamamatsu"}  # the tags do not give this mpp: the vendor does
    own = "openslide.mpp-x=0.25 openslide.mpp-y=0.25 (hamamatsu)"
    assert reader.slide_scale(vendor, "s", 0.5) == (0.25, own)  # the flag fills in only
    assert reader.slide_scale(vendor, "s", 0.5, override=True) == (
        0.5, f"--slide_um_per_pixel=0.5 --override_slide_scale (the file's: 0.25 um/px from {own})")
    assert reader.slide_scale({"openslide.mpp-x": "0", "openslide.mpp-y": "0"}, "s", 0.5) == (
        0.5, "--slide_um_per_pixel=0.5 (the file has no openslide.mpp-x/mpp-y)")


def test_the_scale_is_checked_against_microscopes_and_the_model():
    for um in (0.05, 0.25, 4.0, 4.9, 5.0):  # up to 1.25x the model's 4.0 um/px
        reader.check_scale("s", um, "src", 4.0)
    with pytest.raises(reader.SlideError, match=r"s: its finest level, 5.1 um/px \(src\), is "
                       r"1.27x coarser than the model's 4 um/px patches \(at most 1.25x"):
        reader.check_scale("s", 5.1, "src", 4.0)
    with pytest.raises(reader.SlideError, match=r"0.04 um/px \(src\), is not one a microscope "
                       r"produces \(0.05 to 10 um/px\); the model's patches are 4 um/px; if"):
        reader.check_scale("s", 0.04, "src", 4.0)
    reader.check_scale("s", 10.0, "src", 10.0)  # a model of 10 um/px patches: 10 is accepted,
    with pytest.raises(reader.SlideError, match="not one a microscope produces"):
        reader.check_scale("s", 10.5, "src", 10.0)  # 10.5 is no microscope's, however coarse
    with pytest.raises(reader.SlideError) as refused:
        reader.check_scale("s", 6.0, "--slide_um_per_pixel=6 --override_slide_scale", 4.0)
    assert "give the true one" not in str(refused.value)  # the flag is the user's own


def test_the_scale_flags_are_checked():
    SlideConfig(model_dir="m", output_dir="o", slide_um_per_pixel=0.25,
                override_slide_scale=True).validate()
    with pytest.raises(SlideConfigError, match="--override_slide_scale needs --slide_um_per_pixel"):
        SlideConfig(model_dir="m", output_dir="o", override_slide_scale=True).validate()
    with pytest.raises(SlideConfigError, match=r"--slide_um_per_pixel must be within \[0.05, 10\]"):
        SlideConfig(model_dir="m", output_dir="o", slide_um_per_pixel=352.8).validate()


def test_a_reading_thread_that_cannot_reopen_the_slide_stops_the_stream(tmp_path):
    """A slide replaced by one OpenSlide cannot open after its planning: each reading thread's
    own handle fails to open; the stream ends and the error waits for the caller (through
    tf.data it would be a TensorFlow error). The intact slide, its control, reads whole."""
    path = str(tmp_path / "slide.tiff")
    slide_files.write_tiled_tiff(path, slide_files.mosaic(
        np.full((16, 50, 50, 3), (200, 120, 190), np.uint8), 2.5, 4, 4), 1, 2.5)
    info = reader.open_info(path)
    grid = tiles.make_grid(0, info.level_dimensions[0], 1.0, 2.5, 4.0, 50)
    col, row = (a.ravel() for a in np.meshgrid(np.arange(grid.columns), np.arange(grid.rows)))
    intact = tiles.ReadReport()
    batches = list(tiles.tile_dataset(path, grid, col, row, 8, 2, intact))
    assert sum(len(b[1]) for b in batches) == grid.columns * grid.rows == 16
    assert intact.stopped_by is None and intact.unreadable == []
    shutil.copy(os.path.join(FIXTURES, "unopenable.tiff"), path)
    stopped = tiles.ReadReport()
    assert list(tiles.tile_dataset(path, grid, col, row, 8, 2, stopped)) == []
    assert isinstance(stopped.stopped_by, reader.SlideError)
    assert str(stopped.stopped_by).startswith(f"{path}: OpenSlide cannot open this file")


def test_a_slide_failing_part_way_leaves_no_folder_and_the_older_one_intact(tmp_path):
    """staged_slide_dir, the folder run_slide writes into: a failure after some files were
    written (the model, the reading) removes them; success replaces the older folder whole."""
    out, slide = tmp_path / "out", outputs.slide_output_name("/slides/a.b.svs")
    with pytest.raises(reader.SlideError):
        with outputs.staged_slide_dir(str(out), slide) as staging:
            outputs.write_png(os.path.join(staging, "tissue_mask.png"), np.ones((4, 4), bool))
            raise reader.SlideError("a.b.svs: stopped part-way")
    assert os.listdir(out) == []  # nothing, not even the staging folder
    os.makedirs(out / "a")
    (out / "a" / "summary.json").write_text("older\n")
    with pytest.raises(reader.SlideError):
        with outputs.staged_slide_dir(str(out), slide) as staging:
            outputs.write_summary(os.path.join(staging, "summary.json"), {"new": 1})
            raise reader.SlideError("a.b.svs: stopped part-way")
    assert os.listdir(out) == ["a"] and os.listdir(out / "a") == ["summary.json"]
    assert (out / "a" / "summary.json").read_text() == "older\n"
    with outputs.staged_slide_dir(str(out), slide) as staging:
        outputs.write_summary(os.path.join(staging, "summary.json"), {"new": 1})
    assert os.listdir(out) == ["a"] and json.loads((out / "a" / "summary.json").read_text()) == {
        "new": 1}


def test_the_dicom_slide_reads_the_pixels_of_the_svs_it_was_converted_from():
    """OpenSlide's DICOM WSI fixture is its Aperio fixture converted by PixelMed's TIFFToDicom
    (its properties say so): the reading threads' reader gets the same pixels from both through
    OpenSlide's two decoders, and white past the slide's edge."""
    dicom = reader.RegionReader(os.path.join(FIXTURES, "boxes_0.dcm"))
    aperio = reader.RegionReader(os.path.join(FIXTURES, "😐.svs"))
    try:
        pixels = dicom.read(0, 0, 0, 16, 16)
        np.testing.assert_array_equal(pixels, aperio.read(0, 0, 0, 16, 16))
        assert pixels.min() < 150  # stained, not blank
        shifted = dicom.read(0, 8, 8, 16, 16)
        np.testing.assert_array_equal(shifted[:8, :8], pixels[8:, 8:])
        assert (shifted[8:, :] == 255).all() and (shifted[:, 8:] == 255).all()
    finally:
        dicom.close()
        aperio.close()
