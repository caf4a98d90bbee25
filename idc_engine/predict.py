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

The CSV is written under a temporary name and renamed when complete.
"""

import collections
import concurrent.futures
import csv
import dataclasses
import logging as std_logging
import os
import re
import sys
import time

import numpy as np
from absl import app, flags
from absl import logging as absl_logging
from PIL import Image

from idc_engine.data import kaggle_tree, patch_png, records
from idc_engine.inference import serving
from idc_engine.training.run_dir import THRESHOLD_FILE, Threshold, find_export, load_threshold

FLAGS = flags.FLAGS

CSV_COLUMNS = ("path", "idc_probability", "predicted_label", "error", "height", "width",
               "patient_id", "x", "y", "label", "note")
TOO_LARGE = (f"larger than {records.PATCH_SIZE}x{records.PATCH_SIZE} "
             "(use the converter's patch size)")
# Above this size a file cannot be a 50x50 patch in any sane encoding: its header is read first,
# so a whole-slide image given by mistake is refused without decoding it.
_HEADER_CHECK_BYTES = 1 << 20
_FILES_PER_TASK = 64            # files decoded per thread-pool task (amortizes task overhead)


# --- inputs ------------------------------------------------------------------------------------

@dataclasses.dataclass
class InputListing:
    files: list            # paths to predict, in order (missing ones too: they get an error row)
    ignored_litter: int = 0
    ignored_other: int = 0  # non-PNG files met while walking folders


def list_inputs(args) -> InputListing:
    """Files and folders from the command line -> the files to predict, in order.

    Folders are walked recursively in sorted order for *.png; litter is ignored everywhere.
    """
    listing = InputListing([])
    for arg in args:
        if os.path.isdir(arg):
            for root, dirs, names in os.walk(arg):
                dirs[:] = sorted(d for d in dirs if d.lower() not in kaggle_tree.LITTER_DIRS
                                 and not d.startswith("._"))
                for name in sorted(names):
                    if kaggle_tree.is_litter(name):
                        listing.ignored_litter += 1
                    elif name.lower().endswith(".png"):
                        listing.files.append(os.path.join(root, name))
                    else:
                        listing.ignored_other += 1
        elif kaggle_tree.is_litter(os.path.basename(arg)):
            listing.ignored_litter += 1
        else:
            listing.files.append(arg)
    return listing


@dataclasses.dataclass
class DecodedFile:
    """One input file after decoding: the padded patch, or the reason there is none."""
    path: str
    image: np.ndarray | None = None   # uint8 [50, 50, 3]
    height: int | None = None
    width: int | None = None
    error: str = ""
    note: str = ""


def _image_note(path: str) -> str:
    """Why a decodable file was not used as is (it is not an 8-bit RGB PNG); rare, so the
    header is read a second time here rather than on every file."""
    try:
        with Image.open(path) as image:
            fmt, mode = image.format, image.mode
            has_alpha = "A" in mode or "transparency" in image.info
    except Exception:  # only a note; decode_patch already read the file
        return ""
    parts = []
    if fmt != "PNG":
        parts.append(f"{fmt} file, not PNG")
    if mode != "RGB":
        parts.append(f"mode {mode} converted to RGB" + (" (alpha dropped)" if has_alpha else ""))
    return "; ".join(parts)


def _clean_reason(error: Exception) -> str:
    # PIL names an in-memory buffer "<_io.BytesIO object at 0x...>": noise in a CSV
    return re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(error))


def _too_large_from_header(path: str) -> str:
    """The TOO_LARGE error from a file's header alone, "" if it is small enough to decode."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Image.DecompressionBombError:
        return TOO_LARGE
    except Exception:  # decode_patch then gives the reason
        return ""
    if height > records.PATCH_SIZE or width > records.PATCH_SIZE:
        return f"{TOO_LARGE}: {height}x{width}"
    return ""


def decode_file(path: str) -> DecodedFile:
    """Reads one file as a 50x50 RGB patch, padded exactly as the converter pads; never raises.

    Returns a DecodedFile with `image` uint8 [50, 50, 3], or with `error` set.
    """
    out = DecodedFile(path)
    try:
        size = os.path.getsize(path)
        if size == 0:
            out.error = "empty file"
            return out
        if size > _HEADER_CHECK_BYTES:
            out.error = _too_large_from_header(path)
            if out.error:
                return out
        pixels, out.height, out.width, rgb_png = patch_png.decode_patch(path)
    except FileNotFoundError:
        out.error = "no such file"
        return out
    except IsADirectoryError:
        out.error = "is a directory"
        return out
    except OSError as e:
        out.error = f"cannot read: {e.strerror or _clean_reason(e)}"
        return out
    except ValueError as e:
        match = re.match(r"larger than \d+x\d+: (\d+)x(\d+)", str(e))
        if match:
            out.height, out.width = int(match[1]), int(match[2])
            out.error = f"{TOO_LARGE}: {out.height}x{out.width}"
        else:
            out.error = _clean_reason(e)
        return out
    except Exception as e:  # a malformed file must give a row, never stop the run
        out.error = f"not a readable image ({type(e).__name__}: {_clean_reason(e)})"
        return out
    out.image = np.frombuffer(pixels, np.uint8).reshape(records.IMAGE_SHAPE)
    notes = []
    if rgb_png is None:
        notes.append(_image_note(path))
    if (out.height, out.width) != records.IMAGE_SHAPE[:2]:
        notes.append(f"padded from {out.height}x{out.width} to {records.PATCH_SIZE}x"
                     f"{records.PATCH_SIZE} with white at the bottom/right, as the converter does")
    out.note = "; ".join(n for n in notes if n)
    return out


def _decode_chunk(paths: list) -> list:
    return [decode_file(p) for p in paths]


def decode_files(paths: list, num_threads: int = 2, max_pending_files: int = 4096):
    """Yields DecodedFile for each path, in order, decoded ahead in a thread pool.

    Threads overlap file I/O (slow or network disks) and PIL decoding with the model, which
    releases the GIL; at most `max_pending_files` decoded patches wait in memory.
    """
    chunks = [paths[i:i + _FILES_PER_TASK] for i in range(0, len(paths), _FILES_PER_TASK)]
    window = max(num_threads, max_pending_files // _FILES_PER_TASK)
    with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
        pending = collections.deque()
        next_chunk = 0
        while pending or next_chunk < len(chunks):
            while next_chunk < len(chunks) and len(pending) < window:
                pending.append(pool.submit(_decode_chunk, chunks[next_chunk]))
                next_chunk += 1
            yield from pending.popleft().result()


# --- prediction --------------------------------------------------------------------------------

def name_fields(path: str) -> dict:
    """patient_id, x, y, label from a Kaggle-style file name; {} for other names."""
    parsed = kaggle_tree.parse_patch_name(os.path.basename(path))
    if parsed is None:
        return {}
    return {"patient_id": parsed.patient, "x": parsed.x, "y": parsed.y, "label": parsed.label}


def _probability_fields(probability: float, threshold: float) -> dict:
    # 9 significant digits: a float32 written so that it reads back to the same value
    return {"idc_probability": format(float(probability), ".9g"),
            "predicted_label": int(probability >= threshold)}


def predict_files(predictor, paths: list, threshold: float, batch_size: int = 256,
                  num_threads: int = 2):
    """Yields one CSV row (a dict of CSV_COLUMNS) per path, in order; never raises for a file.

    predictor: uint8 [N, 50, 50, 3] -> P(IDC) [N] (e.g. serving.ServedModel).
    """
    waiting, images = [], []

    def flush():
        if images:
            probabilities = predictor(np.stack(images))
            for row, probability in zip((r for r in waiting if r["error"] == ""), probabilities):
                row.update(_probability_fields(probability, threshold))
        yield from waiting
        waiting.clear()
        images.clear()

    for decoded in decode_files(paths, num_threads, max_pending_files=max(4096, 4 * batch_size)):
        row = {"path": decoded.path, "idc_probability": "", "predicted_label": "",
               "error": decoded.error, "height": decoded.height or "", "width": decoded.width or "",
               "patient_id": "", "x": "", "y": "", "label": "", "note": decoded.note,
               **name_fields(decoded.path)}
        waiting.append(row)
        if decoded.image is not None:
            images.append(decoded.image)
            if len(images) == batch_size:
                yield from flush()
    yield from flush()


def padded_sizes(manifest: dict) -> dict:
    """(patient_id, x, y) -> (height, width) of the split's padded patches, from the manifest."""
    sizes = {}
    for item in manifest.get("padded", []):
        parsed = kaggle_tree.parse_patch_name(item["path"].rsplit("/", 1)[-1])
        if parsed:
            sizes[(parsed.patient, parsed.x, parsed.y)] = (item["height"], item["width"])
    return sizes


def predict_split(predictor, data_dir: str, split: str, threshold: float, batch_size: int = 256):
    """Yields one CSV row per record of a converted split, in file order (deterministic).

    Raises ManifestError / ShardError (idc_engine.input.pipeline) for a missing or corrupt split.
    """
    from idc_engine.data import manifest as manifest_lib

    sizes = padded_sizes(manifest_lib.load_manifest(data_dir))
    predictions = serving.predict_split(predictor, data_dir, split, batch_size)
    full = records.PATCH_SIZE
    for i, probability in enumerate(predictions.idc_probability):
        patient = str(predictions.patient_id[i])
        x, y = int(predictions.x[i]), int(predictions.y[i])
        height, width = sizes.get((patient, x, y), (full, full))
        note = "" if (height, width) == (full, full) else (
            f"padded from {height}x{width} by the converter")
        yield {"path": "", **_probability_fields(probability, threshold), "error": "",
               "height": height, "width": width, "patient_id": patient, "x": x, "y": y,
               "label": int(predictions.labels[i]), "note": note}


# --- the CSV -----------------------------------------------------------------------------------

@dataclasses.dataclass
class PredictionSummary:
    rows: int = 0
    predicted: int = 0
    predicted_idc: int = 0
    true_idc: int = 0              # rows with a known label (file name or record) that are IDC
    labelled: int = 0
    errors: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    padded: int = 0
    converted: int = 0             # not an RGB PNG: grayscale, RGBA, JPEG... made RGB
    repeated_patches: int = 0      # files whose (patient, x, y) an earlier file already had
    seconds: float = 0.0

    @property
    def images_per_sec(self) -> float:
        return self.predicted / self.seconds if self.seconds > 0 else 0.0


def _error_kind(error: str) -> str:
    return error.split(":", 1)[0].split(" (", 1)[0]


def write_csv(rows, output: str) -> PredictionSummary:
    """Writes the rows to `output` (temporary name, then renamed); returns the counts.

    The clock runs while rows are produced, so images/s covers decoding and inference.
    """
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(output)}.tmp-{os.getpid()}")
    summary = PredictionSummary()
    seen = set()
    start = time.perf_counter()
    try:
        with open(temporary, "w", newline="") as f:
            writer = csv.DictWriter(f, CSV_COLUMNS)
            writer.writeheader()
            for row in rows:
                writer.writerow(row)
                summary.rows += 1
                if row["error"]:
                    summary.errors[_error_kind(row["error"])] += 1
                else:
                    summary.predicted += 1
                    summary.predicted_idc += int(row["predicted_label"])
                    summary.padded += "padded" in row["note"]
                    summary.converted += "converted to RGB" in row["note"] or "not PNG" in row["note"]
                if row["label"] != "":
                    summary.labelled += 1
                    summary.true_idc += int(row["label"])
                    key = (row["patient_id"], row["x"], row["y"])
                    summary.repeated_patches += key in seen
                    seen.add(key)
        summary.seconds = time.perf_counter() - start
        os.replace(temporary, output)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return summary


def format_summary(summary: PredictionSummary, threshold: Threshold, output: str,
                   listing: InputListing | None = None) -> str:
    what, work = ("files", "decoding") if listing is not None else ("records", "reading")
    lines = [f"Predicted {summary.predicted:,} of {summary.rows:,} {what} in {summary.seconds:.1f} s "
             f"({summary.images_per_sec:,.0f} images/s, {work} and inference)"]
    share = summary.predicted_idc / summary.predicted if summary.predicted else 0.0
    lines.append(f"  predicted IDC: {summary.predicted_idc:,} ({share:.1%}) at threshold "
                 f"{threshold.describe()}")
    if summary.labelled:
        lines.append(f"  annotated IDC (file names / records): {summary.true_idc:,} of "
                     f"{summary.labelled:,}; metrics: python -m idc_engine.evaluate")
    if summary.repeated_patches:
        lines.append(f"  {summary.repeated_patches:,} files repeat the patient, x and y of an earlier "
                     "file (the Kaggle download holds every patch twice: give one copy of the tree)")
    if summary.padded or summary.converted:
        lines.append(f"  padded to 50x50: {summary.padded:,}; converted to RGB: {summary.converted:,}"
                     " (see the note column)")
    if listing is not None and (listing.ignored_litter or listing.ignored_other):
        lines.append(f"  ignored: {listing.ignored_litter:,} litter files (.DS_Store, Thumbs.db, ._*),"
                     f" {listing.ignored_other:,} non-PNG files in folders")
    if summary.errors:
        lines.append(f"  errors: {sum(summary.errors.values()):,} (no prediction; the run went on)")
        lines += [f"    {n:>7,}  {kind}" for kind, n in summary.errors.most_common()]
    lines.append(f"wrote {output}")
    return "\n".join(lines)


# --- the command line --------------------------------------------------------------------------

def define_flags() -> None:
    flags.DEFINE_string("model", None, "A training run's --model_dir, its export/ folder, or "
                        "export/saved_model: the SavedModel serving uint8 patches is used.")
    flags.DEFINE_string("data_dir", None, "Predict a split of this converted directory instead "
                        "of files (the CSV then has patient_id, x, y and the true label).")
    flags.DEFINE_string("split", "test", "The split of --data_dir to predict.")
    flags.DEFINE_string("output", "predictions.csv", "The CSV to write (replaced when complete).")
    flags.DEFINE_integer("batch_size", 256, "Patches per model call.")
    flags.DEFINE_integer("decode_threads", 2, "Threads reading and decoding PNG files ahead of "
                         "the model.")
    flags.DEFINE_float("threshold", None, "P(IDC) threshold of predicted_label; default: "
                       "<export>/threshold.json (chosen on validation by idc_engine.evaluate), "
                       "else 0.5.")


def main(argv) -> int:
    inputs = argv[1:]
    if not FLAGS.model:
        raise app.UsageError("--model is required")
    if bool(inputs) == bool(FLAGS.data_dir):
        raise app.UsageError("give PNG files/folders or --data_dir (and --split), not both "
                             "and not neither")
    if FLAGS.batch_size < 1:
        raise app.UsageError("--batch_size must be >= 1")
    try:
        paths = find_export(FLAGS.model)
        threshold = load_threshold(paths, FLAGS.threshold)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if threshold.source == "default":
        absl_logging.warning("no %s in %s: predicted_label uses P(IDC) >= %g", THRESHOLD_FILE,
                             paths.export_dir, threshold.value)
    # TensorFlow's INFO chatter through absl would drown the summary
    std_logging.getLogger("tensorflow").setLevel(std_logging.WARNING)
    from idc_engine.data.manifest import ManifestError  # TensorFlow loads only past this point

    predictor = serving.ServedModel(paths.saved_model)
    listing = None
    if inputs:
        listing = list_inputs(inputs)
        rows = predict_files(predictor, listing.files, threshold.value, FLAGS.batch_size,
                             FLAGS.decode_threads)
    else:
        rows = predict_split(predictor, FLAGS.data_dir, FLAGS.split, threshold.value,
                             FLAGS.batch_size)
    try:
        summary = write_csv(rows, FLAGS.output)
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(summary, threshold, FLAGS.output, listing))
    return 0


def run() -> None:
    """Console-script entry point (idc-predict)."""
    define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
