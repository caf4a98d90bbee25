"""What the patch classifier looks at: Grad-CAM overlays and per-block feature-map grids.

    python -m idc_engine.explain --model=runs/cancernet --explain=a.png,b.png,patches/ --output_dir=x
    python -m idc_engine.explain --model=runs/cancernet --data_dir=DATA --explain=test:16 \\
        --select=confident_errors

A separate command rather than a flag of predict: predict is a batch job over many files that
writes one CSV, explain a close look at a few patches that writes several figures per patch.
It runs the export's `model.keras` (gradients need the Keras model; the SavedModel only serves)
with the export's preprocessing, so its probabilities are the SavedModel's (to float tolerance).

`--explain` takes PNG files, folders (walked like predict's) and `SPLIT:N` entries, which draw N
records of a converted split (--data_dir): `--select=random` half IDC and half non-IDC at random
(seeded), `--select=confident_errors` the N/2 most confident false positives and the N/2 most
confident false negatives at the threshold, the patches worth showing a pathologist.

Writes into --output_dir:
    gradcam/NNN_<name>.png                  patch | Grad-CAM heatmap | overlay, P(IDC) in the title
    feature_maps/NNN_<name>_block<B>.png    every channel of block B's output, one grid per block
    gradcam_sheet.png                       the overlays of all patches side by side
    explanations.csv                        one row per patch: probability, labels, files, error

Grad-CAM (Selvaraju et al. 2017): the gradient of the target score w.r.t. a convolution layer's
output, averaged over positions, weights that layer's channels; the ReLU of the weighted sum is
the map. The target score is the log-odds of the class, logit[c] - logit[other] for the two-class
models here (softmax depends on the difference only, so the raw logit would also credit what
raises both logits). Default layer: `block3_bn3`, CancerNet's last conv block, 12x12 for a 50x50
patch (other models: the last 4D layer before pooling; for mobilenet_v2/resnet50 the backbone
output, coarse: 2x2 for a 50x50 input). CancerNet's 12 cells cover 48 of the 50 pixels (pooling
drops the odd row and column), so the map is upsampled to 48x48 and its edge repeated over the
last 2 pixels.
Each heatmap is divided by its own maximum: compare where, not how much, between patches.
"""

import csv
import dataclasses
import os
import re
import sys

import numpy as np
from absl import app, flags

from idc_engine import predict
from idc_engine.data import records
from idc_engine.training import run_dir

FLAGS = flags.FLAGS

CANCERNET_GRADCAM_LAYER = "block3_bn3"
SELECTIONS = ("random", "confident_errors")
_SPLIT_REQUEST = re.compile(r"^(?P<split>[A-Za-z][\w-]*):(?P<count>\d+)$")
_SHEET_COLUMNS = 8
_SHEET_MAX = 64


# --- the model ---------------------------------------------------------------------------------

@dataclasses.dataclass
class Explainer:
    """An exported Keras model with the preprocessing it was trained with."""
    model: object                 # keras.Model: normalized float [B, S, S, 3] -> probabilities
    image_size: int
    mean: list
    std: list
    threshold: run_dir.Threshold

    @classmethod
    def from_export(cls, model_path: str, threshold: float | None = None) -> "Explainer":
        """--model as predict takes it (model_dir, export dir or saved_model dir)."""
        import keras

        paths = run_dir.find_export(model_path)
        if not os.path.isfile(paths.keras):
            raise run_dir.ModelNotFoundError(f"{paths.keras!r} is missing: explanations need the "
                                             "Keras model of the export")
        pre = run_dir.load_preprocessing(paths)
        return cls(keras.saving.load_model(paths.keras), int(pre["image_size"]),
                   list(pre["channel_mean"]), list(pre["channel_std"]),
                   run_dir.load_threshold(paths, threshold))

    def inputs(self, images):
        """uint8 [N, 50, 50, 3] -> what the model eats (idc_engine.models.preprocessing)."""
        from idc_engine.models.preprocessing import model_input

        return model_input(images, self.image_size, self.mean, self.std)

    def probabilities(self, images, batch_size: int = 256) -> np.ndarray:
        """uint8 [N, 50, 50, 3] -> P(IDC) float32 [N]."""
        out = [self.model(self.inputs(images[i:i + batch_size]), training=False).numpy()[:, 1]
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.empty(0, np.float32)


def _is_feature_layer(layer) -> bool:
    """A layer whose output is a 4D feature map worth explaining: not pooling, dropout, input."""
    import keras

    skipped = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D, keras.layers.Dropout,
               keras.layers.InputLayer)
    output = getattr(layer, "output", None)
    return (output is not None and len(output.shape) == 4 and not isinstance(layer, skipped))


def default_gradcam_layer(model) -> str:
    """block3_bn3 for CancerNet, else the last 4D layer that is not pooling or dropout."""
    names = [layer.name for layer in model.layers]
    if CANCERNET_GRADCAM_LAYER in names:
        return CANCERNET_GRADCAM_LAYER
    candidates = [layer.name for layer in model.layers if _is_feature_layer(layer)]
    if not candidates:
        raise ValueError(f"model {model.name!r} has no 4D layer to explain")
    return candidates[-1]


def block_output_layers(model) -> dict:
    """{"block1": layer name, ...}: the last 4D layer before pooling of each block{B}_* group.

    CancerNet: block1_bn1, block2_bn2, block3_bn3. plain_cnn: block{B}_relu. Backbone models have
    no such names: {}.
    """
    blocks = {}
    for layer in model.layers:
        match = re.match(r"^(block\d+)_", layer.name)
        if match and _is_feature_layer(layer):
            blocks[match[1]] = layer.name
    return blocks


def _layer_output(model, name: str):
    """The symbolic output of layer `name` in `model`'s own graph.

    For a nested model (the backbone of mobilenet_v2/resnet50) `.output` is the output of its
    inner graph, not connected to the outer inputs; its call in the outer graph is its node.
    """
    import keras

    layer = model.get_layer(name)
    nodes = getattr(layer, "_inbound_nodes", None)
    if isinstance(layer, keras.Model) and nodes:
        return nodes[-1].output_tensors[0]
    return layer.output


@dataclasses.dataclass
class GradCam:
    heatmaps: np.ndarray          # float32 [N, 50, 50] in [0, 1], each divided by its maximum
    raw: np.ndarray               # float32 [N, h, w] >= 0, at the layer's resolution
    probabilities: np.ndarray     # float32 [N] P(target class)
    layer: str


def grad_cam(model, inputs, layer_name: str | None = None, target_class: int = 1,
             patch_size: int = records.PATCH_SIZE) -> GradCam:
    """Grad-CAM of `layer_name` for `target_class` on model inputs.

    Args:
      model: keras.Model with a "logits" layer (every model of idc_engine.models).
      inputs: float32 [N, S, S, 3], already normalized (Explainer.inputs).
      layer_name: a layer with a 4D output; None: default_gradcam_layer(model).
      target_class: 1 explains the IDC evidence, 0 the non-IDC evidence.
      patch_size: side of the original patches the heatmaps are mapped onto.

    Returns:
      GradCam with heatmaps float32 [N, patch_size, patch_size].
    """
    import keras
    import tensorflow as tf

    layer_name = layer_name or default_gradcam_layer(model)
    probe = keras.Model(model.inputs, [_layer_output(model, layer_name),
                                       model.get_layer("logits").output])
    inputs = tf.convert_to_tensor(inputs, tf.float32)
    with tf.GradientTape() as tape:
        features, logits = probe(inputs, training=False)
        if logits.shape[-1] == 2:  # log-odds of the target class
            score = logits[:, target_class] - logits[:, 1 - target_class]
        else:
            score = logits[:, target_class]
        # samples are independent (inference-mode BN): the gradient of the sum is per sample
        total = tf.reduce_sum(score)
    grads = tape.gradient(total, features)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)                 # [N, 1, 1, C]
    raw = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1)).numpy()       # [N, h, w]
    probabilities = tf.nn.softmax(logits)[:, target_class].numpy()
    heatmaps = heatmap_to_patch(raw, int(inputs.shape[1]), patch_size)
    return GradCam(heatmaps, raw.astype(np.float32), probabilities, layer_name)


def heatmap_to_patch(raw: np.ndarray, input_size: int, patch_size: int = records.PATCH_SIZE):
    """[N, h, w] maps of a layer -> [N, patch_size, patch_size] in [0, 1], aligned with the patch.

    A layer of stride s = input_size // h covers s*h input pixels from the top-left (pooling
    floors odd sizes): the map is resized to that, its edge repeated over the rest, then the
    model input is scaled back to the patch (the inverse of model_input's resize).
    """
    import tensorflow as tf

    raw = np.asarray(raw, np.float32)
    n, h, w = raw.shape
    covered = (input_size // h * h, input_size // w * w)
    maps = tf.image.resize(raw[..., None], covered, method="bilinear").numpy()[..., 0]
    maps = np.pad(maps, ((0, 0), (0, input_size - covered[0]), (0, input_size - covered[1])),
                  mode="edge")
    if input_size != patch_size:
        maps = tf.image.resize(maps[..., None], [patch_size, patch_size],
                               method="bilinear").numpy()[..., 0]
    peak = maps.reshape(n, -1).max(axis=1).reshape(n, 1, 1)
    return np.where(peak > 0, maps / np.maximum(peak, 1e-12), 0.0).clip(0, 1).astype(np.float32)


def feature_maps(model, inputs, layer_names) -> dict:
    """{layer name: float32 [N, h, w, C]} of the given layers for normalized inputs."""
    import keras

    layer_names = list(layer_names)
    if not layer_names:
        return {}
    probe = keras.Model(model.inputs, [_layer_output(model, n) for n in layer_names])
    outputs = probe(inputs, training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return {name: np.asarray(out) for name, out in zip(layer_names, outputs)}


# --- figures -----------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _verdict(probability: float, threshold: float) -> str:
    return "IDC" if probability >= threshold else "non-IDC"


def _label_text(label) -> str:
    return {0: "non-IDC", 1: "IDC"}.get(label, "unknown")


def _mark_padding(axis, height, width) -> None:
    """A dashed line where the original (undersized) patch ends and the converter's white starts."""
    size = records.PATCH_SIZE
    if height and width and (height, width) != (size, size):
        axis.plot([-0.5, width - 0.5, width - 0.5], [height - 0.5, height - 0.5, -0.5],
                  "--", color="cyan", linewidth=1.2)


def _overlay(axis, image, heatmap, strength: float = 0.6) -> None:
    """The patch with the heatmap on top, transparent where the map is 0: tissue stays visible."""
    plt = _pyplot()
    colours = plt.get_cmap("turbo")(np.asarray(heatmap, np.float32))
    colours[..., 3] = strength * np.asarray(heatmap, np.float32)
    axis.imshow(image, interpolation="nearest")
    axis.imshow(colours, interpolation="bilinear")


def render_gradcam(path: str, image, heatmap, probability: float, threshold: float, title: str,
                   label=None, layer: str = "", height=None, width=None,
                   evidence: str = "IDC") -> None:
    """Writes patch | heatmap | overlay as one PNG.

    image uint8 [50, 50, 3]; heatmap float [50, 50] in [0, 1]; probability = P(IDC).
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.9), dpi=110)
    axes[0].imshow(image, interpolation="nearest")
    axes[0].set_title("patch")
    shown = axes[1].imshow(heatmap, cmap="turbo", vmin=0, vmax=1, interpolation="bilinear")
    axes[1].set_title(f"Grad-CAM ({layer})" if layer else "Grad-CAM")
    if not np.any(heatmap > 0):
        axes[1].text(0.5, 0.5, f"zero everywhere:\nno evidence for {evidence}\nin this layer",
                     transform=axes[1].transAxes, ha="center", va="center", color="white",
                     fontsize=10)
    fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.03)
    _overlay(axes[2], image, heatmap)
    axes[2].set_title("overlay")
    for axis in axes:
        axis.set_xticks([])
        axis.set_yticks([])
        _mark_padding(axis, height, width)
    annotated = f"   annotated: {_label_text(label)}" if label is not None else ""
    fig.suptitle(f"{title}\nP(IDC) = {probability:.3f} -> {_verdict(probability, threshold)} "
                 f"at threshold {threshold:g}{annotated}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def feature_mosaic(maps: np.ndarray, columns: int | None = None) -> np.ndarray:
    """[h, w, C] -> one float image of every channel (each scaled to [0, 1]), NaN gaps between.

    Channels in index order, row-major, so a channel sits in the same place for every patch.
    """
    h, w, channels = maps.shape
    columns = columns or (8 if channels <= 64 else 16)
    rows = -(-channels // columns)
    mosaic = np.full((rows * (h + 1) - 1, columns * (w + 1) - 1), np.nan, np.float32)
    low, high = maps.min(axis=(0, 1)), maps.max(axis=(0, 1))
    scaled = (maps - low) / np.where(high > low, high - low, 1.0)
    for c in range(channels):
        r, q = divmod(c, columns)
        mosaic[r * (h + 1):r * (h + 1) + h, q * (w + 1):q * (w + 1) + w] = scaled[:, :, c]
    return mosaic


def render_feature_grid(path: str, image, maps: np.ndarray, block: str, layer: str,
                        title: str) -> None:
    """Writes the patch beside every channel of one block's output, maps float [h, w, C]."""
    plt = _pyplot()
    h, w, channels = maps.shape
    mosaic = feature_mosaic(maps)
    constant = int(np.sum(maps.max(axis=(0, 1)) == maps.min(axis=(0, 1))))
    aspect = mosaic.shape[1] / mosaic.shape[0]
    fig_height = 4.4
    fig = plt.figure(figsize=(fig_height * 0.9 + fig_height * aspect * 0.85, fig_height), dpi=110)
    grid = fig.add_gridspec(1, 2, width_ratios=[1, aspect * 0.95])
    left, right = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
    left.imshow(image, interpolation="nearest")
    left.set_title("patch", fontsize=9)
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("white")
    right.imshow(np.ma.masked_invalid(mosaic), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    dead = f"; {constant} constant (dark)" if constant else ""
    right.set_title(f"{block} output ({layer}): {channels} channels of {h}x{w}\nin channel order, "
                    f"row by row, each scaled to its own range{dead}", fontsize=9)
    for axis in (left, right):
        axis.set_xticks([])
        axis.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))  # room for the two-line title above the grid
    fig.savefig(path)
    plt.close(fig)


def render_sheet(path: str, items: list, heatmaps, probabilities, threshold: float,
                 numbers: list | None = None) -> None:
    """All overlays side by side (at most _SHEET_MAX), P(IDC) and annotation above each.

    numbers: the figures' file numbers ("#007"), so a tile leads to its gradcam/ file.
    """
    numbers = numbers or [f"#{i}" for i in range(len(items))]
    plt = _pyplot()
    count = min(len(items), _SHEET_MAX)
    columns = min(_SHEET_COLUMNS, count)
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.75 * columns, 2.0 * rows + 0.5), dpi=110,
                             squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for i in range(count):
        axis = axes.ravel()[i]
        _overlay(axis, items[i].image, heatmaps[i])
        p = float(probabilities[i])
        annotated = "" if items[i].label is None else f"\nannot. {_label_text(items[i].label)}"
        wrong = items[i].label is not None and int(p >= threshold) != items[i].label
        axis.set_title(f"{numbers[i]} P(IDC)={p:.2f}{annotated}", fontsize=8,
                       color="red" if wrong else "black")
    shown = "" if count == len(items) else f" (first {count} of {len(items)})"
    fig.suptitle(f"Grad-CAM overlays{shown}; red: prediction at {threshold:g} disagrees with "
                 "the annotation", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --- which patches -----------------------------------------------------------------------------

@dataclasses.dataclass
class PatchItem:
    name: str                      # file-name stem of the figures
    source: str                    # the file, or split:patient:x:y
    image: np.ndarray | None       # uint8 [50, 50, 3]
    label: int | None = None
    height: int | None = None
    width: int | None = None
    error: str = ""


def _safe_name(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", text).strip("_")[:80] or "patch"


def items_from_files(paths) -> list:
    """Decodes files as predict does (padding like the converter); bad files keep their error."""
    items = []
    for path in paths:
        decoded = predict.decode_file(path)
        parsed = predict.name_fields(path)
        stem = os.path.splitext(os.path.basename(path))[0]
        items.append(PatchItem(_safe_name(stem), path, decoded.image, parsed.get("label"),
                               decoded.height, decoded.width, decoded.error))
    return items


def select_records(probabilities, labels, count: int, selection: str, threshold: float,
                   seed: int = 0) -> np.ndarray:
    """Indices of `count` records of a split.

    random: half IDC, half non-IDC (the rest from the other class when one is short), seeded.
    confident_errors: the most confident false positives and false negatives, half each.
    probabilities may be None for "random".
    """
    labels = np.asarray(labels)
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    if selection == "random":
        rng = np.random.default_rng(seed)
        first, second = rng.permutation(positives), rng.permutation(negatives)
    elif selection == "confident_errors":
        predicted = np.asarray(probabilities) >= threshold
        false_negatives = positives[~predicted[positives]]
        false_positives = negatives[predicted[negatives]]
        first = false_negatives[np.argsort(probabilities[false_negatives], kind="stable")]
        second = false_positives[np.argsort(-probabilities[false_positives], kind="stable")]
    else:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    take_first = min(len(first), max(count // 2, count - len(second)))
    take_second = min(len(second), count - take_first)
    return np.concatenate([first[:take_first], second[:take_second]]).astype(np.int64)


def items_from_split(explainer: Explainer, data_dir: str, split: str, count: int,
                     selection: str, seed: int = 0) -> list:
    from idc_engine.data import manifest as manifest_lib
    from idc_engine.input import pipeline

    arrays = pipeline.load_split_arrays(data_dir, split, with_metadata=True)
    probabilities = None
    if selection == "confident_errors":
        probabilities = explainer.probabilities(arrays.images)
    chosen = select_records(probabilities, arrays.labels, count, selection,
                            explainer.threshold.value, seed)
    sizes = predict.padded_sizes(manifest_lib.load_manifest(data_dir))
    items = []
    for i in chosen:
        patient = arrays.patient_id[i].decode()
        x, y, label = int(arrays.x[i]), int(arrays.y[i]), int(arrays.labels[i])
        height, width = sizes.get((patient, x, y), (records.PATCH_SIZE, records.PATCH_SIZE))
        items.append(PatchItem(f"{split}_{patient}_x{x}_y{y}_class{label}",
                               f"{split}:{patient}:x{x}:y{y}", arrays.images[i], label,
                               height, width))
    return items


# --- the run -----------------------------------------------------------------------------------

def explain_items(explainer: Explainer, items: list, output_dir: str, layer: str | None = None,
                  target_class: int = 1, with_feature_maps: bool = True,
                  batch_size: int = 64) -> list:
    """Writes the figures of every item with an image; returns one dict per item (CSV rows)."""
    gradcam_dir = os.path.join(output_dir, "gradcam")
    feature_dir = os.path.join(output_dir, "feature_maps")
    os.makedirs(gradcam_dir, exist_ok=True)
    good = [item for item in items if item.image is not None]
    blocks = block_output_layers(explainer.model) if with_feature_maps else {}
    if blocks:
        os.makedirs(feature_dir, exist_ok=True)
    heatmaps, probabilities, layer_used = [], [], layer
    width = len(str(max(len(items) - 1, 0)))
    names = {id(item): f"{i:0{max(3, width)}d}_{item.name}" for i, item in enumerate(items)}
    files = {id(item): {"gradcam": "", "feature_maps": []} for item in items}
    for start in range(0, len(good), batch_size):
        chunk = good[start:start + batch_size]
        images = np.stack([item.image for item in chunk])
        inputs = explainer.inputs(images)
        cam = grad_cam(explainer.model, inputs, layer, target_class)
        layer_used = cam.layer
        # the title always gives P(IDC), whatever class is explained
        p_idc = cam.probabilities if target_class == 1 else 1.0 - cam.probabilities
        heatmaps.append(cam.heatmaps)
        probabilities.append(p_idc)
        maps = feature_maps(explainer.model, inputs, blocks.values())
        for j, item in enumerate(chunk):
            name = names[id(item)]
            evidence = "IDC" if target_class == 1 else "non-IDC"
            path = os.path.join(gradcam_dir, f"{name}.png")
            render_gradcam(path, item.image, cam.heatmaps[j], float(p_idc[j]),
                           explainer.threshold.value, f"{item.source}  (evidence for {evidence})",
                           item.label, cam.layer, item.height, item.width, evidence)
            files[id(item)]["gradcam"] = path
            for block, layer_name in blocks.items():
                path = os.path.join(feature_dir, f"{name}_{block}.png")
                render_feature_grid(path, item.image, maps[layer_name][j], block, layer_name,
                                    f"{item.source}   P(IDC) = {float(p_idc[j]):.3f}")
                files[id(item)]["feature_maps"].append(path)
    if good:
        render_sheet(os.path.join(output_dir, "gradcam_sheet.png"), good,
                     np.concatenate(heatmaps), np.concatenate(probabilities),
                     explainer.threshold.value,
                     ["#" + names[id(item)].split("_", 1)[0] for item in good])
    probability_of = dict(zip((id(item) for item in good),
                              np.concatenate(probabilities) if good else []))
    rows = []
    for item in items:
        p = probability_of.get(id(item))
        rows.append({"name": names[id(item)], "source": item.source,
                     "idc_probability": "" if p is None else format(float(p), ".9g"),
                     "predicted_label": "" if p is None else int(p >= explainer.threshold.value),
                     "label": "" if item.label is None else item.label,
                     "gradcam_layer": layer_used if p is not None else "",
                     "gradcam_png": files[id(item)]["gradcam"],
                     "feature_map_pngs": ";".join(files[id(item)]["feature_maps"]),
                     "error": item.error})
    with open(os.path.join(output_dir, "explanations.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]) if rows else ["name"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def parse_explain(entries) -> tuple[list, list]:
    """--explain entries -> (file and folder paths, [(split, count)]); existing paths win."""
    paths, requests = [], []
    for entry in entries:
        match = _SPLIT_REQUEST.match(entry)
        if match and not os.path.exists(entry):
            requests.append((match["split"], int(match["count"])))
        else:
            paths.append(entry)
    return paths, requests


# --- the command line --------------------------------------------------------------------------

def define_flags() -> None:
    flags.DEFINE_string("model", None, "A training run's --model_dir, its export/ folder, or "
                        "export/saved_model (the export's model.keras is used).")
    flags.DEFINE_list("explain", [], "Comma-separated PNG files, folders, and SPLIT:N entries "
                      "(N records of a split of --data_dir, picked by --select). Positional "
                      "arguments are added to these (for paths with commas).")
    flags.DEFINE_string("data_dir", None, "A converted directory, for SPLIT:N entries.")
    flags.DEFINE_enum("select", "random", SELECTIONS, "How SPLIT:N picks records: random (half "
                      "IDC, half non-IDC, --seed) or confident_errors (the most confident false "
                      "positives and false negatives at the threshold).")
    flags.DEFINE_integer("seed", 0, "Seed of --select=random.")
    flags.DEFINE_string("output_dir", "explanations", "Where the figures and explanations.csv go.")
    flags.DEFINE_string("layer", None, "Layer of Grad-CAM; default: block3_bn3 for CancerNet, "
                        "else the last 4D layer before pooling.")
    flags.DEFINE_enum("target_class", "1", ["0", "1"], "1: evidence for IDC; 0: for non-IDC.")
    flags.DEFINE_bool("feature_maps", True, "Also write a grid of every channel of each conv "
                      "block's output (CancerNet, plain_cnn).")
    flags.DEFINE_float("threshold", None, "P(IDC) threshold shown in the titles; default: "
                       "<export>/threshold.json, else 0.5.")


def main(argv) -> int:
    entries = list(FLAGS.explain) + list(argv[1:])
    if not FLAGS.model:
        raise app.UsageError("--model is required")
    if not entries:
        raise app.UsageError("--explain needs PNG files, folders or SPLIT:N entries")
    paths, requests = parse_explain(entries)
    if requests and not FLAGS.data_dir:
        raise app.UsageError(f"{requests[0][0]}:{requests[0][1]} needs --data_dir")
    try:
        explainer = Explainer.from_export(FLAGS.model, FLAGS.threshold)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from idc_engine.data.manifest import ManifestError

    listing = predict.list_inputs(paths)
    items = items_from_files(listing.files)
    try:
        for split, count in requests:
            items += items_from_split(explainer, FLAGS.data_dir, split, count, FLAGS.select,
                                      FLAGS.seed)
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if FLAGS.layer:
        try:
            explainer.model.get_layer(FLAGS.layer)
        except ValueError:
            names = ", ".join(layer.name for layer in explainer.model.layers
                              if _is_feature_layer(layer))
            print(f"error: --layer={FLAGS.layer!r} is not a layer of the model; 4D layers: {names}",
                  file=sys.stderr)
            return 2
    rows = explain_items(explainer, items, FLAGS.output_dir, FLAGS.layer, int(FLAGS.target_class),
                         FLAGS.feature_maps)
    errors = [r for r in rows if r["error"]]
    layer = next((r["gradcam_layer"] for r in rows if r["gradcam_layer"]), "-")
    count = len(rows) - len(errors)
    print(f"Explained {count} patch{'es' if count != 1 else ''} (Grad-CAM of {layer}) into "
          f"{FLAGS.output_dir}; threshold {explainer.threshold.describe()}")
    if not block_output_layers(explainer.model) and FLAGS.feature_maps:
        print("  no block<B>_* layers: feature-map grids are for CancerNet and plain_cnn")
    for row in errors:
        print(f"  skipped {row['source']}: {row['error']}")
    print(f"  index: {os.path.join(FLAGS.output_dir, 'explanations.csv')}; "
          f"all overlays: {os.path.join(FLAGS.output_dir, 'gradcam_sheet.png')}")
    return 0


def run() -> None:
    """Console-script entry point (idc-explain)."""
    define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
