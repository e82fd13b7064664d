"""Which pydicom pixel-data plugin decodes each compressed transfer syntax, chosen by licence and speed.

Installed with the package (permissive licences): python-gdcm (GDCM, BSD; the wheel Apache-2.0),
pyjpegls (MIT, CharLS BSD-3), pylibjpeg-rle (MIT), pylibjpeg-openjpeg (MIT) and Pillow. GPL-3
pylibjpeg-libjpeg is never required; when a user installs it, it is the last resort.

Decoding a 2500 x 3000 12-bit radiograph on one core (benchmarks/bench_dicom_export.py, BENCHMARKS.md):
JPEG Lossless gdcm 0.21 s (libjpeg 0.25); JPEG-LS pyjpegls 0.15 s (gdcm 0.28, libjpeg 0.61); RLE
pylibjpeg-rle 0.02 s (pydicom's numpy 0.18). An 8-bit JPEG of that size: Pillow 22 ms (gdcm 97),
measured once. JPEG 2000 stays with openjpeg as before: gdcm won on the synthetic image (0.64 s,
openjpeg 0.87) but lost on the real lossy CR of the reference data (0.16 s, openjpeg 0.13).

pydicom's own gdcm plugin refuses 12-bit JPEG Extended (process 4) although GDCM decodes it, so
:data:`JPEG12_PLUGIN` adds that one case; GDCM then prints a harmless libjpeg message on the native
stderr, which is muted for the call.
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import pydicom.pixels
from pydicom import uid

try:
    import gdcm
except ImportError:  # decoding then falls back to the other plugins
    gdcm = None

JPEG12_PLUGIN = "raddiffusion-gdcm12"
EIGHT_BITS = 8
GDCM_LOSSLESS_MIN_BITS = 8
"""GDCM aborts the whole process (an uncaught C++ exception) on JPEG Lossless with fewer stored bits."""
PREFERRED_PLUGINS: dict[str, tuple[str, ...]] = {
    uid.JPEGLossless: ("gdcm", "pylibjpeg"),
    uid.JPEGLosslessSV1: ("gdcm", "pylibjpeg"),
    uid.JPEGLSLossless: ("pyjpegls", "gdcm", "pylibjpeg"),
    uid.JPEGLSNearLossless: ("pyjpegls", "gdcm", "pylibjpeg"),
    uid.RLELossless: ("pylibjpeg", "pydicom"),
    uid.JPEG2000Lossless: ("pylibjpeg", "gdcm", "pillow"),
    uid.JPEG2000: ("pylibjpeg", "gdcm", "pillow"),
    uid.JPEGBaseline8Bit: ("pillow", "gdcm", "pylibjpeg"),
    uid.JPEGExtended12Bit: ("pillow", "gdcm", "pylibjpeg"),
}
"""Fastest first among the plugins with a permissive licence; syntaxes not listed use pydicom's order."""
DECODER_DEPENDENCIES = {uid.JPEGExtended12Bit: ("gdcm>=3.0.10",)}
"""What :data:`JPEG12_PLUGIN` needs (the interface pydicom asks of a plugin module)."""

__all__ = ["JPEG12_PLUGIN", "PREFERRED_PLUGINS", "decoding_plugin"]


def decoding_plugin(syntax: str, bits_stored: int, available: tuple[str, ...]) -> str | None:
    """The plugin to decode ``syntax`` with, ``""`` to let pydicom try each available one in turn, or None
    when the only ones available would abort the process on such data."""
    if syntax == uid.JPEGExtended12Bit and bits_stored > EIGHT_BITS and JPEG12_PLUGIN in available:
        return JPEG12_PLUGIN
    if syntax in (uid.JPEGLossless, uid.JPEGLosslessSV1) and bits_stored < GDCM_LOSSLESS_MIN_BITS:
        available = tuple(name for name in available if name != "gdcm")
        return next((name for name in PREFERRED_PLUGINS[syntax] if name in available), None)
    return next((name for name in PREFERRED_PLUGINS.get(syntax, ()) if name in available), "")


def is_available(syntax: str) -> bool:
    """pydicom's plugin interface: whether :data:`JPEG12_PLUGIN` can decode ``syntax`` here."""
    return gdcm is not None and syntax in DECODER_DEPENDENCIES


def decode_jpeg12_frame(src: bytes, runner) -> bytes:
    """One 12-bit JPEG Extended grey frame decoded by GDCM (a pydicom decoding plugin function)."""
    if runner.samples_per_pixel != 1 or runner.bits_stored <= EIGHT_BITS:
        raise NotImplementedError(f"{JPEG12_PLUGIN} decodes 12-bit grey frames only")
    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(src)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetValue(fragments.__ref__())
    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((runner.columns, runner.rows, 1))
    image.SetDataElement(element)
    kind = gdcm.PhotometricInterpretation.GetPIType(runner.photometric_interpretation)
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(kind))
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGExtendedProcess2_4))
    bits = runner.bits_stored
    image.SetPixelFormat(gdcm.PixelFormat(1, runner.bits_allocated, bits, bits - 1, runner.pixel_representation))
    with _native_stderr_muted():
        frame = image.GetBuffer()
    return frame.encode("utf-8", "surrogateescape")


@contextlib.contextmanager
def _native_stderr_muted() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null while C code runs (it bypasses ``sys.stderr``)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as sink:
            os.dup2(sink.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _register() -> None:
    if gdcm is not None:
        for level in (gdcm.Trace.WarningOff, gdcm.Trace.ErrorOff, gdcm.Trace.DebugOff):
            level()
    decoder = pydicom.pixels.get_decoder(uid.JPEGExtended12Bit)
    if JPEG12_PLUGIN not in decoder.available_plugins and gdcm is not None:
        decoder.add_plugin(JPEG12_PLUGIN, (__name__, decode_jpeg12_frame.__name__))


_register()
