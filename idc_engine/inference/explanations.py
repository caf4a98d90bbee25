"""Explaining a list of patches into a folder: the figures of each, the sheet, the CSV index.

    <output_dir>/gradcam/NNN_<name>.png                patch | Grad-CAM heatmap | overlay
    <output_dir>/feature_maps/NNN_<name>_block<B>.png  every channel of block B's output
    <output_dir>/gradcam_sheet.png                     the overlays of all patches side by side
    <output_dir>/explanations.csv                      one row per patch: probability, labels,
                                                       files, error
"""

import csv
import dataclasses
import os

import numpy as np

from idc_engine import atomic_files
from idc_engine.inference import explanation_figures, gradcam

EXPLANATIONS_CSV = "explanations.csv"
GRADCAM_SHEET = "gradcam_sheet.png"


@dataclasses.dataclass
class _Figures:
    """What was made of one patch."""
    name: str                                   # NNN_<item name>: the figures' file stem
    probability: np.floating | None = None      # P(IDC), float32; None: the patch had no image
    gradcam_png: str = ""
    feature_map_pngs: list = dataclasses.field(default_factory=list)


def _figure_names(items: list) -> list:
    """NNN_<name> per item, NNN its index zero-padded to 3 digits or more, so files sort."""
    width = max(3, len(str(max(len(items) - 1, 0))))
    return [f"{i:0{width}d}_{item.name}" for i, item in enumerate(items)]


def _explain_batch(explainer, chunk: list, figures: list, output_dir: str, layer, target_class,
                   blocks: dict) -> tuple[np.ndarray, str]:
    """Grad-CAM and feature-map figures of PatchItems with images; fills `figures` (one per
    item). Returns the heatmaps float32 [len(chunk), 50, 50] and the layer used."""
    inputs = explainer.inputs(np.stack([item.image for item in chunk]))
    cam = gradcam.grad_cam(explainer.model, inputs, layer, target_class)
    # the title always gives P(IDC) as the SavedModel serves it, whatever class is explained
    network_p_idc = cam.probabilities if target_class == 1 else 1.0 - cam.probabilities
    p_idc = explainer.served_probability(network_p_idc)
    maps = gradcam.feature_maps(explainer.model, inputs, blocks.values())
    evidence = "IDC" if target_class == 1 else "non-IDC"
    for j, (item, made) in enumerate(zip(chunk, figures)):
        made.probability = p_idc[j]
        made.gradcam_png = os.path.join(output_dir, "gradcam", f"{made.name}.png")
        explanation_figures.render_gradcam(
            made.gradcam_png, item.image, cam.heatmaps[j], float(p_idc[j]),
            explainer.threshold.value, f"{item.source}  (evidence for {evidence})", item.label,
            cam.layer, item.height, item.width, evidence)
        for block, layer_name in blocks.items():
            path = os.path.join(output_dir, "feature_maps", f"{made.name}_{block}.png")
            explanation_figures.render_feature_grid(
                path, item.image, maps[layer_name][j], block, layer_name,
                f"{item.source}   P(IDC) = {float(p_idc[j]):.3f}")
            made.feature_map_pngs.append(path)
    return cam.heatmaps, cam.layer


def _csv_rows(items: list, figures: list, layer: str, threshold: float) -> list:
    """One explanations.csv row (a dict) per item, in order."""
    rows = []
    for item, made in zip(items, figures):
        p = made.probability
        rows.append({"name": made.name, "source": item.source,
                     "idc_probability": "" if p is None else format(float(p), ".9g"),
                     "predicted_label": "" if p is None else int(p >= threshold),
                     "label": "" if item.label is None else item.label,
                     "gradcam_layer": layer if p is not None else "",
                     "gradcam_png": made.gradcam_png,
                     "feature_map_pngs": ";".join(made.feature_map_pngs),
                     "error": item.error})
    return rows


def explain_items(explainer, items: list, output_dir: str, layer: str | None = None,
                  target_class: int = 1, with_feature_maps: bool = True,
                  batch_size: int = 64) -> list:
    """Writes the figures of every item with an image; returns one dict per item (CSV rows).

    explainer: gradcam.Explainer; items: PatchItem (patch_selection), those without an image
    (a file that did not decode) get a row with their error and no figure.
    """
    os.makedirs(os.path.join(output_dir, "gradcam"), exist_ok=True)
    blocks = gradcam.block_output_layers(explainer.model) if with_feature_maps else {}
    if blocks:
        os.makedirs(os.path.join(output_dir, "feature_maps"), exist_ok=True)
    figures = [_Figures(name) for name in _figure_names(items)]
    good = [i for i, item in enumerate(items) if item.image is not None]
    heatmaps, layer_used = [], layer
    for start in range(0, len(good), batch_size):
        chunk = good[start:start + batch_size]
        maps, layer_used = _explain_batch(explainer, [items[i] for i in chunk],
                                          [figures[i] for i in chunk], output_dir, layer,
                                          target_class, blocks)
        heatmaps.append(maps)
    if good:
        explanation_figures.render_sheet(
            os.path.join(output_dir, GRADCAM_SHEET), [items[i] for i in good],
            np.concatenate(heatmaps), [figures[i].probability for i in good],
            explainer.threshold.value, ["#" + figures[i].name.split("_", 1)[0] for i in good])
    rows = _csv_rows(items, figures, layer_used, explainer.threshold.value)
    with atomic_files.replace_atomically(os.path.join(output_dir, EXPLANATIONS_CSV),
                                         newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]) if rows else ["name"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def format_summary(rows: list, output_dir: str, threshold, feature_maps_asked: bool,
                   has_blocks: bool) -> str:
    """The lines printed after explain_items: count, layer, threshold, skipped files, index.

    threshold: run_dir.Threshold; has_blocks: the model has block<B>_* layers.
    """
    errors = [r for r in rows if r["error"]]
    layer = next((r["gradcam_layer"] for r in rows if r["gradcam_layer"]), "-")
    count = len(rows) - len(errors)
    lines = [f"Explained {count} patch{'es' if count != 1 else ''} (Grad-CAM of {layer}) into "
             f"{output_dir}; threshold {threshold.describe()}"]
    if not has_blocks and feature_maps_asked:
        lines.append("  no block<B>_* layers: feature-map grids are for CancerNet and plain_cnn")
    lines += [f"  skipped {row['source']}: {row['error']}" for row in errors]
    lines.append(f"  index: {os.path.join(output_dir, EXPLANATIONS_CSV)}; "
                 f"all overlays: {os.path.join(output_dir, GRADCAM_SHEET)}")
    return "\n".join(lines)
