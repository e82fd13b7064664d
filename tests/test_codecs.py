"""Every transfer syntax a radiograph comes in decodes exactly (lossless) or closely (lossy), through the
plugins codecs.py chooses; the demo's JPEG Lossless encoder; colour and one-frame multi-frame objects."""
from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import numpy as np
import pydicom
import pydicom.pixels
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, JPEGLossless, JPEGLosslessSV1, generate_uid

from raddiffusion.data.codecs import JPEG12_PLUGIN, decoding_plugin
from raddiffusion.data.decode import DecodeError, decode_dicom
from raddiffusion.data.synth.dicom import TRANSFERS, DicomInfo, dicom_bytes, dicom_dataset
from raddiffusion.data.synth.lossless_jpeg import PREDICTORS, encode_lossless_jpeg
from raddiffusion.data.synth.render import Radiograph
from raddiffusion.data.synth.subjects import View

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
SHAPE = (37, 53)  # odd sides: no codec gets away with a neat block size
EXPECTED_PLUGIN = {"jpeg-lossless": "gdcm", "jpeg-ls": "pyjpegls", "rle": "pylibjpeg", "jpeg2000": "pylibjpeg"}
LIBJPEG_ROW = [31, 28, 24, 21, 24, 24, 23, 22, 22, 21]
"""JPGExtended.dcm (pydicom's test data) row 500, columns 100..109, as IJG libjpeg 9 decodes it."""


def stored_pixels(ds: Dataset) -> np.ndarray:
    """The stored values, through the plugin decode.py would use."""
    syntax = ds.file_meta.TransferSyntaxUID
    available = pydicom.pixels.get_decoder(syntax).available_plugins
    return pydicom.pixels.pixel_array(ds, decoding_plugin=decoding_plugin(syntax, ds.BitsStored, available))


def grey_dataset(pixels: np.ndarray, bits: int, syntax: str, frame: bytes) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CR_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16 if bits > 8 else 8, bits, bits - 1, 0
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return ds


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_lossless_jpeg_encoder_round_trips_every_predictor(bits):
    rng = np.random.default_rng(bits)
    dtype = np.uint16 if bits > 8 else np.uint8
    noise = rng.integers(0, 2**bits, SHAPE).astype(dtype)
    walk = np.clip(np.cumsum(rng.integers(-40, 41, SHAPE), axis=1) + 2 ** (bits - 1), 0, 2**bits - 1).astype(dtype)
    for predictor in PREDICTORS:
        for pixels in (noise, walk):
            syntax = JPEGLosslessSV1 if predictor == 1 else JPEGLossless
            ds = grey_dataset(pixels, bits, syntax, encode_lossless_jpeg(pixels, bits, predictor))
            assert np.array_equal(stored_pixels(ds), pixels), (bits, predictor)


def test_lossless_jpeg_encoder_refuses_what_it_cannot_write():
    with pytest.raises(ValueError, match="below 2\\*\\*12"):
        encode_lossless_jpeg(np.full((4, 4), 4096, np.uint16), 12)
    with pytest.raises(ValueError, match="predictor"):
        encode_lossless_jpeg(np.zeros((4, 4), np.uint16), 12, predictor=8)


@pytest.fixture(scope="module")
def every_syntax(tmp_path_factory) -> dict[str, Path]:
    """One small radiograph written in every syntax the demo writes, with the same header and stored values."""
    folder = tmp_path_factory.mktemp("syntaxes")
    values = np.random.default_rng(0).uniform(0, 1, SHAPE).astype(np.float32)
    info = DicomInfo(10000001, 50000001, View("a-b", "PA"), 0, dt.date(2110, 1, 1), 0.0, 0, "F")
    paths = {}
    for transfer in TRANSFERS:
        ds = dicom_dataset(Radiograph(values), info, np.random.default_rng(7), transfer)
        paths[transfer] = folder / transfer
        paths[transfer].write_bytes(dicom_bytes(ds))
    return paths


@pytest.mark.parametrize("transfer", [t for t in TRANSFERS if t != "explicit"])
def test_every_lossless_syntax_decodes_to_the_uncompressed_pixels(every_syntax, transfer):
    original = pydicom.dcmread(every_syntax["explicit"])
    encoded = pydicom.dcmread(every_syntax[transfer])
    syntax = encoded.file_meta.TransferSyntaxUID
    assert syntax != original.file_meta.TransferSyntaxUID
    assert np.array_equal(stored_pixels(encoded), original.pixel_array)
    assert np.array_equal(decode_dicom(every_syntax[transfer]), decode_dicom(every_syntax["explicit"]))
    if transfer in EXPECTED_PLUGIN:
        available = pydicom.pixels.get_decoder(syntax).available_plugins
        assert decoding_plugin(syntax, encoded.BitsStored, available) == EXPECTED_PLUGIN[transfer]


def test_jpeg_lossless_below_8_bits_is_refused_rather_than_let_gdcm_abort(tmp_path):
    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8) % 64
    ds = grey_dataset(pixels, 6, JPEGLosslessSV1, encode_lossless_jpeg(pixels, 6))
    ds.save_as(tmp_path / "six-bits.dcm", enforce_file_format=True)
    assert decoding_plugin(JPEGLosslessSV1, 6, ("gdcm",)) is None
    assert decoding_plugin(JPEGLosslessSV1, 6, ("gdcm", "pylibjpeg")) == "pylibjpeg"
    with pytest.raises(DecodeError, match="no safe pixel decoder installed for .* BitsStored=6"):
        decode_dicom(tmp_path / "six-bits.dcm")


def test_jpeg_extended_12_bit_decodes_through_gdcm_quietly(capfd):
    path = get_testdata_file("JPGExtended.dcm")
    ds = pydicom.dcmread(path)
    available = pydicom.pixels.get_decoder(ds.file_meta.TransferSyntaxUID).available_plugins
    assert ds.BitsStored == 12 and decoding_plugin(ds.file_meta.TransferSyntaxUID, 12, available) == JPEG12_PLUGIN
    row = stored_pixels(ds)[500, 100:110].astype(int)
    assert np.abs(row - LIBJPEG_ROW).max() <= 1  # lossy: IDCT rounding may differ by one level
    assert decode_dicom(path).shape == (ds.Rows, ds.Columns)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""  # GDCM's native "Unsupported JPEG data precision" is muted


def test_jpeg_baseline_decodes_close_to_the_source():
    source = np.clip(np.add.outer(np.arange(40), np.arange(48)) * 3, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(source).save(buffer, "JPEG", quality=95)
    ds = grey_dataset(source, 8, JPEGBaseline8Bit, buffer.getvalue())
    assert np.abs(stored_pixels(ds).astype(int) - source).mean() < 2


def test_colour_secondary_captures_are_read_as_luminance():
    rgb = decode_dicom(get_testdata_file("SC_rgb_rle.dcm"))
    ybr = decode_dicom(get_testdata_file("SC_ybr_full_422_uncompressed.dcm"))
    assert rgb.ndim == 2 and np.abs(rgb - ybr).max() < 2 / 255  # the same picture; 4:2:2 chroma costs a level
    pixels = pydicom.dcmread(get_testdata_file("SC_rgb_rle.dcm")).pixel_array.astype(np.float32)
    assert np.allclose(rgb, pixels @ np.float32([0.299, 0.587, 0.114]) / 255, atol=1e-5)


def test_one_frame_of_a_multi_frame_object_is_read_and_several_are_skipped(tmp_path):
    for frames in (1, 2):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CR_STORAGE
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.set_pixel_data(np.full((frames, 8, 8), 2048, np.uint16), "MONOCHROME2", 12)
        ds.save_as(tmp_path / f"{frames}.dcm", enforce_file_format=True)
    assert int(pydicom.dcmread(tmp_path / "1.dcm").NumberOfFrames) == 1
    assert decode_dicom(tmp_path / "1.dcm") == pytest.approx(2048 / 4095)
    with pytest.raises(DecodeError, match="multi-frame image \\(NumberOfFrames=2\\)"):
        decode_dicom(tmp_path / "2.dcm")
