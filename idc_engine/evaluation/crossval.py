"""Patient k-fold cross-validation over a --split=kfold conversion (python -m idc_engine.crossval).

For fold k of K (the conversion's fold0 ... fold<K-1>): test = fold k, val = fold k+1 (mod K),
train = the other K-2 folds. Each fold's model is trained (its own model_dir), calibrated and
thresholded on its val fold exactly as a single run is, then evaluated on its held-out fold by
idc_engine/evaluation/run.py; no fold's model ever sees its test fold, and no threshold or
calibration is fitted on it.

Each fold reads the conversion's shards through a manifest of its own, fold_<k>/data/
manifest.json, whose train/val/test entries list the shards of its folds (absolute paths), so
training and evaluation run unchanged. Resumable: training resumes from its last checkpoint
in fold_<k>/model, a fold whose model is exported (fold_<k>/trained) is not trained again, and
one whose evaluation wrote its metrics is not evaluated again.

    MODEL_DIR/fold_<k>/{data,model,trained}     one fold
    MODEL_DIR/crossval/summary.json             per fold, mean, std, pooled out-of-fold
    MODEL_DIR/crossval/summary.txt              the table printed at the end
    MODEL_DIR/crossval/out_of_fold.csv          every held-out patch: fold, patient, label, p
    MODEL_DIR/crossval/roc_per_fold.png         the folds' ROC curves and the pooled one
    MODEL_DIR/crossval/tensorboard/             per-fold metrics (step = fold), mean and pooled
"""

import copy
import dataclasses
import os

from idc_engine import atomic_files
from idc_engine.data import manifest as manifest_lib
from idc_engine.evaluation import crossval_summary
from idc_engine.evaluation.config import EvaluateConfig, EvaluationError


def fold_names(manifest: dict, data_dir: str) -> list[str]:
    """fold0 ... fold<K-1> of a --split=kfold conversion; EvaluationError otherwise."""
    folds = [s for s in manifest_lib.ordered_splits(manifest.get("splits", {}))
             if s not in manifest_lib.SPLITS]
    if len(folds) < 3:
        raise EvaluationError(f"{data_dir!r} holds {len(folds)} folds: cross-validation needs a "
                              "conversion with --split=kfold --folds=K, K >= 3 (one fold tests, "
                              "one validates, the others train)")
    return folds


def _merged(entries: list[dict], data_dir: str) -> dict:
    """One split entry listing the shards of several, by absolute path."""
    shards = [dict(s, file=os.path.abspath(os.path.join(data_dir, s["file"])))
              for e in entries for s in e["shards"]]
    return {"files": [s["file"] for s in shards],
            "num_examples": sum(s["num_examples"] for s in shards),
            "num_positive": sum(s["num_positive"] for s in shards),
            "patients": sorted(p for e in entries for p in e["patients"]), "shards": shards}


def fold_manifest(manifest: dict, data_dir: str, folds: list[str], k: int) -> dict:
    """The manifest fold k trains and is scored on: train/val/test over the conversion's folds."""
    n = len(folds)
    test, val = folds[k], folds[(k + 1) % n]
    view = copy.deepcopy(manifest)
    splits = manifest["splits"]
    view["splits"] = {"train": _merged([splits[f] for f in folds if f not in (test, val)], data_dir),
                      "val": _merged([splits[val]], data_dir),
                      "test": _merged([splits[test]], data_dir)}
    view["crossval"] = {"data_dir": os.path.abspath(data_dir), "fold": k, "test_fold": test,
                        "val_fold": val}
    return view


def run_fold(train_config, k: int, fold_dir: str, view: dict, train, figures: bool) -> dict:
    """Trains (unless fold_dir/trained says it was) and evaluates (unless its metrics.json is
    there; with its figures or not) fold k; returns the evaluation's metrics.json contents."""
    import json

    data_dir = os.path.join(fold_dir, "data")
    os.makedirs(data_dir, exist_ok=True)
    manifest_lib.write_manifest(data_dir, view)
    model_dir = os.path.join(fold_dir, "model")
    marker = os.path.join(fold_dir, "trained")
    if not os.path.exists(marker):
        train(dataclasses.replace(train_config, data_dir=data_dir, model_dir=model_dir))
        with atomic_files.replace_atomically(marker) as f:
            f.write("exported\n")
    config = EvaluateConfig(model_dir=model_dir, data_dir=data_dir, split="test",
                            threshold_split="val", bootstrap=0, slides="0", figures=figures)
    metrics_path = os.path.join(config.resolved_output_dir, "metrics.json")
    if not os.path.exists(metrics_path):
        from idc_engine.evaluation.run import evaluate

        evaluate(config)
    with open(metrics_path) as f:
        return json.load(f)


def cross_validate(train_config, bootstrap: int = 1000, seed: int = 0, train=None,
                   fold_figures: bool = True) -> dict:
    """Runs every fold of train_config.data_dir (a --split=kfold conversion) under
    train_config.model_dir, then writes the summary (crossval_summary.py); returns it.
    train: TrainConfig -> summary (default: idc_engine.training.loop.train); fold_figures:
    each fold's evaluation draws its figures and TensorBoard summaries."""
    if train is None:
        from idc_engine.training.loop import train
    data_dir, root = train_config.data_dir, train_config.model_dir
    manifest = manifest_lib.load_manifest(data_dir)
    folds = fold_names(manifest, data_dir)
    results = []
    for k in range(len(folds)):
        fold_dir = os.path.join(root, f"fold_{k}")
        metrics = run_fold(train_config, k, fold_dir,
                           fold_manifest(manifest, data_dir, folds, k), train, fold_figures)
        results.append((k, folds[k], metrics))
    return crossval_summary.summarize(results, os.path.join(root, "crossval"), bootstrap, seed)
