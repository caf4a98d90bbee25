"""Patient splits and patient-to-shard packing."""

import json

import pytest

from idc_engine.data import splits


def _ratios(n, seed=0):
    import random
    rng = random.Random(seed)
    return {str(1000 + i): rng.random() for i in range(n)}


@pytest.mark.parametrize("n, val, test", [(100, 0.1, 0.1), (279, 0.1, 0.2), (7, 0.1, 0.1),
                                          (30, 0.0, 0.25)])
def test_stratified_split_sizes_and_disjointness(n, val, test):
    result = splits.stratified_patient_split(_ratios(n), val, test, seed=3)
    assigned = result.assignment
    assert sorted(assigned) == sorted(_ratios(n))  # every patient exactly once
    counts = {s: sum(1 for v in assigned.values() if v == s) for s in ("train", "val", "test")}
    assert counts["test"] == max(round(n * test), 1 if test else 0)
    assert counts["val"] == max(round(n * val), 1 if val else 0)
    assert counts["train"] == n - counts["val"] - counts["test"]


def test_stratified_split_spans_the_range_of_idc_ratios():
    ratios = {str(i): i / 99 for i in range(100)}  # ratios 0..1 evenly
    result = splits.stratified_patient_split(ratios, 0.1, 0.1, seed=0)
    test_ratios = sorted(ratios[p] for p, s in result.assignment.items() if s == "test")
    # one test patient from each tenth of the ratio range
    assert [int(r * 9.999) for r in test_ratios] == list(range(10))


def test_stratified_split_is_seeded():
    a = splits.stratified_patient_split(_ratios(50), 0.1, 0.1, seed=1).assignment
    b = splits.stratified_patient_split(_ratios(50), 0.1, 0.1, seed=1).assignment
    c = splits.stratified_patient_split(_ratios(50), 0.1, 0.1, seed=2).assignment
    assert a == b and a != c


@pytest.mark.parametrize("val, test", [(0.5, 0.5), (-0.1, 0.1), (0.1, 1.0)])
def test_stratified_split_rejects_bad_fractions(val, test):
    with pytest.raises(ValueError, match="fraction"):
        splits.stratified_patient_split(_ratios(10), val, test, seed=0)


def test_published_janowczyk2016_split_is_84_29_49_and_disjoint():
    assignment = splits.published_split("janowczyk2016")
    counts = {s: sum(1 for v in assignment.values() if v == s) for s in ("train", "val", "test")}
    assert counts == {"train": 84, "val": 29, "test": 49}
    assert len(assignment) == 162  # a patient listed twice would make this smaller
    assert all(p.isdigit() for p in assignment)


def test_restrict_to_data_reports_excluded_and_missing():
    lists = {"1": "train", "2": "val", "3": "test"}
    result = splits.restrict_to_data(lists, ["1", "2", "9"])
    assert result.assignment == {"1": "train", "2": "val"}
    assert result.excluded == ["9"] and result.missing == ["3"]


def test_split_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"1": "train", "2": "holdout"}))
    with pytest.raises(ValueError, match="bad.json.*holdout"):
        splits.split_from_file(str(bad))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        splits.split_from_file(str(broken))
    with pytest.raises(ValueError, match="absent.json"):
        splits.split_from_file(str(tmp_path / "absent.json"))


def test_packing_puts_each_patient_in_one_shard_with_similar_sizes():
    sizes = {str(i): s for i, s in enumerate([900, 50, 400, 300, 300, 200, 120, 80, 60, 700])}
    shards = splits.pack_patients_into_shards(sizes, 4)
    flat = [p for shard in shards for p in shard]
    assert sorted(flat) == sorted(sizes) and len(flat) == len(set(flat))
    loads = [sum(sizes[p] for p in shard) for shard in shards]
    # largest-first greedy: no shard exceeds the lightest by more than the largest patient
    assert max(loads) - min(loads) <= max(sizes.values())
    assert len(splits.pack_patients_into_shards(sizes, 50)) == len(sizes)  # never empty shards


def test_auto_num_shards():
    assert splits.auto_num_shards(222_000, 7600, 64, 8) == 26
    assert splits.auto_num_shards(1000, 7600, 64, 8) == 8
