"""Patient-level splits and patient-to-shard packing.

Patches of one patient come from one slide: neighbouring patches look alike, so a patch-level
random split (what the popular tutorials do) leaks and flatters accuracy. Every split here is
by patient, and every function returns an assignment `patient -> "train" | "val" | "test"`.
"""

import dataclasses
import importlib.resources
import json
import math
import random

from idc_engine.data.manifest import SPLITS, fold_split

SPLIT_MODES = ("patients", "janowczyk2016", "kfold")
KFOLD_TEST_MODES = ("none", "stratified", "janowczyk2016")


@dataclasses.dataclass
class PatientSplit:
    assignment: dict[str, str]        # patient -> split, only patients that are used
    excluded: list[str]               # patients in the data but not in the split lists
    missing: list[str]                # patients in the split lists but not in the data


def stratified_patient_split(positive_ratio: dict[str, float], val_fraction: float,
                             test_fraction: float, seed: int) -> PatientSplit:
    """Random patient split, stratified by each patient's IDC ratio.

    Patients are ordered by IDC ratio and cut into as many contiguous strata as the split needs
    patients; one patient is drawn at random from each stratum. So val and test span the range
    of IDC ratios, from nearly-benign to tumour-rich patients, like train does.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"--{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError("--val_fraction + --test_fraction must leave patients for training")
    rng = random.Random(seed)
    patients = sorted(positive_ratio)
    rng.shuffle(patients)  # random order among equal ratios
    patients.sort(key=lambda p: positive_ratio[p])
    n = len(patients)
    assignment = {}
    for split, fraction in (("test", test_fraction), ("val", val_fraction)):
        remaining = [p for p in patients if p not in assignment]
        count = min(round(n * fraction), len(remaining) - 1)
        if fraction > 0 and count == 0 and len(remaining) > 1:
            count = 1  # a requested split is never silently empty
        for i in range(count):
            stratum = remaining[i * len(remaining) // count:(i + 1) * len(remaining) // count]
            assignment[rng.choice(stratum)] = split
    for p in patients:
        assignment.setdefault(p, "train")
    return PatientSplit(assignment, [], [])


def kfold_patient_split(positive_ratio: dict[str, float], folds: int, seed: int,
                        test_patients=()) -> PatientSplit:
    """Patients -> "fold0" ... "fold<folds-1>" (and "test" for `test_patients`, held out of
    every fold), stratified by IDC ratio: the patients, ordered by ratio, are cut into blocks of
    `folds` consecutive ones and each block deals one patient to each fold in a random order, so
    every fold spans the range from nearly-benign to tumour-rich and fold sizes differ by at
    most one patient."""
    if folds < 2:
        raise ValueError(f"--folds must be >= 2, got {folds}")
    held_out = set(test_patients)
    rng = random.Random(seed)
    patients = sorted(p for p in positive_ratio if p not in held_out)
    if len(patients) < folds:
        raise ValueError(f"--folds={folds} needs at least {folds} patients outside the test "
                         f"set; the data has {len(patients)}")
    rng.shuffle(patients)  # random order among equal ratios
    patients.sort(key=lambda p: positive_ratio[p])
    assignment = {p: "test" for p in sorted(held_out & set(positive_ratio))}
    for start in range(0, len(patients), folds):
        block = patients[start:start + folds]
        order = rng.sample(range(folds), folds)
        for patient, fold in zip(block, order):
            assignment[patient] = fold_split(fold)
    return PatientSplit(assignment, [], [])


def published_split(name: str = "janowczyk2016") -> dict[str, str]:
    """The published 84/29/49 patient split (Cruz-Roa 2014, Janowczyk 2016), shipped as data."""
    folder = importlib.resources.files("idc_engine.data") / "split_lists" / name
    assignment = {}
    for split in SPLITS:
        for line in (folder / f"{split}.txt").read_text().split():
            assignment[line.strip()] = split
    return assignment


def split_from_file(path: str) -> dict[str, str]:
    """Reads a JSON object {patient: "train"|"val"|"test"}; errors name the file."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--split_file {path!r}: cannot read it as JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"--split_file {path!r}: expected a JSON object patient -> split")
    bad = {p: s for p, s in data.items() if s not in SPLITS}
    if bad:
        example = next(iter(bad.items()))
        raise ValueError(f"--split_file {path!r}: {len(bad)} patients have a split not in "
                         f"{SPLITS}, e.g. {example[0]!r}: {example[1]!r}")
    return {str(p): s for p, s in data.items()}


def restrict_to_data(lists: dict[str, str], patients_in_data) -> PatientSplit:
    """Applies a fixed patient list to the patients that are really in the data."""
    present = set(patients_in_data)
    return PatientSplit(
        assignment={p: s for p, s in lists.items() if p in present},
        excluded=sorted(present - set(lists)),
        missing=sorted(set(lists) - present))


def pack_patients_into_shards(patient_sizes: dict[str, int], num_shards: int) -> list[list[str]]:
    """Greedy largest-first packing: each patient in exactly one shard, shard sizes similar.

    Returns `num_shards` lists of patients (never more shards than patients; none empty).
    """
    num_shards = max(1, min(num_shards, len(patient_sizes)))
    shards = [[] for _ in range(num_shards)]
    loads = [0] * num_shards
    for patient in sorted(patient_sizes, key=lambda p: (-patient_sizes[p], p)):
        target = min(range(num_shards), key=lambda i: (loads[i], i))
        shards[target].append(patient)
        loads[target] += patient_sizes[patient]
    return shards


def auto_num_shards(num_examples: int, bytes_per_example: int, shard_size_mb: float,
                    min_shards: int) -> int:
    """Enough shards of about `shard_size_mb` each, and at least `min_shards` so that many
    workers (hosts x input pipelines) can each read distinct files."""
    by_size = math.ceil(num_examples * bytes_per_example / (shard_size_mb * 2**20))
    return max(min_shards, by_size, 1)
