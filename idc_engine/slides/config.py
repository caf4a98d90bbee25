"""Whole-slide inference's configuration: one field per `python -m idc_engine.slide` flag.

`validate()` turns every bad flag into one message naming it, before TensorFlow starts; the
model's own scale is read from its export (`model_scale`).
"""

import dataclasses
import json
import os

from idc_engine import cli, errors
from idc_engine.data import records
from idc_engine.inference import runtime as runtime_lib
from idc_engine.inference.tta import TTA_MODES
from idc_engine.slides.reader import MICROSCOPE_UM_PER_PIXEL
from idc_engine.training.run_dir import ExportPaths


class SlideConfigError(errors.EngineError, ValueError):
    """A flag of python -m idc_engine.slide that cannot be used; the message names it."""


@dataclasses.dataclass
class SlideConfig:
    model_dir: str = cli.option("", "A training run (python -m idc_engine.train), its export/ "
                                "folder or export/saved_model: the SavedModel evaluate uses.")
    output_dir: str = cli.option("", "Where each slide's outputs go: OUTPUT_DIR/<file name up to its "
                                 "first dot, then _2, _3, ... for further slides of that name>/, "
                                 "and the cohort table OUTPUT_DIR/cohort.csv.")
    slide_um_per_pixel: float | None = cli.option(
        None, "Level-0 micrometres per pixel of slides without openslide.mpp-x/mpp-y (e.g. 0.25 "
        "for a 40x scan); a slide's own scale wins unless --override_slide_scale.")
    override_slide_scale: bool = cli.option(
        False, "Take --slide_um_per_pixel for every slide, in place of the scale its file "
        "states (e.g. a TIFF whose resolution tags say 72 dpi: 352.8 um/px).")
    tissue_threshold: float | None = cli.option(
        None, "HSV saturation (0..1) above which a thumbnail pixel is tissue; default: Otsu's "
        "threshold on the slide's thumbnail, kept within [0.05, 0.12].")
    min_tissue_fraction: float = cli.option(0.25, "A tile is read when at least this fraction "
                                            "of its area is tissue in the mask.")
    threshold: float | None = cli.option(None, "P(IDC) threshold of the idc column; default: "
                                         "<export>/threshold.json, else 0.5.")
    batch_size: int = cli.option(256, "Tiles per model call, summed over the replicas.")
    read_threads: int = cli.option(2, "Threads reading slide regions ahead of the model.")
    strategy: str = cli.option("auto", "As train's: auto (mirrored with several GPUs or "
                               "--num_cpu_devices > 1, else one device), default, mirrored.")
    num_cpu_devices: int = cli.option(1, "Split the CPU into N logical devices "
                                      "(MirroredStrategy without GPUs).")
    tta: str = cli.option("none", "Test-time augmentation: none, or d4 (each tile's mean P(IDC) "
                          "over its 8 rotations and mirror images, one model call of 8x the "
                          "batch; about 8x the model's cost).")
    shard: str = cli.option("", "I/N: take every N-th slide from the I-th (0-based) of the "
                            "list, for N workers sharing it; default: from a Slurm array "
                            "(SLURM_ARRAY_TASK_ID, _MIN, _COUNT) or a Kubernetes Indexed Job "
                            "(JOB_COMPLETION_INDEX with --num_shards), else every slide.")
    num_shards: int = cli.option(0, "N for a Kubernetes Indexed Job (its completions): the pod "
                                 "is given its index only.")
    overwrite: bool = cli.option(False, "Run every slide again, even one whose complete outputs "
                                 "in --output_dir were made by the same slide, export and "
                                 "settings (skipped otherwise).")
    max_attempts: int = cli.option(3, "Runs of a slide that never completes (the process was "
                                   "killed or crashed on it, or it failed) before it is given "
                                   "up as an error row; --overwrite starts the count again.")
    slide_timeout_seconds: float = cli.option(
        0.0, "Stop a slide still being read this many seconds after it started, as an error "
        "row (counted as a run, see --max_attempts); 0: no limit. A read hung inside OpenSlide "
        "is not interrupted: the scheduler's own time limit ends that process, and the next "
        "run counts the attempt.")
    lock_expiry_seconds: float = cli.option(
        600.0, "A slide's lock (OUTPUT_DIR/.cohort/<name>.lock, touched by its holder every "
        "quarter of this) left this long untouched belongs to a killed worker and is broken.")
    overlap_slides: str = cli.option(
        "on", "on: plan the next slide (open, thumbnail, tissue mask) and write the previous "
        "one's outputs while the current one is read and served; off: each slide's phases in "
        "turn (for a host whose every core the model keeps busy). A slide a killed run left "
        "unfinished runs alone either way, so that a slide that crashes the process is the one "
        "its attempts blame.")
    runtime: str = cli.option("auto", runtime_lib.HELP + " The int8 model runs on the CPU, "
                              "outside the strategy.")

    def validate(self) -> None:
        """Raises SlideConfigError naming the first bad flag."""
        low, high = MICROSCOPE_UM_PER_PIXEL
        checks = (
            (self.model_dir, "--model_dir is required: a run written by python -m idc_engine.train"),
            (self.output_dir, "--output_dir is required"),
            (self.slide_um_per_pixel is None or low <= self.slide_um_per_pixel <= high,
             f"--slide_um_per_pixel must be within [{low:g}, {high:g}] (what microscopes "
             "produce; 0.25 at 40x)"),
            (self.slide_um_per_pixel or not self.override_slide_scale,
             "--override_slide_scale needs --slide_um_per_pixel=UM: the scale to use"),
            (self.tissue_threshold is None or 0 <= self.tissue_threshold < 1,
             "--tissue_threshold must be in [0, 1)"),
            (0 <= self.min_tissue_fraction <= 1, "--min_tissue_fraction must be in [0, 1]"),
            (self.batch_size >= 1, "--batch_size must be >= 1"),
            (self.read_threads >= 1, "--read_threads must be >= 1"),
            (self.strategy in ("auto", "default", "mirrored"),
             "--strategy must be auto, default or mirrored"),
            (self.num_cpu_devices >= 1, "--num_cpu_devices must be >= 1"),
            (self.tta in TTA_MODES, f"--tta={self.tta!r}: use one of {', '.join(TTA_MODES)}"),
            (self.num_shards >= 0, "--num_shards must be >= 0"),
            (self.max_attempts >= 1, "--max_attempts must be >= 1"),
            (self.lock_expiry_seconds >= 1, "--lock_expiry_seconds must be >= 1"),
            (self.slide_timeout_seconds >= 0, "--slide_timeout_seconds must be >= 0"),
            (self.overlap_slides in ("on", "off"),
             f"--overlap_slides={self.overlap_slides!r}: use on or off"),
            (self.runtime in runtime_lib.RUNTIMES,
             f"--runtime={self.runtime!r}: use one of {', '.join(runtime_lib.RUNTIMES)}"))
        for ok, message in checks:
            if not ok:
                raise SlideConfigError(message)


def model_scale(paths: ExportPaths) -> dict:
    """{"patch_um_per_pixel", "patch_size", "source"} of the export's preprocessing.json;
    exports written before these keys existed get the dataset's 4.0 um/px and 50 px, and
    "source" says they were assumed."""
    try:
        with open(paths.preprocessing) as f:
            preprocessing = json.load(f)
    except (OSError, ValueError):
        preprocessing = {}
    if "patch_um_per_pixel" in preprocessing:
        return {"patch_um_per_pixel": float(preprocessing["patch_um_per_pixel"]),
                "patch_size": int(preprocessing.get("patch_size", records.PATCH_SIZE)),
                "source": paths.preprocessing}
    return {"patch_um_per_pixel": records.PATCH_UM_PER_PIXEL, "patch_size": records.PATCH_SIZE,
            "source": f"assumed: no patch_um_per_pixel in {os.path.basename(paths.preprocessing)} "
                      "(an older export); the dataset's 4.0 um/px"}
