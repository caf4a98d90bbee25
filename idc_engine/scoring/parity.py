"""Whether a faster runtime of the same model may replace it: parity of two models' P(IDC).

The exported int8 model (training/int8_export.py) is offered only when, on the val split, it
makes the reference's decisions and ranks patches as well. Measured on the calibrated IDC
probability both serve, at the exported decision threshold:

    ROC-AUC of each, and their difference                        |dAUC| <= auc_difference
    agreement of the decisions, patches outside threshold +- band   >= agreement
    (inside the band a flip is the noise of any two runtimes, and no decision is firm there)
    max and mean |dP|, ECE of each                               recorded
    per slide, the difference in the fraction of IDC tiles       <= idc_fraction_difference

The dataset's patients are slides (each patient's patches tile one whole-mount slide), so with
patient ids the IDC fraction of each patient is checked too: of the patients with at least
min_slide_patches patches, where one changed decision moves the fraction by at most half the
tolerance (fewer patches are recorded, not checked: one decision would exceed it).
"""

import dataclasses

import numpy as np
from sklearn import metrics as sk_metrics

from idc_engine.scoring import metrics as metrics_lib


@dataclasses.dataclass(frozen=True)
class Tolerance:
    auc_difference: float = 0.005
    agreement: float = 0.995
    band: float = 0.02
    idc_fraction_difference: float = 0.01
    min_slide_patches: int = 200


def _auc(labels, probability) -> float | None:
    return (float(sk_metrics.roc_auc_score(labels, probability))
            if len(np.unique(labels)) == 2 else None)


def measure(labels, reference, candidate, threshold: float,
            tolerance: Tolerance = Tolerance(), patient_id=None) -> dict:
    """labels int [N] in {0, 1}; reference, candidate: P(IDC) float [N] of the same patches;
    patient_id str [N] or None -> the figures above, "passed" (bool) and "reason" (why it
    failed, or what held)."""
    labels = np.asarray(labels)
    reference = np.asarray(reference, np.float64)
    candidate = np.asarray(candidate, np.float64)
    if not len(labels):
        raise ValueError("parity needs at least one patch")
    outside = np.abs(reference - threshold) > tolerance.band
    agree = ((candidate >= threshold) == (reference >= threshold))[outside]
    difference = np.abs(candidate - reference)
    record = {
        "num_patches": int(len(labels)), "threshold": float(threshold),
        "auc_reference": _auc(labels, reference), "auc_candidate": _auc(labels, candidate),
        "patches_outside_band": int(outside.sum()),
        "decisions_disagreeing_outside_band": int((~agree).sum()),
        "agreement_outside_band": float(agree.mean()) if len(agree) else None,
        "max_abs_difference": float(difference.max()),
        "mean_abs_difference": float(difference.mean()),
        "ece_reference": metrics_lib.calibration_bins(labels, reference)[
            "expected_calibration_error"],
        "ece_candidate": metrics_lib.calibration_bins(labels, candidate)[
            "expected_calibration_error"],
        "tolerance": dataclasses.asdict(tolerance)}
    if patient_id is not None:
        record["slides"] = _per_patient(reference, candidate, threshold, tolerance, patient_id)
    record["passed"], record["reason"] = _verdict(record, tolerance)
    return record


def _per_patient(reference, candidate, threshold: float, tolerance: Tolerance,
                 patient_id) -> list[dict]:
    """idc_fractions of each patient's patches, with "patient", "num_patches" and "checked"."""
    patient_id = np.asarray(patient_id)
    rows = []
    for patient in sorted(set(patient_id.tolist())):
        mine = patient_id == patient
        rows.append({"patient": str(patient), "num_patches": int(mine.sum()),
                     "checked": bool(mine.sum() >= tolerance.min_slide_patches),
                     **idc_fractions(reference[mine], candidate[mine], threshold, tolerance)})
    return rows


def _verdict(record: dict, tolerance: Tolerance) -> tuple[bool, str]:
    if record["auc_reference"] is None:
        return False, "the patches hold one class only: ROC-AUC is undefined, parity unmeasured"
    auc_difference = abs(record["auc_candidate"] - record["auc_reference"])
    if auc_difference > tolerance.auc_difference:
        return False, (f"ROC-AUC {record['auc_candidate']:.4f} vs {record['auc_reference']:.4f}:"
                       f" differs by {auc_difference:.4f} > {tolerance.auc_difference}")
    agreement = record["agreement_outside_band"]
    if agreement is not None and agreement < tolerance.agreement:
        return False, (f"decisions agree on {agreement:.2%} of the "
                       f"{record['patches_outside_band']} patches outside threshold +- "
                       f"{tolerance.band} < {tolerance.agreement:.1%}")
    checked = [row for row in record.get("slides", []) if row["checked"]]
    failed = [row for row in checked if not row["passed"]]
    if failed:
        worst = max(failed, key=lambda row: row["difference"])
        return False, (f"the IDC fraction of {len(failed)} of {len(checked)} patients' slides "
                       f"differs by more than {tolerance.idc_fraction_difference} (patient "
                       f"{worst['patient']}: {worst['difference']:.4f})")
    slides = (f"; every IDC fraction of {len(checked)} patients' slides within "
              f"{tolerance.idc_fraction_difference}" if checked else "")
    return True, (f"ROC-AUC within {auc_difference:.4f}, decisions agree on "
                  + (f"{agreement:.2%}" if agreement is not None else "every patch")
                  + f" outside threshold +- {tolerance.band}{slides}")


def idc_fractions(reference, candidate, threshold: float,
                  tolerance: Tolerance = Tolerance()) -> dict:
    """Tiles of one slide: P(IDC) float [N] of each runtime -> both IDC fractions at threshold,
    their difference, "passed" and "reason"."""
    fractions = [float(np.mean(np.asarray(p) >= threshold)) for p in (reference, candidate)]
    difference = abs(fractions[1] - fractions[0])
    passed = difference <= tolerance.idc_fraction_difference
    return {"idc_fraction_reference": fractions[0], "idc_fraction_candidate": fractions[1],
            "difference": difference, "passed": passed,
            "reason": f"IDC fractions differ by {difference:.4f} "
                      f"{'<=' if passed else '>'} {tolerance.idc_fraction_difference}"}
