"""PNG patch files -> 50x50 patches: listing the inputs, decoding them ahead of the model, and
what a patch's name or its split's manifest tells about it.

Files are decoded and padded exactly as the converter does (`patch_png.decode_patch`: an
undersized edge patch gets white at the bottom/right), so a patch gets the same probability
from its PNG as from the converted TFRecords. Decoding never raises for a bad file: the reason
goes into `DecodedFile.error` and the run goes on.
"""

import collections
import concurrent.futures
import dataclasses
import os
import re

import numpy as np
from PIL import Image

from idc_engine.data import kaggle_tree, patch_png, records

TOO_LARGE = (f"larger than {records.PATCH_SIZE}x{records.PATCH_SIZE} "
             "(use the converter's patch size)")
# Above this size a file cannot be a 50x50 patch in any sane encoding: its header is read first,
# so a whole-slide image given by mistake is refused without decoding it.
HEADER_CHECK_BYTES = 1 << 20
_FILES_PER_TASK = 64            # files decoded per thread-pool task (amortizes task overhead)


# --- inputs ------------------------------------------------------------------------------------

@dataclasses.dataclass
class InputListing:
    files: list            # paths to predict, in order (missing ones too: they get an error row)
    ignored_litter: int = 0
    ignored_other: int = 0  # non-PNG files met while walking folders


def _walk_folder(folder: str, listing: InputListing) -> None:
    """Adds the *.png files under `folder` to `listing`, in sorted order; counts what it skips."""
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d.lower() not in kaggle_tree.LITTER_DIRS
                         and not d.startswith("._"))
        for name in sorted(names):
            if kaggle_tree.is_litter(name):
                listing.ignored_litter += 1
            elif name.lower().endswith(".png"):
                listing.files.append(os.path.join(root, name))
            else:
                listing.ignored_other += 1


def list_inputs(args) -> InputListing:
    """Files and folders from the command line -> the files to predict, in order.

    Folders are walked recursively in sorted order for *.png; litter is ignored everywhere.
    """
    listing = InputListing([])
    for arg in args:
        if os.path.isdir(arg):
            _walk_folder(arg, listing)
        elif kaggle_tree.is_litter(os.path.basename(arg)):
            listing.ignored_litter += 1
        else:
            listing.files.append(arg)
    return listing


# --- decoding ----------------------------------------------------------------------------------

@dataclasses.dataclass
class DecodedFile:
    """One input file after decoding: the padded patch, or the reason there is none."""
    path: str
    image: np.ndarray | None = None   # uint8 [50, 50, 3]
    height: int | None = None
    width: int | None = None
    error: str = ""
    note: str = ""


def _image_note(path: str) -> str:
    """Why a decodable file was not used as is (it is not an 8-bit RGB PNG); rare, so the
    header is read a second time here rather than on every file."""
    try:
        with Image.open(path) as image:
            fmt, mode = image.format, image.mode
            has_alpha = "A" in mode or "transparency" in image.info
    except Exception:  # only a note; decode_patch already read the file
        return ""
    parts = []
    if fmt != "PNG":
        parts.append(f"{fmt} file, not PNG")
    if mode != "RGB":
        parts.append(f"mode {mode} converted to RGB" + (" (alpha dropped)" if has_alpha else ""))
    return "; ".join(parts)


def _clean_reason(error: Exception) -> str:
    # PIL names an in-memory buffer "<_io.BytesIO object at 0x...>": noise in a CSV
    return re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(error))


def _too_large_from_header(path: str) -> str:
    """The TOO_LARGE error from a file's header alone, "" if it is small enough to decode."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Image.DecompressionBombError:
        return TOO_LARGE
    except Exception:  # decode_patch then gives the reason
        return ""
    if height > records.PATCH_SIZE or width > records.PATCH_SIZE:
        return f"{TOO_LARGE}: {height}x{width}"
    return ""


def _read_pixels(out: DecodedFile):
    """decode_patch(out.path) -> (pixels, rgb_png), setting out.height/width; or None with
    out.error set (and the size, when the file is too large)."""
    try:
        size = os.path.getsize(out.path)
        if size == 0:
            out.error = "empty file"
            return None
        if size > HEADER_CHECK_BYTES:
            out.error = _too_large_from_header(out.path)
            if out.error:
                return None
        pixels, out.height, out.width, rgb_png = patch_png.decode_patch(out.path)
        return pixels, rgb_png
    except FileNotFoundError:
        out.error = "no such file"
    except IsADirectoryError:
        out.error = "is a directory"
    except OSError as e:
        out.error = f"cannot read: {e.strerror or _clean_reason(e)}"
    except ValueError as e:
        match = re.match(r"larger than \d+x\d+: (\d+)x(\d+)", str(e))
        if match:
            out.height, out.width = int(match[1]), int(match[2])
            out.error = f"{TOO_LARGE}: {out.height}x{out.width}"
        else:
            out.error = _clean_reason(e)
    except Exception as e:  # a malformed file must give a row, never stop the run
        out.error = f"not a readable image ({type(e).__name__}: {_clean_reason(e)})"
    return None


def decode_file(path: str) -> DecodedFile:
    """Reads one file as a 50x50 RGB patch, padded exactly as the converter pads; never raises.

    Returns a DecodedFile with `image` uint8 [50, 50, 3], or with `error` set.
    """
    out = DecodedFile(path)
    read = _read_pixels(out)
    if read is None:
        return out
    pixels, rgb_png = read
    out.image = np.frombuffer(pixels, np.uint8).reshape(records.IMAGE_SHAPE)
    notes = []
    if rgb_png is None:
        notes.append(_image_note(path))
    if (out.height, out.width) != records.IMAGE_SHAPE[:2]:
        notes.append(f"padded from {out.height}x{out.width} to {records.PATCH_SIZE}x"
                     f"{records.PATCH_SIZE} with white at the bottom/right, as the converter does")
    out.note = "; ".join(n for n in notes if n)
    return out


def _decode_chunk(paths: list) -> list:
    return [decode_file(p) for p in paths]


def decode_files(paths: list, num_threads: int = 2, max_pending_files: int = 4096):
    """Yields DecodedFile for each path, in order, decoded ahead in a thread pool.

    Threads overlap file I/O (slow or network disks) and PIL decoding with the model, which
    releases the GIL; at most `max_pending_files` decoded patches wait in memory.
    """
    chunks = [paths[i:i + _FILES_PER_TASK] for i in range(0, len(paths), _FILES_PER_TASK)]
    window = max(num_threads, max_pending_files // _FILES_PER_TASK)
    with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
        pending = collections.deque()
        next_chunk = 0
        while pending or next_chunk < len(chunks):
            while next_chunk < len(chunks) and len(pending) < window:
                pending.append(pool.submit(_decode_chunk, chunks[next_chunk]))
                next_chunk += 1
            yield from pending.popleft().result()


# --- what a patch is known by ------------------------------------------------------------------

def name_fields(path: str) -> dict:
    """patient_id, x, y, label from a Kaggle-style file name; {} for other names."""
    parsed = kaggle_tree.parse_patch_name(os.path.basename(path))
    if parsed is None:
        return {}
    return {"patient_id": parsed.patient, "x": parsed.x, "y": parsed.y, "label": parsed.label}


def padded_sizes(manifest: dict) -> dict:
    """(patient_id, x, y) -> (height, width) of the split's padded patches, from the manifest."""
    sizes = {}
    for item in manifest.get("padded", []):
        parsed = kaggle_tree.parse_patch_name(item["path"].rsplit("/", 1)[-1])
        if parsed:
            sizes[(parsed.patient, parsed.x, parsed.y)] = (item["height"], item["width"])
    return sizes
