"""Writes the embedded synthetic IDC dataset in the real Kaggle layout (idc_engine/data/synthetic.py).

    python -m idc_engine.synthetic --output_dir=/tmp/idc --num_patients=20 --seed=0 --quirks
"""

import dataclasses
import time

from absl import app, flags

from idc_engine import cli
from idc_engine.data import synthetic

FLAGS = flags.FLAGS


@dataclasses.dataclass
class SyntheticConfig:
    """The plain flags; --patient_ids (a list) is defined in define_flags."""
    output_dir: str | None = cli.option(None, "Directory to write the dataset tree into (new or empty).")
    num_patients: int = cli.option(20, "Number of patients (slides) to generate.")
    seed: int = cli.option(0, "Random seed; the same arguments give byte-identical files.")
    min_patches: int = cli.option(60, "Fewest patches per patient.")
    max_patches: int = cli.option(300, "Most patches per patient.")
    quirks: bool = cli.option(False, "Add the real download's mess: duplicate tree, undersized and "
                              "truncated PNGs, litter, one mislabelled and one unparseable file.")
    restained_patients: int = cli.option(0, "Stain the last N patients as another lab would "
                                         "(same tissue, other colours): put them in the test "
                                         "split to measure what stain normalisation buys.")


def define_flags() -> None:
    cli.define_flags(SyntheticConfig)
    flags.DEFINE_list("patient_ids", None, "Comma-separated patient ids (digits); overrides num_patients.")
    flags.mark_flag_as_required("output_dir")


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = cli.config_from_flags(SyntheticConfig)
    start = time.perf_counter()
    summary = synthetic.write_dataset(
        config.output_dir, num_patients=config.num_patients, seed=config.seed,
        patient_ids=FLAGS.patient_ids, min_patches=config.min_patches,
        max_patches=config.max_patches, quirks=config.quirks,
        restained_patients=config.restained_patients)
    seconds = time.perf_counter() - start
    n = summary["num_patches"]
    print(f"wrote {config.output_dir}: {summary['num_patients']} patients, {n} patches, "
          f"{summary['num_positive']} positive ({summary['num_positive'] / max(n, 1):.1%})")
    if summary["quirks"]:
        print(f"quirks: duplicate tree {summary['duplicate_root']}/, "
              f"{len(summary['undersized'])} undersized, "
              f"{len(summary['truncated'])} truncated, {len(summary['mislabelled'])} mislabelled, "
              f"{len(summary['unparseable'])} unparseable, {len(summary['litter'])} litter files")
    print(f"{seconds:.2f} s, {n / seconds:.0f} patches/s")
    return 0


def run() -> None:
    """Console-script entry point (idc-synthetic)."""
    cli.run(define_flags, main)


if __name__ == "__main__":
    run()
