"""Pixel decoding of chest radiographs (DICOM, JPEG, PNG) and the per-image preprocessing transform.

``load_image`` is the one entry point the preprocessing pass needs: it picks the decoder by file
content (falling back to the extension), decodes to grayscale, cuts ``BORDER_CROP`` of the width
and of the height away on each side and resizes the rest to ``size × size`` uint8.

Privacy: DICOM files are read with only the technical image tags (geometry, bit depth, LUTs,
window, pixel data), so patient fields are never parsed, and error messages name only technical
facts (transfer syntax, samples per pixel, byte counts, ...). Colour-encoded images (RGB, YBR
secondary captures) are read as their luminance.

pydicom's warnings are silenced per call with ``warnings.catch_warnings``, which is process-wide:
run parallel decoding in processes rather than threads.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pydicom.pixels
from PIL import Image, UnidentifiedImageError
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from .codecs import decoding_plugin

BORDER_CROP = 0.10
"""Fraction of the width (and of the height) cut away on each side."""
DEFAULT_SIZE = 256
RESAMPLE_FILTER = Image.Resampling.LANCZOS
"""Antialiased filter for the final downscale (Pillow widens its support with the scale factor)."""

UINT8_MAX = 255
UINT16_MAX = 65535
GREY_PER_UINT16 = UINT16_MAX / UINT8_MAX
"""257: one 8-bit grey level in 16-bit units (full-range 16-bit scales to full-range 8-bit)."""
MAX_REASON_CHARS = 200
ROUNDING_DIGITS = 6
"""Decimals kept before floor/ceil, so that 0.1 * 30 = 3.0000000000000004 does not round up."""

DICOM_MAGIC_OFFSET = 128
DICOM_MAGIC = b"DICM"
JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_END_MARKER = b"\xff\xd9"
PNG_END_CHUNK = b"IEND"
END_MARKERS = {"JPEG": JPEG_END_MARKER, "MPO": JPEG_END_MARKER, "PNG": PNG_END_CHUNK}
END_MARKER_SEARCH_BYTES = 64
"""How many trailing bytes may follow the end-of-image marker (padding) before we call it truncated."""

DICOM_SUFFIXES = {".dcm", ".dicom"}
PICTURE_SUFFIXES = {".jpg", ".jpeg", ".png"}

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
INVERTED_MONOCHROME = "MONOCHROME1"
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
"""Colour encodings read as grey (decoded to RGB by pydicom, then luminance)."""
COLOUR_SAMPLES = 3
LUMINANCE_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)
"""ITU-R BT.601 luma of R, G, B (what Pillow's convert("L") uses)."""
SIGMOID_SLOPE = 4.0
"""DICOM PS3.3 C.11.2.1.3: y = 1 / (1 + exp(-4 (x - c) / w))."""

DICOM_TAGS = [
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PlanarConfiguration",
    "RescaleSlope",
    "RescaleIntercept",
    "ModalityLUTSequence",
    "VOILUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "PixelData",
]
"""The only tags read from a DICOM file: everything the pixels need, nothing about the patient."""

ValueRange = tuple[float, float]


class DecodeError(Exception):
    """A file that cannot be turned into a grayscale image; str(e) is a one-line reason."""


def load_image(path: str | Path, size: int = DEFAULT_SIZE, reduced_decode: bool = True) -> np.ndarray:
    """Decode, border-crop and resize one radiograph to a ``uint8 [size, size]`` array.

    The decoder is chosen by content (DICOM, JPEG or PNG signature), else by extension.
    ``reduced_decode`` lets the decoder deliver a smaller image (JPEG DCT scaling, DICOM area
    averaging by an integer factor) that is still at least ``size`` pixels wide and high after the
    crop; ``False`` decodes at full resolution first. Raises ``DecodeError`` with the reason.
    """
    if size < 1:
        raise ValueError(f"size must be positive, not {size}")
    path = Path(path)
    min_size = min_decoded_size(size) if reduced_decode else None
    if _detect_format(path) == "dicom":
        unit = np.asarray(_crop_and_resize(Image.fromarray(decode_dicom(path, min_size)), size))
        return np.rint(np.clip(unit, 0.0, 1.0) * UINT8_MAX).astype(np.uint8)
    return np.asarray(_crop_and_resize(decode_jpeg(path, min_size), size), dtype=np.uint8)


def read_image(path: str | Path, size: int = DEFAULT_SIZE) -> tuple[np.ndarray | None, str]:
    """``(load_image(path, size), "")``, or ``(None, reason)``: a failure as a one-line reason, never raised.

    For long jobs and batches of user files, which skip what they cannot read and say why.
    """
    try:
        return load_image(path, size), ""
    except DecodeError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - whatever breaks one file must not stop the others
        return None, f"unexpected {type(exc).__name__}: {_one_line(exc)}"


def min_decoded_size(size: int) -> int:
    """Smallest side a decoded image may have so that its border-cropped centre still covers ``size``."""
    kept_fraction = 1.0 - 2.0 * BORDER_CROP
    return math.ceil(round(size / kept_fraction, ROUNDING_DIGITS))


def crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) pixel box kept by the border crop (whole pixels, rounded down).

    Rounding the cut down keeps at least ``1 - 2 * BORDER_CROP`` of each side.
    """
    left, top = (math.floor(round(BORDER_CROP * side, ROUNDING_DIGITS)) for side in (width, height))
    return left, top, width - left, height - top


def _crop_and_resize(image: Image.Image, size: int) -> Image.Image:
    """Crop first, so that the resampling filter never reaches into the discarded border."""
    return image.crop(crop_box(*image.size)).resize((size, size), RESAMPLE_FILTER)


def _detect_format(path: Path) -> str:
    """``"dicom"`` or ``"picture"`` (JPEG/PNG), by signature first, then by extension."""
    head = _read_head(path)
    if head[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)] == DICOM_MAGIC:
        return "dicom"
    if head.startswith((JPEG_MAGIC, PNG_MAGIC)):
        return "picture"
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return "dicom"
    if suffix in PICTURE_SUFFIXES:
        return "picture"
    if not head:
        raise DecodeError("empty file (0 bytes)")
    raise DecodeError(f"unrecognised file type (not DICOM, JPEG or PNG): suffix {suffix or 'none'!r}")


def _read_head(path: Path) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read(DICOM_MAGIC_OFFSET + len(DICOM_MAGIC))
    except FileNotFoundError:
        raise DecodeError("file not found") from None
    except OSError as error:
        raise DecodeError(f"cannot read file: {error.strerror or type(error).__name__}") from None


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:MAX_REASON_CHARS]


# ----------------------------------------------------------------------------------------- DICOM


def decode_dicom(path: str | Path, min_size: int | None = None) -> np.ndarray:
    """Decode a single-frame grayscale DICOM to ``float32 [H, W]`` in [0, 1], bone bright.

    A colour-encoded one (RGB, YBR) becomes its luminance, scaled by its stored range. Compressed
    syntaxes go through the pydicom plugin :func:`codecs.decoding_plugin` picks.

    Applies the modality LUT (sequence or rescale slope/intercept), then the VOI LUT sequence
    (preferred) or the first window centre/width, and scales by the real output range: the
    window's output range, the VOI LUT's entry range, or, without VOI, the stored-value range of
    ``BitsStored``/``PixelRepresentation`` passed through the modality LUT. MONOCHROME1 is
    inverted. With ``min_size`` the image may come back area-averaged by an integer factor, each
    side still ``>= min_size``. Raises ``DecodeError`` with a one-line technical reason.
    """
    try:
        return _decode_dicom(Path(path), min_size)
    except DecodeError:
        raise
    except Exception as error:  # malformed technical attributes: pydicom or numpy give the detail
        raise DecodeError(f"invalid DICOM image attributes: {_one_line(error)}") from None


def _decode_dicom(path: Path, min_size: int | None) -> np.ndarray:
    with quiet_pydicom() as caught:
        dataset = _read_dataset(path)
        photometric = _check_supported(dataset, ended_early=_hit_end_of_file(caught))
        raw = _decode_pixels(dataset)
        unit = _colour_to_unit_range(raw, dataset) if photometric in COLOUR else _to_unit_range(raw, dataset)
    if photometric == INVERTED_MONOCHROME:
        np.subtract(np.float32(1.0), unit, out=unit)
    if min_size is not None:
        unit = _area_reduce(unit, min_size)
    return unit


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[list[warnings.WarningMessage]]:
    """Record pydicom's warnings instead of printing them, and mute its warning logs.

    pydicom warns (and logs) for harmless quirks of normal files; the recorded warnings are
    still used to tell a truncated file from one that never had pixel data.
    """
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        logger.setLevel(level)


def _hit_end_of_file(caught: list[warnings.WarningMessage]) -> bool:
    return any("end of file" in str(warning.message).lower() for warning in caught)


def _read_dataset(path: Path) -> Dataset:
    if _file_size(path) == 0:
        raise DecodeError("empty file (0 bytes)")
    try:
        return pydicom.dcmread(path, specific_tags=DICOM_TAGS)
    except InvalidDicomError:
        return _read_without_preamble(path)
    except Exception as error:
        raise DecodeError(f"unreadable DICOM: {_one_line(error)}") from None


def _read_without_preamble(path: Path) -> Dataset:
    """Old files lack the 128-byte preamble; accept them only when they parse to an image."""
    try:
        dataset = pydicom.dcmread(path, specific_tags=DICOM_TAGS, force=True)
        if "PixelData" in dataset and "Rows" in dataset:
            return dataset
    except Exception:
        pass
    raise DecodeError("not a DICOM file")


def _file_size(path: Path) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        raise DecodeError("file not found") from None
    except OSError as error:
        raise DecodeError(f"cannot read file: {error.strerror or type(error).__name__}") from None


def _check_supported(dataset: Dataset, ended_early: bool) -> str:
    """Refuse what is not a single grey or RGB / YBR frame; return the photometric interpretation."""
    if "PixelData" not in dataset:
        raise DecodeError("truncated file (ended inside the pixel data)" if ended_early else "no pixel data")
    samples = dataset.get("SamplesPerPixel") or 1
    photometric = str(dataset.get("PhotometricInterpretation", "")).strip()
    if samples == COLOUR_SAMPLES and photometric not in COLOUR:
        raise DecodeError(f"unsupported colour encoding {photometric[:16]!r} (need RGB or YBR)")
    if samples not in (1, COLOUR_SAMPLES):
        raise DecodeError(f"unsupported samples per pixel (SamplesPerPixel={samples})")
    if samples == 1 and photometric not in MONOCHROME:
        raise DecodeError(f"unsupported photometric interpretation {photometric[:16]!r} (need MONOCHROME1/2)")
    frames = int(dataset.get("NumberOfFrames") or 1)
    if frames != 1:
        raise DecodeError(f"multi-frame image (NumberOfFrames={frames})")
    return photometric


def _decode_pixels(dataset: Dataset) -> np.ndarray:
    syntax = _transfer_syntax(dataset)
    try:
        decoder = pydicom.pixels.get_decoder(syntax)
    except NotImplementedError:
        raise DecodeError(f"unsupported transfer syntax {syntax}") from None
    if not decoder.is_available:
        raise DecodeError(f"no pixel decoder installed for transfer syntax {syntax.name} ({syntax})")
    if not syntax.is_compressed:
        _check_native_length(dataset)
    bits = int(dataset.get("BitsStored") or 0)
    plugin = decoding_plugin(syntax, bits, decoder.available_plugins)
    if plugin is None:
        raise DecodeError(f"no safe pixel decoder installed for {syntax.name} with BitsStored={bits}")
    try:
        pixels = pydicom.pixels.pixel_array(dataset, decoding_plugin=plugin)
    except Exception as error:
        raise DecodeError(f"cannot decode pixel data ({syntax.name}): {_one_line(error)}") from None
    if pixels.ndim != 2 and pixels.shape[2:] != (COLOUR_SAMPLES,):
        raise DecodeError(f"unexpected pixel array shape {pixels.shape}")
    return pixels


def _transfer_syntax(dataset: Dataset) -> UID:
    """The file meta's transfer syntax; for files without meta, the native encoding pydicom parsed."""
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    if syntax is not None:
        return syntax
    implicit, little = dataset.original_encoding
    if little is False:
        syntax = ExplicitVRBigEndian
    elif implicit is False:
        syntax = ExplicitVRLittleEndian
    else:
        syntax = ImplicitVRLittleEndian
    dataset.file_meta.TransferSyntaxUID = syntax
    return syntax


def _check_native_length(dataset: Dataset) -> None:
    try:
        bits = int(dataset.BitsAllocated)
        expected = int(dataset.Rows) * int(dataset.Columns) * bits // 8  # a lower bound: colour holds more
    except (AttributeError, TypeError, ValueError):
        raise DecodeError("missing or invalid Rows/Columns/BitsAllocated") from None
    actual = len(dataset.PixelData)
    if actual < expected:
        raise DecodeError(f"truncated pixel data: {actual} of {expected} bytes")


def _to_unit_range(raw: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Modality LUT, then VOI; rescale the result to [0, 1] by its output range and clip."""
    values, value_range = _apply_modality_lut(raw, dataset)
    windowed = _apply_voi(values, dataset)
    if windowed is not None:
        return windowed
    return _rescale_to_unit(values, value_range)


def _colour_to_unit_range(rgb: np.ndarray, dataset: Dataset) -> np.ndarray:
    """Luminance of RGB samples scaled by their stored range to [0, 1] (no modality LUT or VOI for colour)."""
    luminance = rgb.astype(np.float32) @ LUMINANCE_WEIGHTS
    return _rescale_to_unit(luminance, _stored_value_range(dataset))


def _stored_value_range(dataset: Dataset) -> ValueRange:
    """Range of values representable with BitsStored, signed when PixelRepresentation is 1."""
    bits = int(dataset.get("BitsStored") or dataset.BitsAllocated)
    if int(dataset.get("PixelRepresentation", 0)) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0**bits - 1


def _apply_modality_lut(raw: np.ndarray, dataset: Dataset) -> tuple[np.ndarray, ValueRange]:
    """Modality values (float32) and their range: the LUT's entry range or the rescaled stored range."""
    if dataset.get("ModalityLUTSequence"):
        return _apply_lut(raw, dataset.ModalityLUTSequence[0], dataset)
    slope = float(dataset.get("RescaleSlope") or 1.0)
    intercept = float(dataset.get("RescaleIntercept") or 0.0)
    values = raw.astype(np.float32)
    if slope != 1.0 or intercept != 0.0:
        values *= np.float32(slope)
        values += np.float32(intercept)
    low, high = sorted(bound * slope + intercept for bound in _stored_value_range(dataset))
    return values, (low, high)


def _apply_voi(values: np.ndarray, dataset: Dataset) -> np.ndarray | None:
    """The VOI LUT sequence or window applied and scaled to [0, 1]; ``None`` when there is no VOI."""
    if dataset.get("VOILUTSequence"):
        looked_up, lut_range = _apply_lut(values, dataset.VOILUTSequence[0], dataset)
        return _rescale_to_unit(looked_up, lut_range)
    window = _first_window(dataset)
    if window is None:
        return None
    center, width = window
    function = str(dataset.get("VOILUTFunction") or "LINEAR").strip().upper()
    return _apply_window(values, center, width, function)


def _first_window(dataset: Dataset) -> tuple[float, float] | None:
    center, width = dataset.get("WindowCenter"), dataset.get("WindowWidth")
    if center is None or width is None:
        return None
    center, width = _first_value(center), _first_value(width)
    if center is None or width is None or not math.isfinite(center) or not width > 0:
        return None
    return center, width


def _first_value(element_value: object) -> float | None:
    if isinstance(element_value, (list, tuple, MultiValue)):
        element_value = element_value[0] if len(element_value) else None
    try:
        return float(element_value)
    except (TypeError, ValueError):
        return None


def _apply_window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing with the output range mapped to [0, 1]."""
    if function == "SIGMOID":
        exponent = np.clip(-SIGMOID_SLOPE * (values - np.float32(center)) / np.float32(width), -80, 80)
        return (1.0 / (1.0 + np.exp(exponent))).astype(np.float32)
    if function == "LINEAR_EXACT":
        return _rescale_to_unit(values, (center - width / 2, center + width / 2))
    if width <= 1:
        return (values > center - 0.5).astype(np.float32)
    return _rescale_to_unit(values, (center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2))


def _apply_lut(values: np.ndarray, item: Dataset, dataset: Dataset) -> tuple[np.ndarray, ValueRange]:
    """Look values up in a modality or VOI LUT item; return the result and the LUT's output range."""
    entries, first_mapped, bits = (int(number) for number in item.LUTDescriptor)
    entries = entries or UINT16_MAX + 1
    table = _lut_table(item, entries, bits, dataset).astype(np.float32)
    whole = values if np.issubdtype(values.dtype, np.integer) else np.rint(values)
    index = np.clip(whole.astype(np.int64) - first_mapped, 0, len(table) - 1)
    return table[index], (float(table.min()), float(table.max()))


def _lut_table(item: Dataset, entries: int, bits: int, dataset: Dataset) -> np.ndarray:
    data = item.LUTData
    if isinstance(data, (bytes, bytearray)):
        little = dataset.original_encoding[1] is not False
        dtype = np.dtype(np.uint8) if bits <= 8 and len(data) == entries else np.dtype(np.uint16)
        table = np.frombuffer(data, dtype=dtype.newbyteorder("<" if little else ">"))
    else:
        table = np.atleast_1d(np.asarray(data, dtype=np.float64))
    if table.size == 0:
        raise DecodeError("empty LUT data")
    return table[:entries]


def _rescale_to_unit(values: np.ndarray, value_range: ValueRange) -> np.ndarray:
    """Map ``value_range`` linearly onto [0, 1] and clip (a new float32 array)."""
    low, high = value_range
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    unit = np.subtract(values, np.float32(low), dtype=np.float32)
    unit *= np.float32(1.0 / (high - low))
    return np.clip(unit, 0.0, 1.0, out=unit)


def _area_reduce(image: np.ndarray, min_size: int) -> np.ndarray:
    """Average ``factor × factor`` blocks, with the largest factor that keeps both sides ``>= min_size``."""
    height, width = image.shape
    factor = min(height, width) // max(min_size, 1)
    if factor < 2:
        return image
    height, width = height // factor, width // factor
    rows = image[: height * factor, : width * factor].reshape(height, factor, width * factor).sum(axis=1)
    blocks = rows.reshape(height, width, factor).sum(axis=2)
    blocks *= np.float32(1.0 / factor**2)
    return blocks


# ------------------------------------------------------------------------------------- JPEG / PNG


def decode_jpeg(path: str | Path, min_size: int | None = None) -> Image.Image:
    """Decode a JPEG or PNG to a fully loaded 8-bit grayscale Pillow image (mode ``"L"``).

    With ``min_size`` a JPEG is decoded at the smallest DCT scale (1/2, 1/4 or 1/8) whose sides
    are still ``>= min_size``; a PNG is always decoded whole. Colour is converted to luma; 16-bit
    images are scaled by 255/65535.
    Truncated or corrupt files raise ``DecodeError`` whatever Pillow's ``LOAD_TRUNCATED_IMAGES``.
    """
    path = Path(path)
    image = _open_picture(path)
    with image:
        _check_complete(path, image.format)
        if min_size is not None:
            image.draft("L", (min_size, min_size))
        try:
            image.load()
        except Exception as error:
            raise DecodeError(f"truncated or corrupt image data: {_one_line(error)}") from None
        return _to_grey(image)


def _open_picture(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise DecodeError("file not found") from None
    except UnidentifiedImageError:
        reason = "empty file (0 bytes)" if _file_size(path) == 0 else "not a JPEG/PNG image"
        raise DecodeError(reason) from None
    except Exception as error:
        raise DecodeError(f"cannot open image: {_one_line(error)}") from None


def _check_complete(path: Path, image_format: str | None) -> None:
    """Truncated files lose their end marker; Pillow may be configured to accept them silently."""
    end_marker = END_MARKERS.get(image_format or "")
    if end_marker is None:
        raise DecodeError(f"unsupported image format {image_format} (need JPEG or PNG)")
    with open(path, "rb") as file:
        file.seek(0, os.SEEK_END)
        file.seek(max(0, file.tell() - END_MARKER_SEARCH_BYTES))
        tail = file.read()
    if end_marker not in tail:
        raise DecodeError(f"truncated {image_format} file (no end-of-image marker)")


def _to_grey(image: Image.Image) -> Image.Image:
    if image.mode == "L":
        return image.copy()
    if image.mode.startswith("I"):  # 16-bit grayscale PNG ("I;16", or "I" in older Pillow)
        deep = np.asarray(image).astype(np.float32)
        grey = np.clip(np.rint(deep / GREY_PER_UINT16), 0, UINT8_MAX).astype(np.uint8)
        return Image.fromarray(grey)
    if image.mode == "F":
        raise DecodeError("unsupported floating-point image mode F")
    return image.convert("L")
