"""The free-text report of a MIMIC study, written from its labels and drawn findings."""
from __future__ import annotations

from ..labels import CHEXPERT_LABELS
from .findings import Findings
from .subjects import Study

_SIDE = {-1: "right", 1: "left"}
_POSITIVE_SENTENCES = {
    "Atelectasis": "Linear opacity at the {side} base consistent with atelectasis.",
    "Cardiomegaly": "The heart is enlarged.",
    "Consolidation": "Focal consolidation in the {side} lung.",
    "Edema": "Perihilar haziness and vascular indistinctness consistent with pulmonary edema.",
    "Enlarged Cardiomediastinum": "The cardiomediastinal silhouette is widened.",
    "Fracture": "There is a fracture of a {side} rib.",
    "Lung Lesion": "A nodular opacity is seen in the {side} lung.",
    "Lung Opacity": "Patchy opacity in the {side} lung.",
    "Pleural Effusion": "There is a {side} pleural effusion.",
    "Pleural Other": "Pleural thickening along the {side} chest wall.",
    "Pneumonia": "Airspace opacity in the {side} lung concerning for pneumonia.",
    "Pneumothorax": "There is a {side} apical pneumothorax.",
    "Support Devices": "Support devices are in place: {devices}.",
}
_NEGATIVE_SENTENCES = {
    "Cardiomegaly": "Heart size is normal.",
    "Enlarged Cardiomediastinum": "The mediastinal contours are normal.",
    "Pleural Effusion": "No pleural effusion.",
    "Pneumothorax": "No pneumothorax.",
    "Consolidation": "No focal consolidation.",
    "Edema": "No pulmonary edema.",
    "Pleural Other": "No pleural thickening.",
}
_DEVICE_NAMES = {"ett": "endotracheal tube", "ng": "enteric tube", "cvc": "central venous catheter",
                 "ecg": "ECG leads", "pacemaker": "cardiac pacemaker"}


def _finding_side(name: str, findings: Findings) -> str:
    located = {"Fracture": findings.fracture, "Pleural Other": findings.thickening,
               "Pneumothorax": findings.pneumothorax}.get(name)
    if located is not None:
        return _SIDE[located.side]
    if name == "Pleural Effusion" and all(s > 0 for s in findings.effusion):
        return "bilateral"
    if name == "Pleural Effusion" and any(s > 0 for s in findings.effusion):
        return _SIDE[-1 if findings.effusion[0] > 0 else 1]
    return _SIDE[findings.lesions[0].side] if findings.lesions else "right"


def _sentence(name: str, value: float, findings: Findings) -> str | None:
    if name == "No Finding":
        return None
    if value in (1.0, -1.0) and name in _POSITIVE_SENTENCES:
        devices = ", ".join(_DEVICE_NAMES[d] for d in findings.devices) or "lines and tubes"
        text = _POSITIVE_SENTENCES[name].format(side=_finding_side(name, findings), devices=devices)
        return text if value == 1.0 else f"Possibly: {text[0].lower()}{text[1:]}"
    if value == 0.0:
        return _NEGATIVE_SENTENCES.get(name, f"No {name.lower()}.")
    return None



def report(study: Study) -> str:
    """The report text: findings sentences for the mentioned labels and an impression."""
    mentioned = zip(CHEXPERT_LABELS, study.labels)
    sentences = [s for name, value in mentioned if (s := _sentence(name, value, study.findings))]
    abnormal = [s for s in sentences if not s.startswith(("No ", "Heart size", "The mediastinal"))]
    impression = " ".join(abnormal) if abnormal else "No acute cardiopulmonary process."
    findings_text = " ".join(sentences) or "Lungs are clear. Cardiomediastinal silhouette is normal."
    view_text = " and ".join(v.position for v in study.views)
    return (f"                                 FINAL REPORT\n"
            f" EXAMINATION:  CHEST RADIOGRAPH ({view_text})\n\n"
            f" INDICATION:  Synthetic demo study.\n\n"
            f" FINDINGS:\n {findings_text}\n\n"
            f" IMPRESSION:\n {impression}\n")
