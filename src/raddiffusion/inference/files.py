"""A user's own radiograph files -> studies the models take, decoded exactly as ``preprocess`` does.

Files are DICOM, JPG or PNG. Either all files form one study, or each folder is a study
(``by_folder``); a folder given as an argument stands for the image files under it. Files that
cannot be read are returned with their reason and the study goes on without them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.decode import DICOM_SUFFIXES, PICTURE_SUFFIXES, read_image
from ..data.studies import to_unit_range

IMAGE_SUFFIXES = DICOM_SUFFIXES | PICTURE_SUFFIXES


@dataclass
class FileStudy:
    """The views of one study read from files: ``pixels`` uint8 ``[views, size, size]`` in the order given."""

    name: str
    files: list[Path]
    pixels: np.ndarray
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def views(self) -> int:
        return len(self.pixels)


def expand_paths(paths: list[Path]) -> list[Path]:
    """Files as given; a folder becomes the DICOM / JPG / PNG files under it (sorted, recursively)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{path}: folder holds no .dcm, .jpg or .png file")
            files.extend(found)
        else:
            files.append(path)
    return files


def group_files(paths: list[Path], by_folder: bool = False) -> dict[str, list[Path]]:
    """Study name -> its files, in the order given. ``by_folder``: one study per parent folder;
    otherwise all files are one study, named after their common folder."""
    files = expand_paths(paths)
    if not by_folder:
        return {study_name(files): files}
    groups: dict[str, list[Path]] = {}
    for file in files:
        groups.setdefault(str(file.parent), []).append(file)
    return groups


def study_name(files: list[Path]) -> str:
    """The folder all ``files`` share (``.`` when they share none)."""
    parents = [str(file.parent) for file in files]
    try:
        return os.path.commonpath(parents) or "."
    except ValueError:  # absolute and relative paths mixed
        return "."


def read_study(name: str, files: list[Path], image_size: int) -> FileStudy:
    """Decode, crop and resize each file as ``preprocess`` does; unreadable ones go to ``skipped``."""
    pixels, kept, skipped = [], [], []
    for file in files:
        image, reason = read_image(file, image_size)
        if image is None:
            skipped.append((file, reason))
        else:
            pixels.append(image)
            kept.append(file)
    array = np.stack(pixels) if pixels else np.empty((0, image_size, image_size), np.uint8)
    return FileStudy(name, kept, array, skipped)


def read_studies(paths: list[Path], image_size: int, by_folder: bool = False) -> list[FileStudy]:
    """Every study of ``paths`` (see :func:`group_files`), read with :func:`read_study`."""
    return [read_study(name, files, image_size) for name, files in group_files(paths, by_folder).items()]


def study_batch(studies: list[FileStudy]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images [N, 1, H, W]`` in [-1, 1], ``lengths [S])`` of studies with at least one view, for the models."""
    kept = [study.pixels for study in studies if study.views]
    lengths = torch.tensor([len(pixels) for pixels in kept], dtype=torch.int64)
    return to_unit_range(kept, int(lengths.sum())), lengths


def read_files(paths: list[str | Path], image_size: int, by_folder: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, lengths)`` for the models from files: one study, or one per folder with ``by_folder``.

    Decoded exactly as ``preprocess`` does; a file that cannot be read raises ValueError naming it.
    """
    studies = read_studies([Path(p) for p in paths], image_size, by_folder)
    unread = [f"{file}: {reason}" for study in studies for file, reason in study.skipped]
    if unread:
        raise ValueError(f"cannot read {unread[0]}" + (f" (and {len(unread) - 1} more)" if len(unread) > 1 else ""))
    return study_batch(studies)
