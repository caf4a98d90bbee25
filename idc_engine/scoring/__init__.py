"""Patch-level figures from labels and probabilities (numpy only): the metrics and the named
threshold rules that training's validation and evaluation share. Imports no stage.

    metrics.py      classification metrics named by class, calibration, the evaluation's extras
    thresholds.py   the decision threshold chosen on one split by a named rule
    parity.py       whether a faster runtime's P(IDC) may replace the reference's
"""
