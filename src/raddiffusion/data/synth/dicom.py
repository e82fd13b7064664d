"""DICOM files of the MIMIC layout, with the variety of real archives.

Photometric interpretation, bit depth, VOI (window and rescale), modality and transfer syntax
(uncompressed, JPEG 2000 or RLE lossless) vary per file; decoding any of them the standard way
gives back the rendered display values. :func:`dicom_dataset` also writes the other lossless
syntaxes of :data:`TRANSFERS` (the DICOM export's variety).
"""
from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from .lossless_jpeg import encode_lossless_jpeg
from .output import atomic_write
from .render import Radiograph
from .subjects import DAYS_PER_YEAR, PROCEDURE, View

SYNTHETIC_PATIENT_NAME_PREFIX = "DEMO^SUBJECT"
SYNTHETIC_BIRTH_YEARS = (2040, 2110)
DEMO_UID_ENTROPY = "raddiffusion-demo"
CR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1"
DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"
MONOCHROME1_PROBABILITY = 0.3
BITS_ALLOCATED = 16
BITS_STORED_CHOICES = (12, 14, 15, 16)
BITS_STORED_WEIGHTS = (0.5, 0.2, 0.15, 0.15)
VOI_MODES = ("none", "window", "rescale", "rescale+window")
VOI_MODE_WEIGHTS = (0.4, 0.3, 0.15, 0.15)
TRANSFER_CHOICES = ("explicit", "jpeg2000", "rle")
TRANSFER_WEIGHTS = (0.83, 0.12, 0.05)
TRANSFERS = ("explicit", "implicit", "deflated", "jpeg-lossless", "jpeg-ls", "rle", "jpeg2000")
"""Every transfer syntax :func:`dicom_dataset` writes, all lossless."""
DX_PROBABILITY = 0.4
RESCALE_SLOPES = (0.5, 1.0, 2.0)
RESCALE_INTERCEPTS = (0.0, -1024.0)
WINDOW_LOW_FRACTION = (0.02, 0.12)
WINDOW_HIGH_FRACTION = (0.85, 0.98)
PIXEL_SPACING_DECIMALS = 4


def synthetic_patient_name(subject_id: int) -> str:
    """The PatientName written into a demo subject's DICOM files (must never reach outputs)."""
    return f"{SYNTHETIC_PATIENT_NAME_PREFIX}{subject_id}"


def synthetic_patient_birth_date(subject_id: int) -> str:
    """The PatientBirthDate (YYYYMMDD) written into a demo subject's DICOM files."""
    first, last = SYNTHETIC_BIRTH_YEARS
    year = first + subject_id % (last - first)
    day = (subject_id // 7) % DAYS_PER_YEAR
    return (dt.date(year, 1, 1) + dt.timedelta(days=day)).strftime("%Y%m%d")


@dataclass(frozen=True)
class DicomInfo:
    """The header values of one image file."""

    subject_id: int
    study_id: int
    view: View
    series: int
    study_date: dt.date
    study_time: float
    seed: int
    sex: str


@dataclass(frozen=True)
class _DicomEncoding:
    photometric: str
    bits_stored: int
    voi: str
    transfer: str
    modality: str
    slope: float
    intercept: float
    window: tuple[int, int]  # stored values shown as black .. white


def write_dicom(path: Path, image: Radiograph, info: DicomInfo, rng: np.random.Generator) -> None:
    """Write ``image`` as a DICOM file with an encoding drawn from ``rng``."""
    atomic_write(path, dicom_bytes(dicom_dataset(image, info, rng)))


def dicom_dataset(image: Radiograph, info: DicomInfo, rng: np.random.Generator,
                  transfer: str | None = None) -> Dataset:
    """``image`` as a DICOM dataset with an encoding drawn from ``rng``; ``transfer`` (one of
    :data:`TRANSFERS`) replaces the drawn transfer syntax."""
    encoding = _sample_encoding(rng)
    if transfer is not None:
        if transfer not in TRANSFERS:
            raise ValueError(f"transfer must be one of {', '.join(TRANSFERS)}, not {transfer!r}")
        encoding = replace(encoding, transfer=transfer)
    dataset = _dicom_dataset(image, info, encoding)
    compress(dataset, encoding.transfer, encoding.bits_stored)
    return dataset


def dicom_bytes(dataset: Dataset) -> bytes:
    """``dataset`` as the bytes of a DICOM file (preamble, file meta, its transfer syntax)."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _sample_encoding(rng: np.random.Generator) -> _DicomEncoding:
    bits = int(rng.choice(BITS_STORED_CHOICES, p=BITS_STORED_WEIGHTS))
    top = 2**bits - 1
    low = int(top * rng.uniform(*WINDOW_LOW_FRACTION))
    high = int(top * rng.uniform(*WINDOW_HIGH_FRACTION))
    return _DicomEncoding(
        photometric="MONOCHROME1" if rng.random() < MONOCHROME1_PROBABILITY else "MONOCHROME2",
        bits_stored=bits,
        voi=str(rng.choice(VOI_MODES, p=VOI_MODE_WEIGHTS)),
        transfer=str(rng.choice(TRANSFER_CHOICES, p=TRANSFER_WEIGHTS)),
        modality="DX" if rng.random() < DX_PROBABILITY else "CR",
        slope=float(rng.choice(RESCALE_SLOPES)),
        intercept=float(rng.choice(RESCALE_INTERCEPTS)),
        window=(low, high),
    )


def _stored_pixels(values: np.ndarray, encoding: _DicomEncoding) -> np.ndarray:
    """Stored DICOM values whose standard decoding gives back the display ``values``."""
    top = 2**encoding.bits_stored - 1
    target = values if encoding.photometric == "MONOCHROME2" else 1 - values
    if "window" in encoding.voi:
        low, high = encoding.window
        raw = low + target * (high - low)
    else:
        raw = np.clip(target, 0, 1) * top
    return np.clip(np.rint(raw), 0, top).astype(np.uint16)


def demo_uid(*parts: object) -> str:
    """A UID derived from ``parts``: the same for the same demo seed and ids."""
    return generate_uid(entropy_srcs=[DEMO_UID_ENTROPY, *map(str, parts)])


def _dicom_dataset(image: Radiograph, info: DicomInfo, encoding: _DicomEncoding) -> Dataset:
    sop_class = DX_SOP_CLASS if encoding.modality == "DX" else CR_SOP_CLASS
    instance_uid = demo_uid(info.seed, info.view.dicom_id)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = instance_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = instance_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = info.study_date.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = f"{info.study_time:013.6f}"
    ds.Modality = encoding.modality
    ds.Manufacturer = "raddiffusion synthetic demo"
    ds.StudyDescription = PROCEDURE["AP" if info.view.position == "AP" else "PA"]
    ds.PatientName = synthetic_patient_name(info.subject_id)
    ds.PatientID = str(info.subject_id)
    ds.PatientBirthDate = synthetic_patient_birth_date(info.subject_id)
    ds.PatientSex = info.sex
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = info.view.position
    ds.StudyInstanceUID = demo_uid(info.seed, info.study_id)
    ds.SeriesInstanceUID = demo_uid(info.seed, info.study_id, info.series)
    ds.StudyID = str(info.study_id)
    ds.SeriesNumber = info.series + 1
    ds.InstanceNumber = 1
    if encoding.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    _set_pixels(ds, image, encoding)
    return ds


def _set_pixels(ds: Dataset, image: Radiograph, encoding: _DicomEncoding) -> None:
    pixels = _stored_pixels(image.values, encoding)
    ds.Rows, ds.Columns = pixels.shape
    spacing = round(image.pixel_spacing_mm, PIXEL_SPACING_DECIMALS)
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = encoding.photometric
    ds.BitsAllocated = BITS_ALLOCATED
    ds.BitsStored = encoding.bits_stored
    ds.HighBit = encoding.bits_stored - 1
    ds.PixelRepresentation = 0
    slope, intercept = 1.0, 0.0
    if "rescale" in encoding.voi:
        slope, intercept = encoding.slope, encoding.intercept
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.RescaleType = "US"
    if "window" in encoding.voi:
        low, high = (value * slope + intercept for value in encoding.window)
        ds.WindowWidth = high - low + 1
        ds.WindowCenter = (low + high) / 2 + 0.5
    ds.PixelData = pixels.tobytes()


def compress(ds: Dataset, transfer: str, bits_stored: int) -> None:
    """Re-encode the uncompressed 16-bit grey pixels of ``ds`` in place in ``transfer`` (one of :data:`TRANSFERS`)."""
    if transfer == "jpeg2000":
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    elif transfer == "rle":
        ds.compress(RLELossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)  # = pydicom's bytes, 10x faster
    elif transfer == "jpeg-ls":
        ds.compress(JPEGLSLossless, encoding_plugin="pyjpegls", generate_instance_uid=False)
    elif transfer == "jpeg-lossless":
        pixels = np.frombuffer(ds.PixelData, "<u2").reshape(ds.Rows, ds.Columns)
        ds.PixelData = encapsulate([encode_lossless_jpeg(pixels, bits_stored)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    elif transfer in ("implicit", "deflated"):
        ds.file_meta.TransferSyntaxUID = {"implicit": ImplicitVRLittleEndian,
                                          "deflated": DeflatedExplicitVRLittleEndian}[transfer]
