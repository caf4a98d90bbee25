"""Evaluation of a trained model, as python -m idc_engine.evaluate runs it (stage 6).

    config.py          EvaluateConfig (one field per flag, with its help) and EvaluationError
    run.py             evaluate(config): the phases, from loading the served model to TensorBoard
    patients.py        per-patient IDC extent and accuracy; bootstrap CIs over patients
    plots.py           ROC, PR, calibration, confusion matrix, patients, threshold, training
                       curves (PNG)
    slide_maps.py      a patient's slide reassembled from patch (x, y): tissue, truth, prediction
    slide_patches.py   the chosen patients' patches read back from the split's shards
    report.py          the summary table, metrics.json, the CSVs and the TensorBoard summaries

Patch-level metrics and the threshold rules live in idc_engine/scoring/ (shared with training's
validation); the served model and its predictions in idc_engine/inference/serving.py.
"""
