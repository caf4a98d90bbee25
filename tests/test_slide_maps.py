"""Slide maps: each patch lands at its (x, y); the reassembled slide of converted TFRecords
matches the patch files of the Kaggle-layout tree pixel for pixel; patient selection."""

import os

import numpy as np
import pytest
from PIL import Image

from idc_engine.data import kaggle_tree
from idc_engine.evaluation import slide_maps


def _synthetic_slide():
    """Patches of one solid colour each, on a 50-px grid starting at x, y = 1, with holes."""
    cells = [(0, 0), (0, 1), (1, 0), (2, 3), (4, 1), (3, 3)]  # (row, col)
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 250, (len(cells), 3), dtype=np.uint8)
    images = np.broadcast_to(colours[:, None, None, :], (len(cells), 50, 50, 3)).copy()
    x = np.array([1 + 50 * c for _, c in cells]) + 100  # the slide's tissue starts at x = 101
    y = np.array([1 + 50 * r for r, _ in cells])
    return images, x, y, cells


def test_each_patch_lands_at_its_position_and_holes_are_white():
    images, x, y, cells = _synthetic_slide()
    canvas, (x0, y0) = slide_maps.assemble_mosaic(images, x, y)
    assert (x0, y0) == (101, 1)
    assert canvas.shape == (5 * 50, 4 * 50, 3)  # rows 0..4, cols 0..3
    for image, px, py in zip(images, x, y):
        np.testing.assert_array_equal(canvas[py - y0:py - y0 + 50, px - x0:px - x0 + 50], image)
    occupied = np.zeros(canvas.shape[:2], bool)
    for r, c in cells:
        occupied[50 * r:50 * r + 50, 50 * c:50 * c + 50] = True
    assert (canvas[~occupied] == 255).all()


def test_patch_grid_has_one_cell_per_position_and_nan_elsewhere():
    images, x, y, cells = _synthetic_slide()
    values = np.arange(len(cells), dtype=float) / 10
    grid, origin = slide_maps.patch_grid(values, x, y)
    assert origin == (101, 1) and grid.shape == (5, 4)
    for value, (r, c) in zip(values, cells):
        assert grid[r, c] == value
    assert np.isnan(grid).sum() == 5 * 4 - len(cells)


def test_the_outline_follows_the_boundary_of_the_region():
    # an L of three cells (0, 0), (1, 0), (1, 1) with the origin at (1, 1); no inner edges
    mask = np.array([[True, False], [True, True]])
    segments = {tuple(sorted(s)) for s in slide_maps.outline_segments(mask, 1, 1)}
    assert segments == {tuple(sorted(s)) for s in [
        ((1, 1), (51, 1)), ((1, 1), (1, 51)), ((51, 1), (51, 51)),                # cell (0, 0)
        ((1, 51), (1, 101)), ((1, 101), (51, 101)),                               # cell (1, 0)
        ((51, 51), (101, 51)), ((51, 101), (101, 101)), ((101, 51), (101, 101)),  # cell (1, 1)
    ]}


def test_render_slide_map_writes_a_png(tmp_path):
    images, x, y, cells = _synthetic_slide()
    labels = np.array([0, 1, 0, 1, 0, 1])
    path = slide_maps.render_slide_map(str(tmp_path / "s" / "patient_1.png"), "1", images, labels,
                                       np.linspace(0, 1, len(cells)), x, y, 0.4, "synthetic")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 1500 and image.height > 500


def test_a_reassembled_slide_matches_the_patch_files_of_the_tree(idc_tree, converted):
    """The converted records of one patient, put back at their (x, y), show exactly the PNG file
    named by that (x, y) in the Kaggle tree (undersized edge patches: their stored part)."""
    from idc_engine.evaluation.slide_patches import read_patient_patches

    root, _ = idc_tree
    data_dir, manifest = converted
    patient = manifest["splits"]["test"]["patients"][0]
    images, x, y = read_patient_patches(data_dir, "test", [patient])[patient]
    canvas, (x0, y0) = slide_maps.assemble_mosaic(images, x, y)
    compared = 0
    for label in (0, 1):
        folder = os.path.join(root, patient, str(label))
        for name in os.listdir(folder):
            parsed = kaggle_tree.parse_patch_name(name)
            if parsed is None or kaggle_tree.is_litter(name):
                continue
            px, py = parsed.x, parsed.y
            try:
                with Image.open(os.path.join(folder, name)) as file:
                    expected = np.asarray(file.convert("RGB"))
            except OSError:
                continue  # a truncated file the converter skipped
            h, w = expected.shape[:2]
            if not ((x == px) & (y == py)).any():
                continue  # skipped by the converter (e.g. folder and name disagree)
            np.testing.assert_array_equal(
                canvas[py - y0:py - y0 + h, px - x0:px - x0 + w], expected, err_msg=name)
            compared += 1
    assert compared == len(images)


ROWS = [{"patient_id": p, "true_idc_fraction": f}
        for p, f in [("10253", 0.30), ("8863", 0.05), ("9000", 0.6), ("12000", 0.1),
                     ("13000", 0.9)]]


@pytest.mark.parametrize("selection, expected", [
    ("all", ["10253", "8863", "9000", "12000", "13000"]),
    ("0", []),
    ("1", ["8863"]),
    ("2", ["8863", "13000"]),                       # the extremes of IDC extent
    ("3", ["8863", "10253", "13000"]),              # ... and the middle
    ("99", ["8863", "12000", "10253", "9000", "13000"]),
    ("9000", ["9000"]),                             # a number that is a patient id
    ("12000, 8863", ["12000", "8863"]),
])
def test_select_patients(selection, expected):
    assert slide_maps.select_patients(ROWS, selection) == expected


def test_unknown_patients_are_named():
    with pytest.raises(ValueError, match="patients 777 are not in this split; it has 10253"):
        slide_maps.select_patients(ROWS, "9000,777")
    with pytest.raises(ValueError, match="--slides"):
        slide_maps.parse_selection("1,,2")
