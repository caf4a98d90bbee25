"""The cohort at a glance, rebuilt from what the slides left in OUT: cohort.csv, cohort.json and
cohort_idc_fraction.png.

    cohort.csv   a row per slide: slide, name (its folder), status, message, tissue_mm2,
                 idc_mm2, idc_fraction, mean_idc_probability, tiles, unreadable_regions,
                 seconds, export (the export's fingerprint)
    cohort.json  the totals: slides by status, tissue and IDC areas, tiles, seconds
    cohort_idc_fraction.png   each complete slide's IDC fraction, sorted

status: `ok` (OUT/<name>/summary.json is complete and no later run of the slide failed),
`error` (its last run failed, or it was given up after --max_attempts runs; message says why;
an older complete output, if any, stays in OUT/<name>/), `unfinished` (a run started and did
not end: killed, or still running). Everything is derived from the per-slide files, so any
worker may rebuild it and `idc-slide --summarize OUT` rebuilds it alone; each file is written
atomically.
"""

import csv
import glob
import io
import os

from idc_engine import atomic_files
from idc_engine.slides import cohort_locks, outputs

COHORT_CSV, COHORT_JSON, COHORT_PNG = "cohort.csv", "cohort.json", "cohort_idc_fraction.png"
# What a cohort run adds to OUT beside the slides' folders.
COHORT_FILES = (COHORT_CSV, COHORT_JSON, COHORT_PNG, cohort_locks.STATE_DIR, "tensorboard")
COLUMNS = ("slide", "name", "status", "message", "tissue_mm2", "idc_mm2", "idc_fraction",
           "mean_idc_probability", "tiles", "unreadable_regions", "seconds", "export")


def _summaries(output_dir: str) -> dict[str, tuple[dict, float]]:
    """{folder name: (summary.json, its mtime)} of every complete slide output in OUT."""
    found = {}
    for name in outputs.slide_names(output_dir):
        summary = outputs.read_summary(output_dir, name)
        try:
            if summary is not None:
                found[name] = (summary, os.stat(os.path.join(
                    output_dir, name, outputs.SUMMARY_JSON)).st_mtime)
        except OSError:
            continue
    return found


def _attempts(output_dir: str) -> dict[str, tuple[dict, float]]:
    """{name: (attempts record, its mtime)} of the slides whose last run did not complete (or
    completed an instant before its record could be removed: then the summary is newer)."""
    found = {}
    pattern = os.path.join(glob.escape(cohort_locks.state_dir(output_dir)), "*.attempts.json")
    for path in glob.glob(pattern):
        name = os.path.basename(path).removesuffix(".attempts.json")
        try:
            found[name] = (cohort_locks.read_attempts(output_dir, name), os.stat(path).st_mtime)
        except OSError:
            continue
    return found


def _row(name: str, summary: tuple | None, attempt: tuple | None) -> dict:
    """summary, attempt: (record, mtime) or None. A run is recorded before it starts and its
    outputs land after, so a summary newer than the attempts record is that run's."""
    row = dict.fromkeys(COLUMNS, "")
    record = (summary or attempt)[0]
    row.update(name=name, slide=record.get("slide", ""))
    if attempt and not (summary and summary[1] >= attempt[1] and not attempt[0].get("error")):
        attempt = attempt[0]
        row["status"] = "error" if attempt.get("error") else "unfinished"
        row["message"] = attempt.get("error") or (
            f"run {attempt.get('attempts', 1)} started and did not end (killed, or running)")
        return row
    summary = summary[0]
    row.update(status="ok", tissue_mm2=summary["tissue_area_mm2"],
               idc_mm2=summary["idc_area_mm2"], idc_fraction=summary["idc_fraction"],
               mean_idc_probability=summary["mean_idc_probability"],
               tiles=summary["tiles_read"], unreadable_regions=len(summary["unreadable_regions"]),
               seconds=summary["seconds"],
               export=summary.get("fingerprint", {}).get("export", ""))
    return row


def cohort_rows(output_dir: str) -> list[dict]:
    """A row per slide OUT knows of (COLUMNS), sorted by name."""
    summaries, attempts = _summaries(output_dir), _attempts(output_dir)
    return [_row(name, summaries.get(name), attempts.get(name))
            for name in sorted(set(summaries) | set(attempts))]


def _totals(rows: list[dict]) -> dict:
    ok = [r for r in rows if r["status"] == "ok"]
    tissue = sum(r["tissue_mm2"] for r in ok)
    idc = sum(r["idc_mm2"] for r in ok)
    return {"slides": len(rows),
            **{status: sum(r["status"] == status for r in rows)
               for status in ("ok", "error", "unfinished")},
            "tissue_mm2": round(tissue, 4), "idc_mm2": round(idc, 4),
            "idc_fraction_of_tissue": idc / tissue if tissue else None,
            "tiles": sum(r["tiles"] for r in ok), "seconds": round(sum(r["seconds"] for r in ok), 3),
            "errors": {r["name"]: r["message"] for r in rows if r["status"] == "error"}}


def _figure(path: str, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    ok = sorted((r for r in rows if r["status"] == "ok" and r["idc_fraction"] is not None),
                key=lambda r: r["idc_fraction"])
    figure, axes = plt.subplots(figsize=(max(4.0, 0.12 * len(ok) + 2), 3.2), dpi=100)
    axes.bar(range(len(ok)), [100 * r["idc_fraction"] for r in ok], color="#c0392b")
    axes.set_xticks(range(len(ok)), [r["name"] for r in ok] if len(ok) <= 40 else [],
                    rotation=90, fontsize=6)
    axes.set(ylabel="IDC, % of tissue tiles", xlabel=f"{len(ok)} slides, sorted",
             title="IDC fraction per slide")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    with atomic_files.replace_atomically(path, "wb", shared=True) as f:
        f.write(buffer.getvalue())


def write_cohort(output_dir: str) -> dict:
    """Rebuilds cohort.csv, cohort.json and the figure from OUT; returns the totals. Read
    again after writing, and written again while that finds more: a worker that finished a
    slide meanwhile may have written its table first, and this one must not leave an older
    table over it."""
    rows = cohort_rows(output_dir)
    for _ in range(5):
        totals = _write(output_dir, rows)
        now = cohort_rows(output_dir)
        if now == rows:
            break
        rows = now
    return totals


def _write(output_dir: str, rows: list[dict]) -> dict:
    """The three files from `rows`; returns the totals written to cohort.json."""
    with atomic_files.replace_atomically(os.path.join(output_dir, COHORT_CSV), shared=True,
                                         newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    totals = _totals(rows)
    atomic_files.write_json_atomically(os.path.join(output_dir, COHORT_JSON), totals,
                                       shared=True)
    _figure(os.path.join(output_dir, COHORT_PNG), rows)
    return totals
