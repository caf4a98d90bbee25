"""idc_engine/evaluation/report.py on hand-made values: JSON-safe conversion, the CSV writer,
and the summary table's number format (the end-to-end summary: tests/test_evaluate.py)."""

import csv
import math

import numpy as np

from idc_engine.evaluation import report


def test_plain_turns_numpy_and_non_finite_values_into_json_values():
    value = {1: np.float32(0.5), "a": np.array([1, 2]), "b": (np.int64(3), math.nan),
             "c": [math.inf, {"d": np.bool_(True)}]}
    assert report.plain(value) == {"1": 0.5, "a": [1, 2], "b": [3, None],
                                   "c": [None, {"d": True}]}


def test_write_csv_rounds_floats_to_the_digits_asked_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "rows.csv"
    rows = [{"id": "a", "n": 3, "p": 0.123456789123}, {"id": "b", "n": 4, "p": math.nan}]
    report.write_csv(str(path), rows, digits=4)
    with open(path, newline="") as f:
        assert list(csv.reader(f)) == [["id", "n", "p"], ["a", "3", "0.1235"], ["b", "4", ""]]
    assert [p.name for p in tmp_path.iterdir()] == ["rows.csv"]


def test_format_number_says_n_a_for_undefined_metrics():
    assert report.format_number(0.12345) == "0.1235"
    assert report.format_number(0.12345, 2) == "0.12"
    assert report.format_number(None) == report.format_number(math.nan) == "n/a"
