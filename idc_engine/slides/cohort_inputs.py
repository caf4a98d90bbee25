"""The slides a command is given: files, directories and list files, in any mix.

    idc-slide ... scan.svs cohort_a/ @more_slides.txt

- a file is taken as it is (OpenSlide decides later whether it can read it; a missing one is
  that slide's error, and the others go on);
- a directory is searched, with its subdirectories, for the extensions OpenSlide reads
  (SLIDE_EXTENSIONS); a DICOM slide is a folder of .dcm files (one per level) that OpenSlide
  opens from any of them, so a folder's .dcm files are taken as one slide, its first by name;
- `@list.txt` names one slide, directory or further `@list` per line (blank lines and lines
  starting with # are skipped; relative paths are relative to the list file's folder).

The result is each slide once (by absolute path), in the order given, directories sorted by
name, so that every worker of a cohort sees the same list in the same order.
"""

import os

from idc_engine import errors

# What OpenSlide 4 reads: Aperio, Hamamatsu, Leica, MIRAX, Philips TIFF, Sakura, Trestle,
# Ventana, generic tiled TIFF, DICOM.
SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs",
                    ".svslide", ".bif", ".dcm")


class SlideInputError(errors.EngineError, ValueError):
    """A slide argument that names nothing usable; the message names it."""


def _search(directory: str) -> list[str]:
    """The slide files under `directory`, sorted: every file with a SLIDE_EXTENSIONS
    extension, a folder's .dcm files as one (its first by name)."""
    found = []
    for folder, subfolders, names in os.walk(directory):
        subfolders.sort()
        dicom_taken = False
        for name in sorted(names):
            extension = os.path.splitext(name)[1].lower()
            if extension not in SLIDE_EXTENSIONS or name.startswith("."):
                continue
            if extension == ".dcm":
                if dicom_taken:
                    continue
                dicom_taken = True
            found.append(os.path.join(folder, name))
    return found


def _list_file(argument: str, seen_lists: tuple) -> list[str]:
    """The entries of `@path`, relative ones made relative to its folder."""
    path = os.path.abspath(argument[1:])
    if path in seen_lists:
        raise SlideInputError(f"{argument}: lists itself (through {' -> '.join(seen_lists)})")
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except OSError as e:
        raise SlideInputError(f"{argument}: cannot read the list file ({e.strerror})") from e
    folder = os.path.dirname(path)
    entries = []
    for line in lines:
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            entries.append("@" + os.path.join(folder, line[1:]))
        else:
            entries.append(os.path.join(folder, line))
    return [slide for entry in entries for slide in _expand(entry, seen_lists + (path,))]


def _expand(argument: str, seen_lists: tuple = ()) -> list[str]:
    if argument.startswith("@"):
        return _list_file(argument, seen_lists)
    if os.path.isdir(argument):
        found = _search(argument)
        if not found:
            raise SlideInputError(f"{argument}: a directory with no slide file in it (searched "
                                  f"for {' '.join(SLIDE_EXTENSIONS)})")
        return found
    return [argument]  # a missing file is that slide's error, the others go on


def expand_slides(arguments: list[str]) -> list[str]:
    """Absolute paths of the slides named by `arguments` (files, directories, @lists), each
    once, in order. Raises SlideInputError naming a directory without slides, or a list file
    that cannot be read or lists itself."""
    slides, seen = [], set()
    for argument in arguments:
        for slide in _expand(argument):
            path = os.path.abspath(slide)
            if path not in seen:
                seen.add(path)
                slides.append(path)
    return slides
