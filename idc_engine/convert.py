"""Converts the Kaggle IDC download into patient-sharded TFRecords with a manifest.

    python -m idc_engine.convert --input_dir=~/data/IDC --output_dir=~/data/idc_tfrecords
    python -m idc_engine.convert --verify --output_dir=~/data/idc_tfrecords

Phases: scan the tree (names only, fast) -> assign patients to splits -> pack each split's
patients into shards -> decode and write the shards in parallel worker processes (staging
folder) -> commit: the staging folder becomes `shards-<id>/`, then `manifest.json` is replaced
atomically, then the previous conversion's files are removed (commit_conversion). At every
instant the output directory holds one complete conversion, the previous one or the new one; a
first run stopped at any point leaves no manifest, so nothing that looks complete. A second
conversion into a folder another one is writing into is refused (staging.conversion_lock).
Record schema: idc_engine/data/records.py; manifest layout: idc_engine/data/manifest.py.
"""

import dataclasses
import os
import sys

from absl import app, flags

from idc_engine import cli
from idc_engine.data import conversion, records, splits, staging
from idc_engine.data import manifest as manifest_lib
from idc_engine.data.conversion_report import format_report

FLAGS = flags.FLAGS


@dataclasses.dataclass
class ConvertConfig:
    """The plain flags; --split and --image_encoding (enums) are defined in define_flags."""
    input_dir: str | None = cli.option(None, "The Kaggle download: its root or its "
                                       "IDC_regular_ps50_idx5/ folder. Each patch (patient, x, y) "
                                       "is counted once.")
    output_dir: str | None = cli.option(None, "Where the TFRecord shards and manifest.json go.")
    split_file: str | None = cli.option(None, "A JSON object {patient: train|val|test}; overrides "
                                        "--split. Patients not in it are reported and left out.")
    val_fraction: float = cli.option(0.1, "Fraction of patients for validation (--split=patients).")
    test_fraction: float = cli.option(0.1, "Fraction of patients for test (--split=patients).")
    folds: int = cli.option(5, "Folds of --split=kfold (patients stratified by IDC ratio; "
                            "python -m idc_engine.crossval trains and scores each).")
    kfold_test: str = cli.option("none", "--split=kfold's held-out test set, in no fold: none; "
                                 "stratified (--test_fraction of the patients); janowczyk2016 "
                                 "(the published test patients).")
    seed: int = cli.option(0, "Seed of the patient split and of the record order in shards.")
    num_shards: int = cli.option(0, "Shards per split; 0 = from --shard_size_mb and "
                                 "--min_shards. Never more than the split's patients (one patient, "
                                 "one shard).")
    shard_size_mb: float = cli.option(64.0, "Target shard size when --num_shards=0.")
    min_shards: int = cli.option(8, "Least shards per split when --num_shards=0, so that many "
                                 "input workers can each read distinct files.")
    num_workers: int = cli.option(0, "Worker processes; 0 = one per available core.")
    overwrite: bool = cli.option(False, "Replace the conversion in a non-empty --output_dir "
                                 "(files the converter does not write are kept).")
    verify: bool = cli.option(False, "Only re-read every shard of --output_dir and check it "
                              "against manifest.json.")
    progress: bool = cli.option(True, "Show a progress line with patches/s on stderr.")


def define_flags() -> None:
    cli.define_flags(ConvertConfig)
    flags.DEFINE_enum("split", "patients", splits.SPLIT_MODES,
                      "patients: random patient split stratified by IDC ratio "
                      "(--val_fraction, --test_fraction, --seed). janowczyk2016: the published "
                      "84/29/49-patient split of Cruz-Roa 2014 / Janowczyk 2016; other patients "
                      "are reported and left out. kfold: --folds patient folds (fold0...), "
                      "stratified by IDC ratio, and --kfold_test.")
    flags.DEFINE_enum("image_encoding", "raw", records.IMAGE_ENCODINGS, "raw: uint8 HWC bytes (fastest "
                      "to read); png: the PNG bytes (about 2.5x smaller files, slower to read).")


def verify(output_dir: str) -> int:
    """--verify: re-reads every shard; prints the problems (exit code 1) or that all match."""
    from idc_engine.data import verify as verify_lib  # TensorFlow is needed only here
    problems = verify_lib.verify_conversion(output_dir)
    if problems:
        print(f"{output_dir}: {len(problems)} problems", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"{output_dir}: every shard matches manifest.json")
    extra = staging.leftovers(output_dir, manifest_lib.load_manifest(output_dir))
    if extra:
        print(f"note: {len(extra)} entries of earlier or interrupted conversions, not part of "
              f"this one (manifest.json does not list them; the next conversion with "
              f"--overwrite removes them): {', '.join(extra)}")
    return 0


def main(argv) -> int:
    del argv
    config = cli.config_from_flags(ConvertConfig)
    if not config.output_dir:
        raise app.UsageError("--output_dir is required")
    if config.verify:
        return verify(config.output_dir)
    if not config.input_dir:
        raise app.UsageError("--input_dir is required (or --verify)")
    manifest = conversion.convert_tree(
        os.path.expanduser(config.input_dir), os.path.expanduser(config.output_dir),
        split=FLAGS.split, split_file=config.split_file, val_fraction=config.val_fraction,
        test_fraction=config.test_fraction, seed=config.seed, num_shards=config.num_shards,
        shard_size_mb=config.shard_size_mb, min_shards=config.min_shards,
        image_encoding=FLAGS.image_encoding, num_workers=config.num_workers,
        overwrite=config.overwrite, progress=config.progress, folds=config.folds,
        kfold_test=config.kfold_test)
    print(format_report(manifest, config.output_dir))
    return 0


def run() -> None:
    """Console-script entry point (idc-convert)."""
    cli.run(define_flags, main)


if __name__ == "__main__":
    run()
