"""Patch-level figures from labels and probabilities (numpy only): the metrics and the named
threshold rules that training's validation and evaluation share. Imports no stage."""
