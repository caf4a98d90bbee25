"""Finding the patches in a Kaggle "Breast Histopathology Images" download.

The real tree is `<root>/<patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_class<C>.png`, and the Kaggle
root ALSO holds `IDC_regular_ps50_idx5/` with the same tree again, so a naive recursive glob finds
every patch twice. Users may point at either level: we walk everything below the given folder and
key each patch by (patient, x, y), keeping every copy as a fallback in case one is corrupt.
Copies made on macOS/Windows bring litter (`.DS_Store`, `Thumbs.db`, AppleDouble `._*` files,
`__MACOSX/`), which is ignored and counted, never reported as an error.
"""

import collections
import contextlib
import dataclasses
import functools
import gc
import hashlib
import os
import re

PATCH_NAME = re.compile(
    r"^(?P<patient>\d+)_idx\d+_x(?P<x>\d+)_y(?P<y>\d+)_class(?P<label>[01])\.png$", re.IGNORECASE)
# The same pattern over a folder's names joined by newlines: one regex pass for the whole folder.
_PATCH_LINES = re.compile(
    r"^(\d+)_idx\d+_x(\d+)_y(\d+)_class([01])\.png$", re.IGNORECASE | re.MULTILINE)
LITTER_FILES = {".ds_store", "thumbs.db", "desktop.ini", "icon\r"}
LITTER_DIRS = {"__macosx", ".spotlight-v100", ".trashes", ".fseventsd", "$recycle.bin"}


@dataclasses.dataclass(frozen=True)
class PatchName:
    patient: str
    x: int
    y: int
    label: int


@dataclasses.dataclass
class Patch:
    """One patch, with every path that holds a copy of it (first = preferred)."""
    patient: str
    x: int
    y: int
    label: int
    paths: list[str]


@dataclasses.dataclass
class TreeListing:
    rows: list[tuple]                       # (patient, y, x, label, [paths]) sorted: the patches
    patients: dict[str, tuple[int, int]]    # patient -> (patches, IDC patches), sorted by patient
    skipped: list[dict]                     # [{"path", "reason"}] by path, relative to the root, "/"
    num_png_files: int                      # every .png seen, duplicates included
    num_duplicates: int                     # copies beyond the first of a (patient, x, y)
    ignored: dict                           # {"litter": n, "other": n}
    fingerprint: str                        # sha256 of the sha256 of each subtree's .png paths, walk order

    @functools.cached_property
    def patches(self) -> list[Patch]:
        """The rows as Patch objects, built on first use (the converter plans from the rows and
        the patients' counts, without an object per patch)."""
        return [Patch(patient, x, y, label, paths) for patient, y, x, label, paths in self.rows]


def parse_patch_name(name: str) -> PatchName | None:
    """`10253_idx5_x1001_y1051_class0.png` -> PatchName("10253", 1001, 1051, 0); else None."""
    match = PATCH_NAME.match(name)
    if not match:
        return None
    return PatchName(match["patient"], int(match["x"]), int(match["y"]), int(match["label"]))


def is_litter(name: str) -> bool:
    lower = name.lower()
    return lower.startswith("._") or lower in LITTER_FILES


def _is_litter_dir(name: str) -> bool:
    return name.lower() in LITTER_DIRS or name.startswith("._")


def _plan_jobs(root: str, rel_dir: str = "", depth: int = 2) -> list[tuple[str, str]]:
    """The tree's top `depth` levels, listed in walk order: ("dir", "a/b/") for each subtree
    below them (a patient's class folder, or a patient folder of the duplicate tree) and
    ("file", "a/name") for each file found on the way. Examining the subtrees is the scan's
    real work (listing and name parsing): the jobs let worker processes share it."""
    with os.scandir(os.path.join(root, rel_dir)) as entries:
        entries = sorted(entries, key=lambda e: e.name)
    jobs = []
    for entry in entries:
        if not entry.is_dir():
            jobs.append(("file", rel_dir + entry.name))
        elif not _is_litter_dir(entry.name):
            sub = rel_dir + entry.name + "/"
            jobs += _plan_jobs(root, sub, depth - 1) if depth > 1 else [("dir", sub)]
    return jobs


def _folder_problem(rel_path: str, parsed: PatchName) -> str | None:
    """A reason to distrust a file whose folders contradict its name, or None."""
    parts = rel_path.rsplit("/", 3)
    class_dir = parts[-2] if len(parts) >= 2 else None
    if class_dir not in ("0", "1"):
        return None
    if int(class_dir) != parsed.label:
        return f"folder label {class_dir} disagrees with class{parsed.label} in the file name"
    patient_dir = parts[-3] if len(parts) >= 3 else None
    if patient_dir is not None and patient_dir != parsed.patient:
        return f"patient folder {patient_dir} disagrees with patient {parsed.patient} in the file name"
    return None


@contextlib.contextmanager
def without_cyclic_gc():
    """The scan (and the converter's planning) allocate a few containers per file and free none,
    so the cyclic collector would traverse the growing heap again and again for nothing (the
    more so when the caller already holds a large listing). Nothing here creates cycles; the
    collector's state is restored on exit."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclasses.dataclass
class _Examined:
    """What a worker found in a group of jobs: per job, then deduplicated over the group."""
    litter: int = 0
    other: int = 0
    listing: list = dataclasses.field(default_factory=list)  # "path\n" of the .png of the job at hand
    # (rel_path, patient, x, y, label) while examining; (patient, y, x, label, [paths]) after
    patches: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)  # {"path", "reason"}
    digests: list = dataclasses.field(default_factory=list)  # (job index, sha256 of its listing)
    num_png: int = 0
    num_duplicates: int = 0
    patients: dict = dataclasses.field(default_factory=dict)  # patient -> (patches, IDC patches)


def _examine(root: str, jobs: list[tuple[int, str, str]]) -> _Examined:
    """Lists and parses the files of a group of jobs of _plan_jobs, (walk index, kind, path)
    in walk order, then deduplicates them: the group holds every copy of its patients' patches
    (runs in a worker process). `patches` becomes (patient, y, x, label, [paths]) sorted."""
    with without_cyclic_gc():
        found = _Examined()
        for index, kind, rel in jobs:
            if kind == "file":
                _examine_file(rel, found)
            else:
                _examine_dir(root, rel, found)
            listing = "".join(found.listing).encode()
            found.listing.clear()
            found.num_png += listing.count(b"\n")
            found.digests.append((index, hashlib.sha256(listing).digest()))
        found.patches, found.num_duplicates = _deduplicate(found.patches, found.skipped)
        counts = collections.Counter(row[0] for row in found.patches)
        positives = collections.Counter(row[0] for row in found.patches if row[3])
        found.patients = {patient: (n, positives[patient]) for patient, n in counts.items()}
        return found


def _examine_dir(root: str, rel_dir: str, found: _Examined) -> None:
    """Everything below root/rel_dir, in walk order (names sorted within each folder), litter
    folders pruned. Relative paths use "/" and are built by concatenation (os.path.relpath per
    file costs half the scan of 555k files). No stat: the listing is names only."""
    with os.scandir(os.path.join(root, rel_dir)) as entries:
        entries = sorted(entries, key=_entry_name)
    if not any(entry.is_dir() for entry in entries) and _record_patch_folder(
            rel_dir, [entry.name for entry in entries], found):
        return
    for entry in entries:
        if not entry.is_dir():
            _examine_file(rel_dir + entry.name, found)
        elif not _is_litter_dir(entry.name):
            _examine_dir(root, rel_dir + entry.name + "/", found)


def _entry_name(entry: os.DirEntry) -> str:
    return entry.name


def _examine_file(rel_path: str, found: _Examined) -> None:
    """The general path, one file: litter, other files, names that do not parse, folders that
    contradict the name, and patches, each recorded in `found`."""
    name = rel_path.rpartition("/")[2]
    if is_litter(name):
        found.litter += 1
        return
    if not name.lower().endswith(".png"):
        found.other += 1
        return
    found.listing.append(rel_path + "\n")
    parsed = parse_patch_name(name)
    if parsed is None:
        found.skipped.append({"path": rel_path, "reason": "file name does not parse as "
                              "<patient>_idx5_x<X>_y<Y>_class<0|1>.png"})
        return
    problem = _folder_problem(rel_path, parsed)
    if problem:
        found.skipped.append({"path": rel_path, "reason": problem})
        return
    found.patches.append((rel_path, parsed.patient, parsed.x, parsed.y, parsed.label))


def _record_patch_folder(rel_dir: str, names: list[str], found: _Examined) -> bool:
    """The common case, all at once: a folder holding nothing but patch files (`names`, sorted)
    of the patient and class its path names (<patient>/<0|1>/). Records them and returns True;
    returns False, having recorded nothing, for any other folder, whose files then go through
    _examine_file one by one (both record the same for a folder both accept: tested).

    One regex pass over the folder's joined names replaces a parse, a litter check and a folder
    check per file (the real download has 555k files in 1,116 such folders).
    """
    joined = "\n".join(names)
    rows = _PATCH_LINES.findall(joined)
    if not rows or len(rows) != len(names) or joined.count("\n") != len(names) - 1:
        return False  # litter, other files, a name that does not parse, or a newline in a name
    *_, patient_dir, class_dir = ("/" + rel_dir).rstrip("/").rsplit("/", 2)
    patients, xs, ys, labels = zip(*rows)
    if set(labels) != {class_dir} or set(patients) != {patient_dir}:
        return False  # a folder contradicting some name, or not a <patient>/<0|1>/ folder
    found.listing.append(rel_dir + ("\n" + rel_dir).join(names) + "\n")
    label = int(class_dir)
    # one patient string object for the folder: pickled once when the group returns
    found.patches += zip([rel_dir + name for name in names], [patient_dir] * len(names),
                         map(int, xs), map(int, ys), [label] * len(names))
    return True


def _shared_map(executor, fn, items):
    """fn over items, results in order, run by the executor's workers AND this process: the
    workers take items from the front, this process from the back until it meets one a worker
    has taken (so the scan starts before the workers do, and this process does not idle while
    it waits for them)."""
    futures = [executor.submit(fn, item) for item in items]
    done_here = {}
    for i in reversed(range(len(items))):
        if not futures[i].cancel():
            break
        done_here[i] = fn(items[i])
    for i, future in enumerate(futures):
        yield done_here[i] if i in done_here else future.result()


def _patient_of_job(job: tuple[str, str]) -> str | None:
    """The patient folder a job lies in ("10253/0/", "IDC_regular_ps50_idx5/10253/"), if any."""
    kind, rel = job
    if kind == "dir":
        for part in rel.split("/"):
            if part.isdigit():
                return part
    return None


def _group_by_patient(jobs: list[tuple[str, str]], num_groups: int) -> list[list]:
    """At most num_groups groups of (walk index, kind, path), each holding all the jobs of its
    patients (both copies in the Kaggle layout), in walk order, of similar sizes."""
    by_patient: dict = {}
    for index, job in enumerate(jobs):
        by_patient.setdefault(_patient_of_job(job), []).append((index,) + job)
    others = by_patient.pop(None, [])
    patients = sorted(by_patient)
    per_group = max(1, -(-len(patients) // num_groups))
    groups = [[job for patient in patients[i:i + per_group] for job in by_patient[patient]]
              for i in range(0, len(patients), per_group)]
    return groups + ([others] if others else [])


def scan_tree(root: str, executor=None) -> TreeListing:
    """Lists the patches below `root` (the Kaggle root or its IDC_regular_ps50_idx5/ folder).

    With an `executor` (the converter's process pool) its workers share the listing, name
    parsing and deduplication (the real download has 555k files), each a group of patients;
    this process only joins the groups. A patch named in folders of two groups (files outside
    the <patient>/<0|1>/ layout) makes it scan again as one group: the listing is the same
    either way.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"--input_dir {root!r} is not a directory")
    jobs = _plan_jobs(root)
    examine = functools.partial(_examine, root)
    groups = _group_by_patient(jobs, 64)
    examined = map(examine, groups) if executor is None else _shared_map(executor, examine, groups)
    with without_cyclic_gc():
        listing = _join(examined, len(jobs))
        if listing is None:  # a patient in two groups
            listing = _join([examine([(i,) + job for i, job in enumerate(jobs)])], len(jobs))
        return listing


def _copy_preference(rel_path: str) -> tuple[int, str]:
    return rel_path.count("/"), rel_path


def _deduplicate(rows: list, skipped: list) -> tuple[list, int]:
    """(rel_path, patient, x, y, label) rows in walk order -> ((patient, y, x, label, [paths])
    sorted, the number of extra copies): each (patient, x, y) once, with every path holding a
    copy, preferred first. A copy whose label contradicts the first is added to `skipped`."""
    by_key: dict[tuple, list] = {}  # (patient, y, x): the listing's order, sorted in C
    num_duplicates = 0
    for rel_path, patient, x, y, label in rows:
        key = (patient, y, x)
        existing = by_key.get(key)
        if existing is None:
            by_key[key] = [label, [rel_path]]
        elif existing[0] != label:
            skipped.append({"path": rel_path, "reason": f"label disagrees with its copy "
                            f"{existing[1][0]} of the same patient, x and y"})
        else:
            num_duplicates += 1
            paths = existing[1]
            paths.append(rel_path)
            # Prefer the copy nearest the root given: the shorter path. The walk usually
            # meets it first (digits sort before "IDC_regular_ps50_idx5/"), so rarely a sort.
            if _copy_preference(paths[-2]) > _copy_preference(rel_path):
                paths.sort(key=_copy_preference)
    return [key + (label, paths) for key, (label, paths) in sorted(by_key.items())], num_duplicates


def _path_of(skipped: dict) -> str:
    return skipped["path"]


def _join(examined, num_jobs: int) -> TreeListing | None:
    """One listing from the groups' _Examined; None if some patient is in two groups."""
    rows, skipped, ignored = [], [], {"litter": 0, "other": 0}
    digests = [b""] * num_jobs
    patients: dict = {}
    num_png = num_duplicates = 0
    for found in examined:
        if not patients.keys().isdisjoint(found.patients):
            return None
        patients.update(found.patients)
        rows += found.patches
        skipped += found.skipped
        ignored["litter"] += found.litter
        ignored["other"] += found.other
        num_png += found.num_png
        num_duplicates += found.num_duplicates
        for index, digest in found.digests:
            digests[index] = digest
    rows.sort()  # sorted runs, one per group: (patient, y, x) unique, so paths never compared
    skipped.sort(key=_path_of)  # the same whatever the groups
    fingerprint = "sha256:" + hashlib.sha256(b"".join(digests)).hexdigest()
    return TreeListing(rows, dict(sorted(patients.items())), skipped, num_png, num_duplicates,
                       ignored, fingerprint)
