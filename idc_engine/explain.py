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

import dataclasses

from absl import app, flags

from idc_engine import cli
from idc_engine.inference import explanations, gradcam, patch_files, patch_selection

FLAGS = flags.FLAGS


@dataclasses.dataclass
class ExplainConfig:
    """The plain flags; --explain (a list), --select and --target_class (enums) are defined by
    hand in define_flags."""
    model: str | None = cli.option(None, "A training run's --model_dir, its export/ folder, or "
                                   "export/saved_model (the export's model.keras is used).")
    data_dir: str | None = cli.option(None, "A converted directory, for SPLIT:N entries.")
    seed: int = cli.option(0, "Seed of --select=random.")
    output_dir: str = cli.option("explanations", "Where the figures and explanations.csv go.")
    layer: str | None = cli.option(None, "Layer of Grad-CAM; default: block3_bn3 for CancerNet, "
                                   "else the last 4D layer before pooling.")
    feature_maps: bool = cli.option(True, "Also write a grid of every channel of each conv "
                                    "block's output (CancerNet, plain_cnn).")
    threshold: float | None = cli.option(None, "P(IDC) threshold shown in the titles; default: "
                                         "<export>/threshold.json, else 0.5.")


def define_flags() -> None:
    cli.define_flags(ExplainConfig)
    flags.DEFINE_list("explain", [], "Comma-separated PNG files, folders, and SPLIT:N entries "
                      "(N records of a split of --data_dir, picked by --select). Positional "
                      "arguments are added to these (for paths with commas).")
    flags.DEFINE_enum("select", "random", patch_selection.SELECTIONS, "How SPLIT:N picks "
                      "records: random (half IDC, half non-IDC, --seed) or confident_errors (the "
                      "most confident false positives and false negatives at the threshold).")
    flags.DEFINE_enum("target_class", "1", ["0", "1"], "1: evidence for IDC; 0: for non-IDC.")


def main(argv) -> int:
    config = cli.config_from_flags(ExplainConfig)
    entries = list(FLAGS.explain) + list(argv[1:])
    if not config.model:
        raise app.UsageError("--model is required")
    if not entries:
        raise app.UsageError("--explain needs PNG files, folders or SPLIT:N entries")
    paths, requests = patch_selection.parse_explain(entries)
    if requests and not config.data_dir:
        raise app.UsageError(f"{requests[0][0]}:{requests[0][1]} needs --data_dir")
    explainer = gradcam.Explainer.from_export(config.model, config.threshold)

    items = patch_selection.items_from_files(patch_files.list_inputs(paths).files)
    for split, count in requests:
        items += patch_selection.items_from_split(explainer, config.data_dir, split, count,
                                                  FLAGS.select, config.seed)
    if config.layer:
        gradcam.check_layer(explainer.model, config.layer)
    rows = explanations.explain_items(explainer, items, config.output_dir, config.layer,
                                      int(FLAGS.target_class), config.feature_maps)
    has_blocks = bool(gradcam.block_output_layers(explainer.model))
    print(explanations.format_summary(rows, config.output_dir, explainer.threshold,
                                      config.feature_maps, has_blocks))
    return 0


def run() -> None:
    """Console-script entry point (idc-explain)."""
    cli.run(define_flags, main)


if __name__ == "__main__":
    run()
