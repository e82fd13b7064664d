"""Built-in demo data: procedurally generated chest radiographs in the layout of a public dataset.

``synthesize`` writes a MIMIC-CXR(-JPG), CheXpert-v1.0-small or NIH ChestX-ray14 tree exactly as the
real distribution lays it out, or a hospital's DICOM export (``dicom-export``), so the readers and the preprocessing run on it unchanged. Images are
smooth, upright chest radiographs (frontal PA/AP and lateral views) whose appearance follows the
study's CheXpert labels; labels follow the real joint distribution shipped in
``chexpert_label_stats.json``. Everything is drawn from per-subject random streams, so a seed gives
byte-identical output for any number of worker processes, and the same radiographs in every layout.

Modules: ``subjects`` (ids, studies, views, the worker pool), ``label_sampling``, ``findings``,
``anatomy``, ``draw``, ``frontal``, ``lateral`` and ``render`` (the radiographs), ``dicom`` and
``report`` (MIMIC files), ``lossless_jpeg`` (a JPEG Lossless encoder), ``output`` (writing), and one
writer per layout: ``mimic``, ``chexpert``, ``nih``, ``dicom_export``.
"""
from __future__ import annotations

from pathlib import Path

from . import chexpert, dicom_export, mimic, nih
from .dicom import SYNTHETIC_PATIENT_NAME_PREFIX, synthetic_patient_birth_date, synthetic_patient_name
from .mimic import FORMATS
from .output import SynthSummary
from .subjects import EXPECTED_IMAGES_PER_SUBJECT, plan_subjects

__all__ = [
    "EXPECTED_IMAGES_PER_SUBJECT", "FORMATS", "LAYOUTS", "SYNTHETIC_PATIENT_NAME_PREFIX", "SynthSummary",
    "synthesize", "synthetic_patient_birth_date", "synthetic_patient_name",
]

LAYOUTS = ("mimic", "chexpert", "nih", "dicom-export")
_LAYOUT_MODULES = {"mimic": mimic, "chexpert": chexpert, "nih": nih, "dicom-export": dicom_export}


def synthesize(out: str | Path, subjects: int = 200, fmt: str = "jpg", seed: int = 0, workers: int = 1,
               progress: bool = True, layout: str = "mimic") -> SynthSummary:
    """Write a demo tree of ``subjects`` patients under ``out`` in ``layout``.

    ``layout``: ``"mimic"`` (``files/`` and the three MIMIC CSVs), ``"chexpert"``
    (``CheXpert-v1.0-small/``), ``"nih"`` (``images/`` and the NIH CSV and split lists) or
    ``"dicom-export"`` (``DICOMDIR`` and nested DICOM files without extension, no CSV). ``fmt``
    is ``"jpg"`` (MIMIC-CXR-JPG) or ``"dicom"`` (MIMIC-CXR) and applies to the mimic layout only. The
    same ``seed`` gives byte-identical files whatever ``workers`` is. Raises ``ValueError`` for bad
    arguments and ``FileExistsError`` if the layout's folder already exists under ``out``.
    """
    _check_arguments(subjects, fmt, layout)
    out = Path(out)
    module = _LAYOUT_MODULES[layout]
    if (out / module.OWN_DIR).exists():
        raise FileExistsError(f"{out / module.OWN_DIR} already exists; choose an empty output directory "
                              "(demo data is never mixed into an existing tree)")
    plans = plan_subjects(subjects, seed)
    if layout == "mimic":
        return mimic.write(out, plans, fmt, workers, progress)
    return module.write(out, plans, workers, progress)


def _check_arguments(subjects: int, fmt: str, layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if layout != "mimic" and fmt not in ("jpg", _LAYOUT_MODULES[layout].IMAGE_FORMAT):
        raise ValueError(f"format {fmt!r} is only for the mimic layout; the {layout} layout always writes "
                         f"{_LAYOUT_MODULES[layout].IMAGE_FORMAT} images")
    if subjects < 1:
        raise ValueError(f"subjects must be at least 1, not {subjects}")
