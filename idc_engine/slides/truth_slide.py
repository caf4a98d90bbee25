"""A slide whose truth is known: a converted split's patches laid back at their (x, y).

Each patient's patches go on the grid cell of their position ((x - min x) / 50, (y - min y) /
50: the dataset names a patch by its top-left corner on the 2.5x scan), patients side by side
with one empty column between them; idc_engine/slides/pyramid_tiff.py writes the TIFF. Used by
the demo (tools/make_slide.py), the tests and benchmarks/slide_inference.py.
"""

import numpy as np

from idc_engine.data import records
from idc_engine.slides import pyramid_tiff


def layout(patient_ids, x, y) -> tuple[np.ndarray, tuple[int, int]]:
    """(cells int [N, 2] (column, row), (rows, columns)) for patches of patients (str [N]) at
    slide positions x, y int [N]; duplicates of a cell keep the first patch's place (later
    ones are dropped by the writer's dict)."""
    patient_ids, x, y = np.asarray(patient_ids), np.asarray(x), np.asarray(y)
    cells = np.zeros((len(x), 2), np.int64)
    offset, rows = 0, 0
    for patient in sorted(set(patient_ids.tolist())):
        mine = patient_ids == patient
        col = (x[mine] - x[mine].min()) // records.PATCH_SIZE
        row = (y[mine] - y[mine].min()) // records.PATCH_SIZE
        cells[mine, 0], cells[mine, 1] = col + offset, row
        offset += int(col.max()) + 2
        rows = max(rows, int(row.max()) + 1)
    return cells, (rows, max(offset - 1, 1))


def read_split(data_dir: str, split: str) -> dict:
    """{"images" uint8 [N, 50, 50, 3], "labels" int64 [N], "patient_id" str [N], "x", "y"
    int64 [N]} of every patch of a converted split, in file order."""
    from idc_engine.input import pipeline

    parts = {"images": [], "labels": [], "patient_id": [], "x": [], "y": []}
    dataset = pipeline.make_dataset(data_dir, split, 512, training=False, with_metadata=True,
                                    deterministic=True)
    for images, labels, metadata in dataset.as_numpy_iterator():
        parts["images"].append(images)
        parts["labels"].append(labels)
        parts["patient_id"].append(np.array([p.decode() for p in metadata["patient_id"]]))
        parts["x"].append(metadata["x"])
        parts["y"].append(metadata["y"])
    return {k: np.concatenate(v) for k, v in parts.items()}


def write_truth_slide(path: str, truth_csv: str, patches: dict, um_per_pixel: float,
                      levels: int = 3) -> dict:
    """Writes the slide of `patches` (read_split's dict) and its truth CSV (level-0 x, y,
    width, height of each patch's tile, label, patient_id); returns {"width", "height",
    "cell", "patches"}."""
    from idc_engine import atomic_files

    cells, shape = layout(patches["patient_id"], patches["x"], patches["y"])
    width, height = pyramid_tiff.write_slide(path, patches["images"], cells, shape, um_per_pixel,
                                             levels)
    cell = pyramid_tiff.cell_pixels(um_per_pixel, levels)
    with atomic_files.replace_atomically(truth_csv) as f:
        f.write("x,y,width,height,label,patient_id\n")
        for (c, r), label, patient in zip(cells.tolist(), patches["labels"].tolist(),
                                          patches["patient_id"].tolist()):
            f.write(f"{c * cell},{r * cell},{cell},{cell},{label},{patient}\n")
    return {"width": width, "height": height, "cell": cell, "patches": len(cells)}
