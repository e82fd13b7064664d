"""Which reader a dataset folder needs, and reading it: the one entry point to the readers.

``detect_layout`` looks only at the files at ROOT: MIMIC-CXR's metadata CSV, CheXpert's
``train.csv`` + ``valid.csv``, NIH's Data_Entry CSV, in that order. Any other folder is read with a
manifest CSV (layout ``csv``).
"""
from __future__ import annotations

from pathlib import Path

from .chexpert import TRAIN_CSV, VALID_CSV, read_chexpert
from .manifest import read_manifest
from .mimic import METADATA_CSV, read_mimic
from .nih import find_data_entry, read_nih
from .tree import DataError, ImageTree, find_csv

LAYOUTS = ("mimic", "chexpert", "nih", "csv")

__all__ = ["LAYOUTS", "detect_layout", "read_tree"]


def detect_layout(root: str | Path) -> str:
    """The layout of the dataset folder ``root`` (one of :data:`LAYOUTS` but ``csv``), or a one-line DataError."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    if find_csv(root, METADATA_CSV) is not None:
        return "mimic"
    if (root / TRAIN_CSV).is_file() and (root / VALID_CSV).is_file():
        return "chexpert"
    if find_data_entry(root) is not None:
        return "nih"
    raise DataError(
        f"{root}: no known layout (looked for {METADATA_CSV}(.gz), {TRAIN_CSV} + {VALID_CSV}, "
        "Data_Entry_2017(_v2020).csv); give --layout csv --manifest FILE"
    )


def read_tree(
    root: str | Path,
    layout: str | None = None,
    manifest: str | Path | None = None,
    carve: float | None = None,
) -> ImageTree:
    """Read ``root`` with the reader of ``layout`` (detected when None; a ``manifest`` implies ``csv``).

    ``carve`` (CheXpert only): the share of train patients carved into a missing validate/test split.
    """
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    if manifest is not None:
        if layout not in (None, "csv"):
            raise ValueError(f"a manifest is read with layout csv, not {layout!r}")
        layout = "csv"
    if layout == "csv" and manifest is None:
        raise ValueError("layout csv needs a manifest CSV (--manifest FILE)")
    layout = layout or detect_layout(root)
    if carve is not None and layout != "chexpert":
        raise ValueError(f"carve applies to the chexpert layout only, not {layout}")
    if layout == "mimic":
        return read_mimic(root)
    if layout == "chexpert":
        return read_chexpert(root, carve)
    if layout == "nih":
        return read_nih(root)
    return read_manifest(root, manifest)
