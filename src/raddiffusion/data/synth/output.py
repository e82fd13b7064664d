"""Writing the demo files: atomic writes, image and CSV encoding, and the summary of a run."""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from PIL import Image

from ...fileio import atomic_path

JPEG_QUALITY = 90


@dataclass(frozen=True)
class SynthSummary:
    """What ``synthesize`` wrote."""

    subjects: int
    studies: int
    images: int
    labelled_studies: int
    out: Path
    layout: str
    image_format: str  # dicom, jpg or png

    def __str__(self) -> str:
        return (f"{self.subjects} subjects, {self.studies} studies ({self.labelled_studies} labelled), "
                f"{self.images} {self.image_format} images in {self.out} ({self.layout} layout)")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary sibling, then rename it into place."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def image_bytes(picture: Image.Image, fmt: str) -> bytes:
    """``picture`` encoded as JPEG (``fmt`` "jpg") or PNG ("png")."""
    buffer = io.BytesIO()
    if fmt == "jpg":
        picture.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        picture.save(buffer, format="PNG")
    return buffer.getvalue()


def csv_text(columns: Iterable[str], rows: Iterable[Iterable]) -> str:
    """A CSV file with a header row and ``\\n`` line ends."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return text.getvalue()


def label_cell(value: float) -> str:
    """A raw label value as CheXpert writes it: 1.0, 0.0, -1.0 or blank (not mentioned)."""
    return "" if math.isnan(value) else f"{value:.1f}"
