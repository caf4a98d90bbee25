"""Predicts IDC for PNG patches, or for a converted split, with an exported model; writes a CSV.

    python -m idc_engine.predict --model=runs/cancernet ~/slides/patches/ more.png --output=p.csv
    python -m idc_engine.predict --model=runs/cancernet --data_dir=~/data/idc_tfrecords --split=test

--model is a training run's model_dir, its export/ folder, or export/saved_model itself; the
SavedModel signature (uint8 patches -> P(IDC)) does the preprocessing, so nothing here has to
repeat it. Files are decoded and padded exactly as the converter does (`patch_png.decode_patch`:
an undersized edge patch gets white at the bottom/right), so a patch gets the same probability
from its PNG as from the converted TFRecords.

The label is `idc_probability >= threshold`, the threshold read from `<export>/threshold.json`
(chosen on the validation split by training, then by python -m idc_engine.evaluate); without
that file 0.5 is used and the summary says so. `--threshold` overrides both.

Bad inputs never stop the run: a file that is empty, not an image, truncated, larger than 50x50
or unreadable gets a row with the reason in `error` and no probability. Folders are walked
recursively for `*.png`; macOS/Windows litter (.DS_Store, Thumbs.db, `._*`, __MACOSX/) is
ignored. Files named on the command line are tried whatever their extension (PIL decodes them;
a note says when one was not an RGB PNG). Images larger than 50x50 are refused, not tiled: the
model only knows 50x50 patches at the dataset's magnification, and a tile grid of another image
would need its magnification to mean anything; cut patches as the dataset does first.

CSV columns (one row per file, in the order given, folders sorted):

    path             the file as found (empty for records of a converted split)
    idc_probability  P(IDC) from the model, empty on error
    predicted_label  1 (IDC) or 0 at the threshold, empty on error
    error            empty, or why the file has no prediction
    height, width    the image's size before padding
    patient_id, x, y, label   from a Kaggle-style name <patient>_idx5_x<X>_y<Y>_class<C>.png
                     (the label in the name is the annotation), or from the records of a split
    note             e.g. padding, a grayscale/RGBA/JPEG image converted to RGB
    runtime          what served the prediction: savedmodel or int8 (--runtime; the summary
                     printed says why)

The CSV is written under a temporary name and renamed when complete.
"""


import dataclasses
import logging as std_logging

from absl import app
from absl import logging as absl_logging

from idc_engine import cli
from idc_engine.inference import patch_files, prediction_csv, prediction_rows, tta
from idc_engine.inference import runtime as runtime_lib
from idc_engine.training.run_dir import THRESHOLD_FILE, find_export, load_threshold


@dataclasses.dataclass
class PredictConfig:
    model: str | None = cli.option(None, "A training run's --model_dir, its export/ folder, or "
                                   "export/saved_model: the SavedModel serving uint8 patches is "
                                   "used.")
    data_dir: str | None = cli.option(None, "Predict a split of this converted directory instead "
                                      "of files (the CSV then has patient_id, x, y and the true "
                                      "label).")
    split: str = cli.option("test", "The split of --data_dir to predict.")
    output: str = cli.option("predictions.csv", "The CSV to write (replaced when complete).")
    batch_size: int = cli.option(256, "Patches per model call.")
    decode_threads: int = cli.option(2, "Threads reading and decoding PNG files ahead of the "
                                     "model.")
    threshold: float | None = cli.option(None, "P(IDC) threshold of predicted_label; default: "
                                         "<export>/threshold.json (chosen on validation by "
                                         "idc_engine.evaluate), else 0.5.")
    tta: str = cli.option("none", "Test-time augmentation: none, or d4 (the mean P(IDC) over "
                          "the 8 rotations/mirrorings of each patch, one batch of 8N).")
    runtime: str = cli.option("auto", runtime_lib.HELP)


def define_flags() -> None:
    cli.define_flags(PredictConfig)


def main(argv) -> int:
    config = cli.config_from_flags(PredictConfig)
    inputs = argv[1:]
    if not config.model:
        raise app.UsageError("--model is required")
    if bool(inputs) == bool(config.data_dir):
        raise app.UsageError("give PNG files/folders or --data_dir (and --split), not both "
                             "and not neither")
    if config.batch_size < 1:
        raise app.UsageError("--batch_size must be >= 1")
    if config.tta not in tta.TTA_MODES:
        raise app.UsageError(f"--tta={config.tta!r}: use one of {', '.join(tta.TTA_MODES)}")
    runtime_lib.check_flag(config.runtime)
    paths = find_export(config.model)
    threshold = load_threshold(paths, config.threshold)
    if threshold.source == "default":
        absl_logging.warning("no %s in %s: predicted_label uses P(IDC) >= %g", THRESHOLD_FILE,
                             paths.export_dir, threshold.value)
    # TensorFlow's INFO chatter through absl would drown the summary
    std_logging.getLogger("tensorflow").setLevel(std_logging.WARNING)

    runtime = runtime_lib.choose(paths, config.runtime)
    predictor = tta.with_tta(runtime_lib.load(paths, runtime), config.tta)
    listing = None
    if inputs:
        listing = patch_files.list_inputs(inputs)
        rows = prediction_rows.predict_files(predictor, listing.files, threshold.value,
                                             config.batch_size, config.decode_threads)
    else:
        rows = prediction_rows.predict_split_rows(predictor, config.data_dir, config.split,
                                                  threshold.value, config.batch_size)
    summary = prediction_csv.write_csv(rows, config.output, runtime.name)
    print(prediction_csv.format_summary(summary, threshold, config.output, listing))
    print(f"  runtime: {runtime.name} ({runtime.reason})")
    return 0


def run() -> None:
    """Console-script entry point (idc-predict)."""
    cli.run(define_flags, main)


if __name__ == "__main__":
    run()
