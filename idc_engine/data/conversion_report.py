"""The text `python -m idc_engine.convert` prints after a conversion, from its manifest."""

import collections


def format_report(manifest: dict, output_dir: str) -> str:
    """The per-split table, then what was seen, written, padded, ignored and skipped, and the
    timing when `manifest` carries convert_tree's "conversion" entry."""
    lines = [f"Converted into {output_dir} ({manifest['image_encoding']} images):", "",
             f"  {'split':<6} {'patients':>8} {'patches':>9} {'IDC':>8} {'IDC %':>6} {'shards':>6}"]
    for split, info in manifest["splits"].items():
        n, pos = info["num_examples"], info["num_positive"]
        lines.append(f"  {split:<6} {len(info['patients']):>8} {n:>9,} {pos:>8,} "
                     f"{100 * pos / max(n, 1):>6.1f} {len(info['files']):>6}")
    settings = manifest["split_settings"]
    written = sum(info["num_examples"] for info in manifest["splits"].values())
    lost = manifest["num_lost_patches"]
    lines += ["", f"  split: {', '.join(f'{k}={v}' for k, v in settings.items())}",
              f"  PNG files seen: {manifest['input']['num_png_files']:,}; unique patches: "
              f"{manifest['input']['num_unique_patches']:,}; duplicate copies: "
              f"{manifest['num_duplicates']:,}",
              f"  patches written: {written:,}"
              + (f" (lost, every copy unreadable: {lost:,})" if lost else ""),
              f"  undersized patches padded to 50x50 (white, bottom/right): {manifest['num_padded']:,}",
              f"  ignored: {manifest['ignored_files']['litter']:,} litter files "
              f"(.DS_Store, Thumbs.db, ._*), {manifest['ignored_files']['other']:,} non-PNG files"]
    if manifest["excluded_patients"] or manifest["missing_patients"]:
        lines.append(f"  patients left out (not in the split lists): "
                     f"{len(manifest['excluded_patients'])}; listed but not in the data: "
                     f"{len(manifest['missing_patients'])}")
    reasons = collections.Counter(s["reason"].split(" (")[0].split(":")[0]
                                  for s in manifest["skipped"])
    lines.append(f"  skipped files: {manifest['num_skipped']:,}"
                 + "".join(f"\n    {count:>6,}  {reason}" for reason, count in reasons.items()))
    if manifest["train_channel_mean"]:
        lines.append(f"  train channel mean / std: {manifest['train_channel_mean']} / "
                     f"{manifest['train_channel_std']}")
    if "conversion" in manifest:
        c = manifest["conversion"]
        lines.append(f"  {c['seconds']:.1f} s with {c['num_workers']} workers: "
                     f"{c['patches_per_s']:,.0f} patches/s")
    return "\n".join(lines)
