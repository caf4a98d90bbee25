"""File-name parsing and tree scanning of the Kaggle layout."""

import functools
import os

import pytest

from idc_engine.data import kaggle_tree, worker_pool
from idc_engine.data.kaggle_tree import PatchName, parse_patch_name


@pytest.mark.parametrize("name, expected", [
    ("10253_idx5_x1001_y1051_class0.png", PatchName("10253", 1001, 1051, 0)),
    ("8863_idx5_x51_y2401_class1.png", PatchName("8863", 51, 2401, 1)),
    ("8863_idx5_x51_y2401_class1.PNG", PatchName("8863", 51, 2401, 1)),
])
def test_parse_patch_name_reads_patient_position_and_label(name, expected):
    assert parse_patch_name(name) == expected


@pytest.mark.parametrize("name", [
    "10253_idx5_x1001_class0.png",          # no y
    "10253_idx5_x1001_y1051_class2.png",    # not a binary label
    "10253_idx5_x1001_y1051_class0.jpg",
    "abc_idx5_x1001_y1051_class0.png",
    "._10253_idx5_x1001_y1051_class0.png",  # AppleDouble litter
    "10253_idx5_x-1_y1051_class0.png",
    "notes.png",
])
def test_parse_patch_name_rejects_other_names(name):
    assert parse_patch_name(name) is None


@pytest.mark.parametrize("name, litter", [
    (".DS_Store", True), ("Thumbs.db", True), ("._9036_idx5_x1_y1_class0.png", True),
    ("desktop.ini", True), ("9036_idx5_x1_y1_class0.png", False), ("README.txt", False)])
def test_is_litter(name, litter):
    assert kaggle_tree.is_litter(name) is litter


def _touch(root, rel, content=b"x"):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)


def test_scan_counts_duplicates_once_and_prefers_the_shallow_copy(tmp_path):
    for rel in ["9036/0/9036_idx5_x1_y1_class0.png",
                "IDC_regular_ps50_idx5/9036/0/9036_idx5_x1_y1_class0.png",
                "9036/1/9036_idx5_x51_y1_class1.png",
                "9036/.DS_Store", "__MACOSX/9036/0/._9036_idx5_x1_y1_class0.png",
                "9036/0/._9036_idx5_x1_y1_class0.png", "readme.txt"]:
        _touch(tmp_path, rel)
    listing = kaggle_tree.scan_tree(str(tmp_path))
    assert [(p.patient, p.x, p.y, p.label) for p in listing.patches] == [
        ("9036", 1, 1, 0), ("9036", 51, 1, 1)]
    assert listing.patches[0].paths == ["9036/0/9036_idx5_x1_y1_class0.png",
                                        "IDC_regular_ps50_idx5/9036/0/9036_idx5_x1_y1_class0.png"]
    assert listing.num_duplicates == 1
    assert listing.num_png_files == 3
    assert listing.ignored == {"litter": 2, "other": 1}  # __MACOSX/ is pruned without counting
    assert listing.skipped == []


def test_scan_skips_contradicting_folders_with_reasons(tmp_path):
    _touch(tmp_path, "9036/0/9036_idx5_x1_y1_class1.png")     # class folder disagrees
    _touch(tmp_path, "9036/1/8863_idx5_x1_y1_class1.png")     # patient folder disagrees
    _touch(tmp_path, "9036/1/scan.png")                        # name does not parse
    _touch(tmp_path, "9036/1/9036_idx5_x51_y1_class1.png")
    listing = kaggle_tree.scan_tree(str(tmp_path))
    assert len(listing.patches) == 1
    reasons = {s["path"]: s["reason"] for s in listing.skipped}
    assert "folder label 0 disagrees" in reasons["9036/0/9036_idx5_x1_y1_class1.png"]
    assert "patient folder 9036 disagrees" in reasons["9036/1/8863_idx5_x1_y1_class1.png"]
    assert "does not parse" in reasons["9036/1/scan.png"]


def test_fingerprint_changes_with_the_listing(tmp_path):
    _touch(tmp_path, "9036/0/9036_idx5_x1_y1_class0.png")
    first = kaggle_tree.scan_tree(str(tmp_path)).fingerprint
    assert kaggle_tree.scan_tree(str(tmp_path)).fingerprint == first
    _touch(tmp_path, "9036/0/9036_idx5_x51_y1_class0.png")
    assert kaggle_tree.scan_tree(str(tmp_path)).fingerprint != first


def test_folder_at_once_records_what_the_file_by_file_path_records(idc_tree, tmp_path):
    """The whole-folder fast path must agree with the general path wherever it accepts a folder,
    and hand every other folder (litter, strays, contradictions, odd names) to the general path."""
    root, _ = idc_tree
    _touch(tmp_path, "9036/0/9036_idx5_x1_y1_class0.png")
    _touch(tmp_path, "9036/0/9036_idx5_x51_y1_class0.png\n9036_idx5_x101_y1_class0.png")
    _touch(tmp_path, "9036/1/9036_idx5_x1_y51_class1.png")
    _touch(tmp_path, "9036/1/8863_idx5_x1_y51_class1.png")     # patient folder disagrees
    _touch(tmp_path, "8863/1/8863_idx5_x1_y1_class1.png")
    _touch(tmp_path, "8863/1/.DS_Store")
    _touch(tmp_path, "8863/0/8863_idx5_x1_y1_class0.png")
    accepted = {}
    for tree in (root, str(tmp_path)):
        for folder, dirs, files in os.walk(tree):
            if dirs or not files:
                continue
            rel = os.path.relpath(folder, tree).replace(os.sep, "/") + "/"
            fast, general = kaggle_tree._Examined(), kaggle_tree._Examined()
            accepted[(tree, rel)] = kaggle_tree._record_patch_folder(rel, sorted(files), fast)
            for name in sorted(files):
                kaggle_tree._examine_file(rel + name, general)
            # accepted exactly when every file is a patch of this folder's patient and class
            clean = len(general.patches) == len(files) and rel.count("/") >= 2
            assert accepted[(tree, rel)] == clean, rel
            if clean:
                assert "".join(fast.listing) == "".join(general.listing)
                assert (fast.patches, fast.skipped, fast.litter, fast.other) == (
                    general.patches, [], 0, 0)
            else:
                assert fast == kaggle_tree._Examined()  # nothing recorded twice
    assert {rel for (tree, rel), ok in accepted.items() if tree == str(tmp_path)} == {
        "9036/0/", "9036/1/", "8863/1/", "8863/0/"}
    assert {rel for (tree, rel), ok in accepted.items() if tree == str(tmp_path) and ok} == {
        "8863/0/"}
    generated = [ok for (tree, _), ok in accepted.items() if tree == root]
    assert sum(generated) >= len(generated) / 2  # its duplicate tree too; quirks go the long way
    reasons = {s["path"]: s["reason"] for s in kaggle_tree.scan_tree(str(tmp_path)).skipped}
    assert "does not parse" in reasons["9036/0/9036_idx5_x51_y1_class0.png\n"
                                       "9036_idx5_x101_y1_class0.png"]


def test_scan_of_a_missing_folder_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        kaggle_tree.scan_tree(str(tmp_path / "nowhere"))


def test_scan_shared_with_worker_processes_lists_exactly_what_a_serial_scan_lists(idc_tree, tmp_path):
    """The converter's pool shares the scan; the listing must not depend on who examined what."""
    root, _ = idc_tree
    odd = tmp_path / "odd"  # files at every depth, litter, a pruned folder, a duplicate
    for rel in ["readme.txt", "9036_idx5_x1_y1_class0.png", "9036/.DS_Store",
                "9036/9036_idx5_x51_y51_class1.png", "9036/0/9036_idx5_x1_y1_class0.png",
                "a/b/c/9036/1/9036_idx5_x101_y1_class1.png", "__MACOSX/9036/0/x.png"]:
        _touch(odd, rel)
    pool = worker_pool.start_workers(2)
    try:
        for tree in (root, str(odd)):
            serial, shared = kaggle_tree.scan_tree(tree), kaggle_tree.scan_tree(tree, pool)
            assert shared == serial
            assert serial.patches and serial.num_png_files >= len(serial.patches)
            # the patients' counts, sorted as the rows are: the converter slices rows by them
            expected = {}
            for patient, _, _, label, _ in serial.rows:
                n, positive = expected.get(patient, (0, 0))
                expected[patient] = (n + 1, positive + label)
            assert list(serial.patients.items()) == sorted(expected.items())
    finally:
        pool.shutdown()


def test_groups_of_patients_list_what_one_group_of_everything_lists(idc_tree, tmp_path):
    """Workers deduplicate a group of patients each (every copy of a patient's patch is in its
    group); one group holding the whole tree is the reference. A copy outside the layout puts a
    patient in two groups: the scan then falls back to one group and still merges the copies."""
    root, _ = idc_tree
    stray = tmp_path / "stray"
    for rel in ["9036/0/9036_idx5_x1_y1_class0.png", "9036/1/9036_idx5_x51_y1_class1.png",
                "8863/0/8863_idx5_x1_y1_class0.png", "extra/9036_idx5_x1_y1_class0.png"]:
        _touch(stray, rel)
    for tree in (root, str(stray)):
        jobs = kaggle_tree._plan_jobs(tree)
        groups = kaggle_tree._group_by_patient(jobs, 64)
        assert sorted(job for group in groups for job in group) == [
            (i,) + job for i, job in enumerate(jobs)]
        whole = kaggle_tree._join([kaggle_tree._examine(tree, [(i,) + job for i, job in
                                                               enumerate(jobs)])], len(jobs))
        assert kaggle_tree.scan_tree(tree) == whole
    assert len(groups) > 1 and kaggle_tree._join(
        map(functools.partial(kaggle_tree._examine, str(stray)), groups), len(jobs)) is None
    merged = kaggle_tree.scan_tree(str(stray)).patches[1]
    assert (merged.patient, merged.x, merged.y) == ("9036", 1, 1)
    assert merged.paths == ["extra/9036_idx5_x1_y1_class0.png", "9036/0/9036_idx5_x1_y1_class0.png"]
    generated = kaggle_tree.scan_tree(root)
    assert generated.num_duplicates > 0  # the fixture's duplicate IDC_regular_ps50_idx5/ tree
