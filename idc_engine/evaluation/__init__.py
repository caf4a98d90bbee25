"""Evaluation of a trained model, as python -m idc_engine.evaluate runs it.

    thresholds.py   the decision threshold, chosen on one split (val) by a named rule
    patients.py     per-patient IDC extent and accuracy; bootstrap CIs over patients
    plots.py        ROC, PR, calibration, confusion matrix, patients, training curves (PNG)
    slide_maps.py   a patient's slide reassembled from patch (x, y): tissue, truth, prediction

Patch-level metrics live in idc_engine/scoring/metrics.py (shared with training's validation).
"""
