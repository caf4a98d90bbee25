"""The viewer over what idc-slide itself wrote: run_slide with the session's trained model on the
test patients' slide (tests/slide_files.py), then the catalog and the overlay read from its
outputs. The viewer rebuilds the run's tile grid from the slide and the summary's scale: the
same number of cells as the run's grid, every tiles.csv row on a cell of it."""

import csv
import os

import pytest
import slide_files

from idc_engine.slides import truth_slide
from idc_engine.slides.config import SlideConfig, model_scale
from idc_engine.training.run_dir import find_export, load_threshold
from idc_engine.view import catalog, overlay


@pytest.fixture(scope="module")
def slide_run(eval_data, trained_model_dir, tmp_path_factory):
    import tensorflow as tf

    from idc_engine.inference.serving import ServedModel
    from idc_engine.slides.run import run_slide

    base = tmp_path_factory.mktemp("view_slide_run")
    slide = str(base / "patients.tiff")
    truth_slide.write_truth_slide(slide, slide + ".truth.csv",
                                  slide_files.split_patches(eval_data[0]),
                                  slide_files.UM_PER_PIXEL, slide_files.LEVELS)
    paths = find_export(trained_model_dir)
    config = SlideConfig(model_dir=trained_model_dir, output_dir=str(base / "out"))
    summary = run_slide(slide, config, ServedModel(paths.saved_model),
                        tf.distribute.get_strategy(), load_threshold(paths), model_scale(paths))
    return str(base / "out"), summary


def test_the_catalog_and_overlay_of_a_real_run_are_its_grid_and_tiles(slide_run,
                                                                      trained_model_dir):
    out, summary = slide_run
    (entry,) = catalog.load_catalog(out).values()
    assert entry.viewable and entry.message == ""
    record = catalog.describe(entry)
    assert record["model"].startswith(os.path.abspath(trained_model_dir))
    assert record["date"] == summary["finished"] and record["tiles"] == summary["tiles_read"]
    data = overlay.overlay_record(entry)
    assert data["columns"] * data["rows"] == summary["grid_tiles"]
    assert data["cell"] == summary["scale"]["tile_size_level0"]
    with open(os.path.join(summary["output_dir"], "tiles.csv")) as f:
        rows = list(csv.DictReader(f))
    placed = {(round(c * data["cell"]), round(r * data["cell"])): p
              for c, r, p in zip(data["col"], data["row"], data["p"])}
    assert set(placed) == {(int(r["x"]), int(r["y"])) for r in rows}
    assert {xy for xy, p in placed.items() if p >= data["threshold"]} == {
        (int(r["x"]), int(r["y"])) for r in rows if r["idc"] == "1"}
    assert all(0 <= c < data["columns"] and 0 <= r < data["rows"]
               for c, r in zip(data["col"], data["row"]))
