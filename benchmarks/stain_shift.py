"""What stain normalisation buys: train on one lab's staining, test on another's.

    python -m benchmarks.stain_shift --output_dir=runs/benchmarks
    python -m benchmarks.stain_shift --quick    # every run at tiny sizes (benchmarks/quick.py)

Generates a synthetic tree (idc_engine.synthetic) whose last --test_patients patients are
stained as another lab stains (`restained_patients`: same tissue model, other stain vectors,
strengths and lamp), puts exactly those in the test split (train and val: the first lab's
patients), converts it, fits the stain target (python -m idc_engine.stain fit), then trains one
short run per --settings entry with flags/cpu_quick.flags and --epochs, and evaluates each on the
test split with python -m idc_engine.evaluate (threshold on val). Reports each run's test and val
ROC-AUC. Short runs: the figures say what normalisation does under a stain shift on this
synthetic data, not how CancerNet does on real slides.
"""

import json
import os
import subprocess
import sys
import tempfile

from absl import app, flags

from benchmarks import quick
from benchmarks.report import BenchmarkReport

FLAGS = flags.FLAGS
flags.DEFINE_integer("train_patients", 16, "Patients of the first lab (train and val).")
flags.DEFINE_integer("val_patients", 3, "Of those, in the val split.")
flags.DEFINE_integer("test_patients", 5, "Patients of the other lab: the test split.")
flags.DEFINE_integer("seed", 4, "Seed of the generated tree.")
flags.DEFINE_float("epochs", 3, "Training epochs of each run.")
flags.DEFINE_list("settings", ["none", "macenko", "reinhard", "none+stain_augment"],
                  "Runs: a --stain_normalization value, '+stain_augment' adding the 'stain' "
                  "augmentation op to the default augmentation.")
flags.DEFINE_string("output_dir", "runs/benchmarks", "Where the JSON and TensorBoard go.")
flags.DEFINE_string("work_dir", None, "Where data and runs go (default: a temporary directory).")
quick.define_flag()
QUICK_SIZES = {"train_patients": 3, "val_patients": 1, "test_patients": 2, "epochs": 0.1}


def _python(*args) -> str:
    result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def make_data(work: str) -> str:
    """The converted split (the module docstring) with its stain target; returns data_dir."""
    from idc_engine.data import conversion, synthetic

    total = FLAGS.train_patients + FLAGS.test_patients
    summary = synthetic.write_dataset(os.path.join(work, "png"), num_patients=total,
                                      seed=FLAGS.seed, min_patches=100, max_patches=250,
                                      restained_patients=FLAGS.test_patients)
    restained = set(summary["restained"])
    first_lab = sorted(p for p in summary["patients"] if p not in restained)
    split = {p: "test" for p in restained}
    split.update({p: "val" if i < FLAGS.val_patients else "train"
                  for i, p in enumerate(first_lab)})
    with open(os.path.join(work, "split.json"), "w") as f:
        json.dump(split, f)
    data_dir = os.path.join(work, "data")
    conversion.convert_tree(os.path.join(work, "png"), data_dir,
                            split_file=os.path.join(work, "split.json"), num_workers=2,
                            min_shards=2, progress=False)
    _python("idc_engine.stain", "fit", f"--data_dir={data_dir}")
    return data_dir


def train_and_evaluate(data_dir: str, work: str, setting: str) -> dict:
    """{"test_auc", "val_auc"} of one run."""
    method, _, extra = setting.partition("+")
    model_dir = os.path.join(work, setting.replace("+", "_"))
    augment = "pathology|stain" if extra == "stain_augment" else "pathology"
    _python("idc_engine.train", "--flagfile=flags/cpu_quick.flags", f"--data_dir={data_dir}",
            f"--model_dir={model_dir}", f"--epochs={FLAGS.epochs}", f"--augment={augment}",
            f"--stain_normalization={method}", "--deterministic")
    _python("idc_engine.evaluate", f"--model_dir={model_dir}", f"--data_dir={data_dir}",
            "--bootstrap=0", "--slides=0")
    with open(os.path.join(model_dir, "evaluation", "test", "metrics.json")) as f:
        metrics = json.load(f)
    with open(os.path.join(model_dir, "best.json")) as f:
        best = json.load(f)
    return {"test_auc": metrics["patch"]["auc"], "val_auc": best.get("val_auc")}


def main(argv) -> None:
    del argv
    quick.apply(QUICK_SIZES)
    work = FLAGS.work_dir or tempfile.mkdtemp(prefix="idc_bench_stain_shift_")
    os.makedirs(work, exist_ok=True)
    data_dir = make_data(work)
    report = BenchmarkReport("stain_shift", FLAGS.output_dir, config={
        "quick": FLAGS.quick, "train_patients": FLAGS.train_patients,
        "val_patients": FLAGS.val_patients,
        "test_patients (other lab)": FLAGS.test_patients, "seed": FLAGS.seed,
        "epochs": FLAGS.epochs, "flags": "flags/cpu_quick.flags --deterministic",
        "work_dir": work})
    for setting in FLAGS.settings:
        result = train_and_evaluate(data_dir, work, setting)
        report.add(f"{setting}_test_roc_auc", result["test_auc"])
        if result["val_auc"] is not None:
            report.add(f"{setting}_val_roc_auc", result["val_auc"])
    report.write()


if __name__ == "__main__":
    app.run(main)
