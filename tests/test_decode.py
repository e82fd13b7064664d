"""Pixel decoding and the per-image preprocessing transform (raddiffusion.data.decode)."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pydicom.pixels
import pytest
from PIL import Image, ImageFile
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

from raddiffusion.data import decode
from raddiffusion.data.decode import (
    BORDER_CROP,
    DecodeError,
    crop_box,
    decode_dicom,
    decode_jpeg,
    load_image,
    min_decoded_size,
)

from conftest import SHARED

REAL_CXR = SHARED / "data" / "real-cxr"  # SHARED: ../shared, or $RADDIFFUSION_SHARED (conftest)
SECRET_NAME = "Secretperson^Jane"
SECRET_ID = "MRN-98765-SECRET"
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
LUT_DATA = 0x00283006
SIZES = (256, 512)
MIN_CONTRAST = 25  # grey levels between the mediastinum strip and the lung fields
MIN_SPREAD = 80  # grey levels between the 1st and 99th percentile of a real radiograph


# --------------------------------------------------------------------------------------- helpers


def real_files(pattern: str) -> list[Path]:
    if not REAL_CXR.is_dir():
        pytest.skip("shared/ reference data is absent")
    files = sorted(REAL_CXR.glob(pattern))
    assert files, f"no files matching {pattern} under {REAL_CXR}"
    return files


def upper_lungs_and_below_diaphragm(image: np.ndarray) -> tuple[float, float]:
    """Mean grey of the lateral thirds in the upper-middle rows and in the bottom rows."""
    size = image.shape[0]
    lateral = np.r_[int(0.10 * size) : int(0.33 * size), int(0.67 * size) : int(0.90 * size)]
    upper = image[int(0.25 * size) : int(0.5 * size)][:, lateral].mean()
    bottom = image[int(0.85 * size) :][:, lateral].mean()
    return float(upper), float(bottom)


def mediastinum_and_lungs(image: np.ndarray) -> tuple[float, float, float]:
    """Mean grey of the central vertical strip and of the left/right lung thirds, middle rows."""
    size = image.shape[0]
    rows = slice(int(0.3 * size), int(0.7 * size))
    centre = image[rows, int(0.45 * size) : int(0.55 * size)].mean()
    left = image[rows, int(0.10 * size) : int(0.33 * size)].mean()
    right = image[rows, int(0.67 * size) : int(0.90 * size)].mean()
    return float(centre), float(left), float(right)


def make_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    window: tuple[object, object] | None = None,
    voi_function: str | None = None,
    rescale: tuple[float, float] | None = None,
    compression: str | None = None,
    with_pixels: bool = True,
) -> Path:
    """Write a small CR DICOM with a patient name/ID that must never come out of the decoder."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CR_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SOPClassUID = CR_STORAGE
    ds.PatientName = SECRET_NAME
    ds.PatientID = SECRET_ID
    ds.StudyDate = "20990101"
    ds.Modality = "CR"
    if with_pixels:
        ds.set_pixel_data(pixels, photometric, bits_stored)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_function is not None:
        ds.VOILUTFunction = voi_function
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if compression is not None:
        ds.compress(compression)
    ds.save_as(path, enforce_file_format=True)
    return path


def smooth_radiograph(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth chest-like content with mild noise, uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y, x = y / height, x / width
    body = 0.45 + 0.25 * np.cos(3 * (x - 0.5)) * np.exp(-((y - 0.6) ** 2) / 0.3)
    ribs = 0.12 * np.sin(40 * y) * ((x > 0.2) & (x < 0.8))
    noisy = (body + ribs) * 255 + 2 * rng.standard_normal((height, width))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def content12(shape: tuple[int, int] = (40, 50), seed: int = 1) -> np.ndarray:
    """12-bit content covering 0 and 4095."""
    values = np.random.default_rng(seed).integers(0, 4096, shape, dtype=np.uint16)
    values.flat[0], values.flat[1] = 0, 4095
    return values


def assert_decode_error(path: Path, *words: str) -> DecodeError:
    with pytest.raises(DecodeError) as caught:
        load_image(path)
    reason = str(caught.value)
    assert "\n" not in reason
    assert any(word in reason.lower() for word in words), reason
    assert "Secretperson" not in reason and SECRET_ID not in reason and "2099" not in reason
    return caught.value


# --------------------------------------------------------------------------------- real images


@pytest.mark.parametrize("size", SIZES)
def test_real_dicom_is_upright_not_inverted_and_uses_the_grey_range(size: int) -> None:
    (path,) = real_files("mimic-cxr-dicom/files/**/*.dcm")
    image = load_image(path, size)
    assert image.dtype == np.uint8 and image.shape == (size, size)
    centre, left, right = mediastinum_and_lungs(image)
    assert centre > left + MIN_CONTRAST and centre > right + MIN_CONTRAST
    upper_lungs, below_diaphragm = upper_lungs_and_below_diaphragm(image)
    assert below_diaphragm > upper_lungs + MIN_CONTRAST  # upright: abdomen at the bottom
    low, high = np.percentile(image, [1, 99])
    assert high - low > MIN_SPREAD
    assert np.mean((image == 0) | (image == 255)) < 0.01


def test_real_jpeg2000_dicom_goes_through_the_pylibjpeg_plugin(monkeypatch) -> None:
    (path,) = real_files("mimic-cxr-dicom/files/**/*.dcm")
    plugins: list[str] = []
    original = pydicom.pixels.pixel_array

    def spy(*args, **kwargs):
        plugins.append(kwargs.get("decoding_plugin", ""))
        return original(*args, **kwargs)

    monkeypatch.setattr(pydicom.pixels, "pixel_array", spy)
    decode_dicom(path)
    assert plugins == ["pylibjpeg"]


def test_real_dicom_decodes_without_warnings_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    (path,) = real_files("mimic-cxr-dicom/files/**/*.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.DEBUG):
            unit = decode_dicom(path)
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert unit.dtype == np.float32 and unit.shape == (1955, 1841)
    assert 0.0 <= unit.min() and unit.max() <= 1.0


@pytest.mark.parametrize("size", SIZES)
def test_real_jpgs_show_a_bright_mediastinum_between_dark_lungs(size: int) -> None:
    paths = real_files("mimic-cxr-jpg/files/**/*.jpg")
    assert len(paths) == 5
    for path in paths:
        image = load_image(path, size)
        assert image.dtype == np.uint8 and image.shape == (size, size)
        centre, left, right = mediastinum_and_lungs(image)
        assert centre > left + MIN_CONTRAST and centre > right + MIN_CONTRAST, path.name


# ---------------------------------------------------------------------------- synthetic DICOM


def test_monochrome1_is_inverted_to_match_monochrome2(tmp_path: Path) -> None:
    content = content12()
    mono2 = decode_dicom(make_dicom(tmp_path / "m2.dcm", content))
    mono1 = decode_dicom(make_dicom(tmp_path / "m1.dcm", 4095 - content, photometric="MONOCHROME1"))
    np.testing.assert_allclose(mono1, mono2, atol=1e-6)
    np.testing.assert_allclose(mono2, content / 4095, atol=1e-6)


def test_scaling_follows_bits_stored_not_an_assumed_depth(tmp_path: Path) -> None:
    twelve = content12()
    sixteen = (twelve << 4) | (twelve >> 8)  # the same picture at full 16-bit depth
    unit12 = decode_dicom(make_dicom(tmp_path / "b12.dcm", twelve, bits_stored=12))
    unit16 = decode_dicom(make_dicom(tmp_path / "b16.dcm", sixteen, bits_stored=16))
    assert unit12.max() == pytest.approx(1.0) and unit16.max() == pytest.approx(1.0)
    np.testing.assert_allclose(unit12, unit16, atol=1 / 4095)
    small12 = load_image(tmp_path / "b12.dcm", 32)
    small16 = load_image(tmp_path / "b16.dcm", 32)
    assert np.abs(small12.astype(int) - small16).max() <= 1


def test_signed_pixels_scale_by_the_signed_range(tmp_path: Path) -> None:
    content = content12().astype(np.int16) - 2048
    unit = decode_dicom(make_dicom(tmp_path / "signed.dcm", content, bits_stored=12))
    np.testing.assert_allclose(unit, (content + 2048) / 4095, atol=1e-6)


@pytest.mark.parametrize(
    ("function", "expected"),
    [
        (None, lambda x, c, w: np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1)),
        ("LINEAR_EXACT", lambda x, c, w: np.clip((x - c) / w + 0.5, 0, 1)),
        ("SIGMOID", lambda x, c, w: 1 / (1 + np.exp(-4 * (x - c) / w))),
    ],
)
def test_window_center_width_is_applied(tmp_path: Path, function, expected) -> None:
    content = content12()
    center, width = 2000.0, 1001.0
    path = make_dicom(tmp_path / "w.dcm", content, window=(center, width), voi_function=function)
    unit = decode_dicom(path)
    np.testing.assert_allclose(unit, expected(content.astype(np.float64), center, width), atol=1e-5)


def test_first_window_of_several_is_used(tmp_path: Path) -> None:
    content = content12()
    single = decode_dicom(make_dicom(tmp_path / "one.dcm", content, window=(2000, 1001)))
    several = decode_dicom(make_dicom(tmp_path / "two.dcm", content, window=([2000, 300], [1001, 50])))
    np.testing.assert_array_equal(single, several)


def test_rescale_slope_intercept_is_applied_before_the_window(tmp_path: Path) -> None:
    content = content12()
    slope, intercept, center, width = 2.0, -1000.0, 1000.0, 2001.0
    path = make_dicom(tmp_path / "r.dcm", content, rescale=(slope, intercept), window=(center, width))
    modality = content * slope + intercept
    expected = np.clip((modality - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(decode_dicom(path), expected, atol=1e-5)


def test_rescale_range_is_transformed_too(tmp_path: Path) -> None:
    content = content12()
    plain = decode_dicom(make_dicom(tmp_path / "p.dcm", content))
    negative = decode_dicom(make_dicom(tmp_path / "n.dcm", content, rescale=(-1.0, 100.0)))
    np.testing.assert_allclose(negative, 1.0 - plain, atol=1e-6)


def test_voi_lut_sequence_is_applied_and_scaled_by_its_range(tmp_path: Path) -> None:
    content = content12()
    table = (np.sqrt(np.arange(4096) / 4095) * 1000).astype(np.uint16) + 100
    path = make_dicom(tmp_path / "lut.dcm", content)
    ds = _reopen(path)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(LUT_DATA, "US", table.tolist())
    ds.VOILUTSequence = [item]
    ds.save_as(path, enforce_file_format=True)
    expected = (table[content].astype(np.float64) - 100) / 1000
    np.testing.assert_allclose(decode_dicom(path), expected, atol=1e-6)


def test_modality_lut_sequence_is_applied(tmp_path: Path) -> None:
    content = content12()
    path = make_dicom(tmp_path / "mlut.dcm", content)
    ds = _reopen(path)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(LUT_DATA, "OW", (4095 - np.arange(4096)).astype("<u2").tobytes())
    ds.ModalityLUTSequence = [item]
    ds.save_as(path, enforce_file_format=True)
    np.testing.assert_allclose(decode_dicom(path), 1 - content / 4095, atol=1e-6)


def _reopen(path: Path) -> Dataset:
    return pydicom.dcmread(path)


@pytest.mark.parametrize(
    ("compression", "bits_stored", "photometric"),
    [
        (RLELossless, 12, "MONOCHROME2"),
        (JPEG2000Lossless, 12, "MONOCHROME2"),
        (JPEG2000Lossless, 16, "MONOCHROME1"),
    ],
)
def test_lossless_compressed_decodes_like_uncompressed(
    tmp_path: Path, compression: str, bits_stored: int, photometric: str
) -> None:
    content = content12() if bits_stored == 12 else content12() * 16 + 7
    options = {"bits_stored": bits_stored, "photometric": photometric, "window": (1800, 3000)}
    plain = make_dicom(tmp_path / "plain.dcm", content, **options)
    packed = make_dicom(tmp_path / "packed.dcm", content, compression=compression, **options)
    assert _reopen(packed).file_meta.TransferSyntaxUID == compression
    np.testing.assert_array_equal(decode_dicom(packed), decode_dicom(plain))


def test_dicom_without_preamble_or_file_meta_still_decodes(tmp_path: Path) -> None:
    content = content12()
    path = make_dicom(tmp_path / "with_meta.dcm", content)
    ds = _reopen(path)
    ds.file_meta = FileMetaDataset()
    ds.preamble = None
    bare = tmp_path / "bare.dcm"
    ds.save_as(bare, implicit_vr=True, little_endian=True)
    assert bare.read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(decode_dicom(bare), decode_dicom(path))


def test_min_size_area_reduces_by_an_integer_factor(tmp_path: Path) -> None:
    content = np.kron(np.arange(12, dtype=np.uint16).reshape(3, 4) * 300, np.ones((40, 40), np.uint16))
    path = make_dicom(tmp_path / "blocks.dcm", content)
    reduced = decode_dicom(path, min_size=30)
    assert reduced.shape == (30, 40)  # factor 4: both sides stay >= 30
    np.testing.assert_allclose(reduced, np.kron(content[::40, ::40] / 4095, np.ones((10, 10))), atol=1e-6)


# ---------------------------------------------------------------------------------- JPEG / PNG


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    grey = np.tile(np.arange(256, dtype=np.uint16), (8, 1))
    path = tmp_path / "deep.png"
    Image.fromarray(grey * 257).save(path)
    assert Image.open(path).mode.startswith("I")
    decoded = decode_jpeg(path)
    assert decoded.mode == "L"
    np.testing.assert_array_equal(np.asarray(decoded), grey)


def test_colour_jpeg_becomes_grey(tmp_path: Path) -> None:
    grey = smooth_radiograph(200, 160)
    path = tmp_path / "colour.jpg"
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(path, quality=95)
    full, reduced = decode_jpeg(path), decode_jpeg(path, min_size=40)
    assert full.mode == reduced.mode == "L" and reduced.size == (40, 50)
    assert np.abs(np.asarray(full, dtype=int) - grey).mean() < 2


def test_reduced_jpeg_decoding_is_used_and_matches_the_full_decode(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "large.jpg"
    Image.fromarray(smooth_radiograph(2400, 2000)).save(path, quality=95)
    decoded_sizes: list[tuple[int, int]] = []

    def spy(*args, **kwargs):
        image = decode_jpeg(*args, **kwargs)
        decoded_sizes.append(image.size)
        return image

    monkeypatch.setattr(decode, "decode_jpeg", spy)
    reduced = load_image(path, 256)
    full = load_image(path, 256, reduced_decode=False)
    assert decoded_sizes == [(500, 600), (2000, 2400)]  # DCT scale 1/4, then full resolution
    assert np.abs(reduced.astype(int) - full).mean() < 3


def test_min_decoded_size_keeps_the_cropped_centre_at_least_the_target() -> None:
    for size in range(1, 1100):
        smallest = min_decoded_size(size)
        assert smallest * (1 - 2 * BORDER_CROP) < size + 1
        for side in range(smallest, smallest + 12):
            left, top, right, bottom = crop_box(side, side)
            assert right - left >= size and bottom - top >= size


def write_framed(tmp_path: Path, picture: np.ndarray, kind: str) -> Path:
    """Save an 8-bit picture as PNG, or as 16-bit DICOM with the same greys (v * 257)."""
    if kind == "png":
        path = tmp_path / "framed.png"
        Image.fromarray(picture.astype(np.uint8)).save(path)
        return path
    return make_dicom(tmp_path / "framed.dcm", picture.astype(np.uint16) * 257, bits_stored=16)


@pytest.mark.parametrize("kind", ["png", "dicom"])
def test_border_frame_of_ten_percent_is_cropped_away(tmp_path: Path, kind: str) -> None:
    height, width = 400, 320
    frame_y, frame_x = int(height * BORDER_CROP), int(width * BORDER_CROP)
    inside_grey = 60
    picture = np.full((height, width), 255, dtype=np.uint8)
    picture[frame_y:-frame_y, frame_x:-frame_x] = inside_grey
    shrunk = load_image(write_framed(tmp_path, picture, kind), 64)
    assert (shrunk == inside_grey).all()  # not a trace of the frame, not even in the edge pixels


@pytest.mark.parametrize("kind", ["png", "dicom"])
def test_crop_keeps_the_content_next_to_the_frame(tmp_path: Path, kind: str) -> None:
    side, frame = 320, 32
    picture = np.full((side, side), 255, dtype=np.uint8)
    inside = np.random.default_rng(4).integers(0, 200, (side - 2 * frame, side - 2 * frame)).astype(np.uint8)
    picture[frame:-frame, frame:-frame] = inside
    kept = load_image(write_framed(tmp_path, picture, kind), side - 2 * frame)
    np.testing.assert_array_equal(kept, inside)


# --------------------------------------------------------------------------------------- errors


def test_zero_byte_dicom(tmp_path: Path) -> None:
    path = tmp_path / "empty.dcm"
    path.write_bytes(b"")
    assert_decode_error(path, "empty")


def test_text_file_named_dcm(tmp_path: Path) -> None:
    path = tmp_path / "notes.dcm"
    path.write_text(f"Patient {SECRET_NAME} was seen today.\n" * 20)
    assert_decode_error(path, "not a dicom")


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    path = make_dicom(tmp_path / "header.dcm", np.zeros((1, 1), np.uint16), with_pixels=False)
    assert_decode_error(path, "no pixel data")


def test_colour_dicom_is_read_as_its_luminance(tmp_path: Path) -> None:
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:8] = (255, 0, 0)
    rgb[8:] = (0, 0, 255)
    path = make_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB", bits_stored=8)
    grey = decode_dicom(path)
    assert grey[:8] == pytest.approx(0.299) and grey[8:] == pytest.approx(0.114)


def test_multi_frame_dicom(tmp_path: Path) -> None:
    path = make_dicom(tmp_path / "frames.dcm", np.zeros((2, 16, 16), np.uint16))
    assert_decode_error(path, "multi-frame")


@pytest.mark.parametrize("compression", [None, JPEG2000Lossless])
def test_truncated_dicom(tmp_path: Path, compression: str | None, caplog: pytest.LogCaptureFixture) -> None:
    path = make_dicom(tmp_path / "whole.dcm", content12((64, 64)), compression=compression)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 600])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydicom's own end-of-file warning must not escape
        with caplog.at_level(logging.DEBUG):
            assert_decode_error(path, "truncated")
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


@pytest.mark.parametrize("load_truncated", [False, True])
def test_truncated_jpeg(tmp_path: Path, monkeypatch, load_truncated: bool) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated)
    path = tmp_path / "cut.jpg"
    Image.fromarray(smooth_radiograph(400, 300)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_decode_error(path, "truncated")


def test_text_file_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "fake.jpg"
    path.write_text("not an image\n")
    assert_decode_error(path, "not a jpeg/png")


@pytest.mark.parametrize("name", ["absent.dcm", "absent.jpg", "absent.png"])
def test_missing_file(tmp_path: Path, name: str) -> None:
    error = assert_decode_error(tmp_path / name, "file not found")
    assert str(error) == "file not found"
    with pytest.raises(DecodeError, match="file not found"):
        (decode_dicom if name.endswith(".dcm") else decode_jpeg)(tmp_path / name)


def test_unknown_file_type(tmp_path: Path) -> None:
    path = tmp_path / "report.txt"
    path.write_text("FINDINGS: none\n")
    assert_decode_error(path, "unrecognised")


def test_decoder_is_chosen_by_content_not_extension(tmp_path: Path) -> None:
    content = content12()
    path = make_dicom(tmp_path / "scan.jpg", content)
    expected = load_image(make_dicom(tmp_path / "scan.dcm", content), 16)
    np.testing.assert_array_equal(load_image(path, 16), expected)
