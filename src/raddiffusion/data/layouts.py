"""Which reader a dataset folder needs, and reading it: the one entry point to the readers.

``detect_layout`` looks at the files at ROOT: MIMIC-CXR's metadata CSV, CheXpert's ``train.csv`` +
``valid.csv``, NIH's Data_Entry CSV, a ``manifest.csv`` (:data:`DEFAULT_MANIFEST`: what ``raddiffusion download``
writes for a CSV-manifest set), in that order; failing those, a DICOM file among the first
:data:`~.dicom_export.DETECT_FILES` files of the tree makes it a DICOM export (layout ``dicom``). Any other folder is
read with a manifest CSV given by the user (layout ``csv``).
"""
from __future__ import annotations

from pathlib import Path

from .chexpert import TRAIN_CSV, VALID_CSV, read_chexpert
from .dicom_export import DETECT_FILES, ExportOptions, is_dicom_export, read_dicom_export
from .manifest import read_manifest
from .mimic import METADATA_CSV, read_mimic
from .nih import find_data_entry, read_nih
from .tree import DataError, ImageTree, find_csv

LAYOUTS = ("mimic", "chexpert", "nih", "dicom", "csv")
DEFAULT_MANIFEST = "manifest.csv"  # a manifest at ROOT under this name is read without --manifest

__all__ = ["DEFAULT_MANIFEST", "LAYOUTS", "detect_layout", "read_tree"]


def detect_layout(root: str | Path) -> str:
    """The layout of the dataset folder ``root`` (one of :data:`LAYOUTS`), or a one-line DataError."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    if find_csv(root, METADATA_CSV) is not None:
        return "mimic"
    if (root / TRAIN_CSV).is_file() and (root / VALID_CSV).is_file():
        return "chexpert"
    if find_data_entry(root) is not None:
        return "nih"
    if (root / DEFAULT_MANIFEST).is_file():
        return "csv"
    if is_dicom_export(root):
        return "dicom"
    raise DataError(
        f"{root}: no known layout (looked for {METADATA_CSV}(.gz), {TRAIN_CSV} + {VALID_CSV}, "
        f"Data_Entry_2017(_v2020).csv, {DEFAULT_MANIFEST}, DICOM files among the first {DETECT_FILES}); give --layout dicom for a "
        "folder of DICOM files, or --layout csv --manifest FILE"
    )


def read_tree(
    root: str | Path,
    layout: str | None = None,
    manifest: str | Path | None = None,
    carve: float | None = None,
    export: ExportOptions | None = None,
    progress: bool = False,
) -> ImageTree:
    """Read ``root`` with the reader of ``layout`` (detected when None; a ``manifest`` implies ``csv``).

    ``carve`` (CheXpert only): the share of train patients carved into a missing validate/test split.
    ``export`` (DICOM export only): id key, id map, labels and split files. ``progress``: a bar while
    the DICOM headers are read.
    """
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    if manifest is not None:
        if layout not in (None, "csv"):
            raise ValueError(f"a manifest is read with layout csv, not {layout!r}")
        layout = "csv"
    layout = layout or detect_layout(root)
    if layout == "csv" and manifest is None:
        if not (Path(root) / DEFAULT_MANIFEST).is_file():
            raise ValueError(f"layout csv needs a manifest CSV (--manifest FILE, or {DEFAULT_MANIFEST} in ROOT)")
        manifest = Path(root) / DEFAULT_MANIFEST
    if carve is not None and layout != "chexpert":
        raise ValueError(f"carve applies to the chexpert layout only, not {layout}")
    if export is not None and layout != "dicom":
        raise ValueError(f"--id-key, --id-map, --labels, --split-file and --body-part apply to the dicom layout only, "
                         f"not {layout}")
    if layout == "mimic":
        return read_mimic(root)
    if layout == "chexpert":
        return read_chexpert(root, carve)
    if layout == "nih":
        return read_nih(root)
    if layout == "dicom":
        return read_dicom_export(root, export, progress)
    return read_manifest(root, manifest)
