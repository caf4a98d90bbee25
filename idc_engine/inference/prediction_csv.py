"""The predictions CSV: written atomically as its rows are produced, and the summary printed
after it (counts of predictions, errors, padding, repeated patches; images/s)."""

import collections
import csv
import dataclasses
import os
import time

from idc_engine import atomic_files
from idc_engine.inference.patch_files import InputListing
from idc_engine.inference.prediction_rows import CSV_COLUMNS
from idc_engine.training.run_dir import Threshold


def _error_kind(error: str) -> str:
    return error.split(":", 1)[0].split(" (", 1)[0]


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
    # (patient_id, x, y) of the labelled rows counted so far, for repeated_patches
    seen: set = dataclasses.field(default_factory=set, repr=False)

    @property
    def images_per_sec(self) -> float:
        return self.predicted / self.seconds if self.seconds > 0 else 0.0

    def count(self, row: dict) -> None:
        """Adds one CSV row (a dict of CSV_COLUMNS) to the counts."""
        self.rows += 1
        if row["error"]:
            self.errors[_error_kind(row["error"])] += 1
        else:
            self.predicted += 1
            self.predicted_idc += int(row["predicted_label"])
            self.padded += "padded" in row["note"]
            self.converted += "converted to RGB" in row["note"] or "not PNG" in row["note"]
        if row["label"] != "":
            self.labelled += 1
            self.true_idc += int(row["label"])
            key = (row["patient_id"], row["x"], row["y"])
            self.repeated_patches += key in self.seen
            self.seen.add(key)


def write_csv(rows, output: str, runtime: str = "") -> PredictionSummary:
    """Writes the rows to `output` (atomic_files.replace_atomically), each with `runtime` (the
    runtime that served it, inference/runtime.py) in its runtime column; returns the counts.

    The clock runs while rows are produced, so images/s covers decoding and inference. An
    exception while producing them (e.g. ManifestError) leaves no CSV and no temporary file.
    """
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    summary = PredictionSummary()
    start = time.perf_counter()
    with atomic_files.replace_atomically(output, newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({"runtime": runtime, **row})
            summary.count(row)
        summary.seconds = time.perf_counter() - start
    return summary


def format_summary(summary: PredictionSummary, threshold: Threshold, output: str,
                   listing: InputListing | None = None) -> str:
    """The lines printed after a run; `listing` is None for a split's records."""
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
