"""Finding the patches in a Kaggle "Breast Histopathology Images" download.

The real tree is `<root>/<patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_class<C>.png`, and the Kaggle
root ALSO holds `IDC_regular_ps50_idx5/` with the same tree again, so a naive recursive glob finds
every patch twice. Users may point at either level: we walk everything below the given folder and
key each patch by (patient, x, y), keeping every copy as a fallback in case one is corrupt.
Copies made on macOS/Windows bring litter (`.DS_Store`, `Thumbs.db`, AppleDouble `._*` files,
`__MACOSX/`), which is ignored and counted, never reported as an error.
"""

import dataclasses
import hashlib
import os
import re

PATCH_NAME = re.compile(
    r"^(?P<patient>\d+)_idx\d+_x(?P<x>\d+)_y(?P<y>\d+)_class(?P<label>[01])\.png$", re.IGNORECASE)
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
    patches: list[Patch]                    # sorted by (patient, y, x)
    skipped: list[dict]                     # [{"path", "reason"}], paths relative to the root, "/"
    num_png_files: int                      # every .png seen, duplicates included
    num_duplicates: int                     # copies beyond the first of a (patient, x, y)
    ignored: dict                           # {"litter": n, "other": n}
    fingerprint: str                        # sha256 of the sorted (relative path, size) listing


def parse_patch_name(name: str) -> PatchName | None:
    """`10253_idx5_x1001_y1051_class0.png` -> PatchName("10253", 1001, 1051, 0); else None."""
    match = PATCH_NAME.match(name)
    if not match:
        return None
    return PatchName(match["patient"], int(match["x"]), int(match["y"]), int(match["label"]))


def is_litter(name: str) -> bool:
    lower = name.lower()
    return lower.startswith("._") or lower in LITTER_FILES


def _walk_files(root: str, rel_dir: str = ""):
    """Yields ("relative/path", size) of every file below root in sorted order, litter folders
    pruned. Relative paths use "/" and are built by concatenation (os.path.relpath per file
    costs half the scan of 555k files)."""
    with os.scandir(os.path.join(root, rel_dir)) as entries:
        entries = sorted(entries, key=lambda e: e.name)
    for entry in entries:
        if entry.is_dir():
            if entry.name.lower() not in LITTER_DIRS and not entry.name.startswith("._"):
                yield from _walk_files(root, rel_dir + entry.name + "/")
        else:
            yield rel_dir + entry.name, entry.stat().st_size


def _folder_problem(rel_path: str, parsed: PatchName) -> str | None:
    """A reason to distrust a file whose folders contradict its name, or None."""
    parts = rel_path.split("/")
    class_dir = parts[-2] if len(parts) >= 2 else None
    if class_dir in ("0", "1") and int(class_dir) != parsed.label:
        return f"folder label {class_dir} disagrees with class{parsed.label} in the file name"
    patient_dir = parts[-3] if len(parts) >= 3 else None
    if class_dir in ("0", "1") and patient_dir is not None and patient_dir != parsed.patient:
        return f"patient folder {patient_dir} disagrees with patient {parsed.patient} in the file name"
    return None


def scan_tree(root: str) -> TreeListing:
    """Lists the patches below `root` (the Kaggle root or its IDC_regular_ps50_idx5/ folder)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"--input_dir {root!r} is not a directory")
    by_key: dict[tuple, Patch] = {}
    skipped, ignored = [], {"litter": 0, "other": 0}
    num_png = num_duplicates = 0
    digest = hashlib.sha256()
    for rel_path, size in _walk_files(root):
        name = rel_path.rpartition("/")[2]
        if is_litter(name):
            ignored["litter"] += 1
            continue
        if not name.lower().endswith(".png"):
            ignored["other"] += 1
            continue
        num_png += 1
        digest.update(f"{rel_path}\t{size}\n".encode())
        parsed = parse_patch_name(name)
        if parsed is None:
            skipped.append({"path": rel_path, "reason": "file name does not parse as "
                            "<patient>_idx5_x<X>_y<Y>_class<0|1>.png"})
            continue
        problem = _folder_problem(rel_path, parsed)
        if problem:
            skipped.append({"path": rel_path, "reason": problem})
            continue
        key = (parsed.patient, parsed.x, parsed.y)
        if key in by_key:
            existing = by_key[key]
            if existing.label != parsed.label:
                skipped.append({"path": rel_path, "reason": f"label disagrees with its copy "
                                f"{existing.paths[0]} of the same patient, x and y"})
                continue
            num_duplicates += 1
            existing.paths.append(rel_path)
            # Prefer the copy nearest the root given: the shorter path.
            existing.paths.sort(key=lambda p: (p.count("/"), p))
        else:
            by_key[key] = Patch(parsed.patient, parsed.x, parsed.y, parsed.label, [rel_path])
    patches = sorted(by_key.values(), key=lambda p: (p.patient, p.y, p.x))
    return TreeListing(patches, skipped, num_png, num_duplicates, ignored,
                       "sha256:" + digest.hexdigest())
