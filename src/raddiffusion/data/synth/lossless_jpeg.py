"""A small lossless JPEG encoder (ITU-T T.81 process 14: SOF3, Huffman coding), for the demo DICOM export.

pydicom has no encoder for JPEG Lossless, the syntax most CR / DX archives store
(1.2.840.10008.1.2.4.70: selection value 1, each sample predicted by its left neighbour). This one
writes one grey component of 2..16 bits with any predictor 1..7, point transform 0 and one Huffman
table built for the image (T.81 Annex K.2, code lengths limited to 16 bits as in K.3). It is
vectorised with numpy; decoding its output must give back the input exactly.
"""
from __future__ import annotations

import numpy as np

PREDICTORS = tuple(range(1, 8))
"""T.81 Table H.1: 1 left, 2 above, 3 above-left, 4 a+b-c, 5 a+(b-c)/2, 6 b+(a-c)/2, 7 (a+b)/2."""
MIN_PRECISION, MAX_PRECISION = 2, 16
CATEGORIES = 17
"""Difference categories SSSS 0..16; 16 is the difference 32768, sent without extra bits."""
MODULUS = 1 << 16
HALF_MODULUS = 1 << 15
MAX_CODE_LENGTH = 16
LONGEST_BUILT_CODE = 32
"""Longest code Annex K.2 can build for 17 symbols and the reserved one, before K.3 shortens it."""
WORD_BITS = 64
BLOCK_SAMPLES = 1 << 18
"""Samples bit-packed at a time: bounds the memory of the 64-bit-per-sample expansion."""
MARKER = 0xFF
SOI, EOI = b"\xff\xd8", b"\xff\xd9"
SOF3, DHT, SOS = 0xC3, 0xC4, 0xDA
COMPONENT_ID = 1
NO_SUBSAMPLING = 0x11
LOSSLESS_TABLE = 0x00
"""Table class 0 (DC, which lossless coding uses), destination 0."""


def encode_lossless_jpeg(pixels: np.ndarray, precision: int, predictor: int = 1) -> bytes:
    """``pixels`` (unsigned integers ``[rows, columns]`` below ``2**precision``) as a lossless JPEG codestream."""
    if predictor not in PREDICTORS:
        raise ValueError(f"predictor must be one of {PREDICTORS}, not {predictor}")
    if not MIN_PRECISION <= precision <= MAX_PRECISION:
        raise ValueError(f"precision must be {MIN_PRECISION}..{MAX_PRECISION} bits, not {precision}")
    samples = np.asarray(pixels)
    if samples.ndim != 2 or samples.dtype.kind != "u" or (samples.size and int(samples.max()) >> precision):
        raise ValueError(f"pixels must be unsigned integers [rows, columns] below 2**{precision}")
    differences = _differences(samples.astype(np.int64), precision, predictor).ravel()
    categories = _categories(differences)
    lengths = _code_lengths(np.bincount(categories, minlength=CATEGORIES))
    scan = _entropy_coded(differences, categories, lengths, _canonical_codes(lengths))
    rows, columns = samples.shape
    return b"".join([SOI, _table_segment(lengths), _frame_segment(precision, rows, columns),
                     _scan_segment(predictor), scan, EOI])


def _differences(x: np.ndarray, precision: int, predictor: int) -> np.ndarray:
    """Sample minus prediction, modulo 2**16 (T.81 H.1.2: first row from the left, first column from above)."""
    prediction = np.empty_like(x)
    prediction[0, 0] = 1 << (precision - 1)
    prediction[0, 1:] = x[0, :-1]
    prediction[1:, 0] = x[:-1, 0]
    a, b, c = x[1:, :-1], x[:-1, 1:], x[:-1, :-1]
    prediction[1:, 1:] = {
        1: lambda: a, 2: lambda: b, 3: lambda: c, 4: lambda: a + b - c,
        5: lambda: a + ((b - c) >> 1), 6: lambda: b + ((a - c) >> 1), 7: lambda: (a + b) >> 1,
    }[predictor]()
    return (x - prediction) % MODULUS


def _categories(differences: np.ndarray) -> np.ndarray:
    """SSSS per difference: the bit length of its magnitude (32768 -> 16)."""
    magnitude = np.where(differences > HALF_MODULUS, MODULUS - differences, differences)
    return np.frexp(magnitude.astype(np.float64))[1].astype(np.int64)


def _code_lengths(frequencies: np.ndarray) -> np.ndarray:
    """Huffman code length per category (0 = unused), by T.81 Annex K.2 and K.3."""
    reserved = CATEGORIES  # a dummy symbol keeps the all-ones code free
    frequency = [int(f) for f in frequencies] + [1]
    size = [0] * (CATEGORIES + 1)
    chain = [-1] * (CATEGORIES + 1)
    while True:
        live = [v for v in range(CATEGORIES + 1) if frequency[v] > 0]
        if len(live) < 2:
            break
        first = min(live, key=lambda v: (frequency[v], -v))
        second = min((v for v in live if v != first), key=lambda v: (frequency[v], -v))
        frequency[first] += frequency[second]
        frequency[second] = 0
        for start in (first, second):
            v = start
            size[v] += 1
            while chain[v] != -1:
                v = chain[v]
                size[v] += 1
            if start == first:
                chain[v] = second
    counts = np.bincount([s for s in size if s], minlength=LONGEST_BUILT_CODE + 1)
    counts = _limit_lengths(counts)
    order = sorted((v for v in range(CATEGORIES + 1) if size[v]), key=lambda v: (size[v], v))
    lengths = np.zeros(CATEGORIES, np.int64)
    assigned = [length for length in range(1, MAX_CODE_LENGTH + 1) for _ in range(counts[length])]
    for symbol, length in zip((v for v in order if v != reserved), assigned):
        lengths[symbol] = length
    return lengths


def _limit_lengths(counts: np.ndarray) -> np.ndarray:
    """Codes per length, none longer than 16 bits, the reserved code removed (T.81 Annex K.3)."""
    counts = counts.copy()
    for length in range(LONGEST_BUILT_CODE, MAX_CODE_LENGTH, -1):
        while counts[length] > 0:
            shorter = length - 2
            while counts[shorter] == 0:
                shorter -= 1
            counts[length] -= 2
            counts[length - 1] += 1
            counts[shorter + 1] += 2
            counts[shorter] -= 1
    longest = max(np.flatnonzero(counts[: MAX_CODE_LENGTH + 1]))
    counts[longest] -= 1
    return counts


def _canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical Huffman codes (T.81 Annex C) for the code lengths, symbols ordered by length then value."""
    codes = np.zeros(CATEGORIES, np.int64)
    code, previous = 0, 0
    for symbol in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[symbol]) - previous
        codes[symbol], previous = code, int(lengths[symbol])
        code += 1
    return codes


def _entropy_coded(differences: np.ndarray, categories: np.ndarray, lengths: np.ndarray, codes: np.ndarray) -> bytes:
    """The scan data: per sample its category's code then SSSS extra bits, 1-padded, 0xFF bytes stuffed."""
    signed = np.where(differences > HALF_MODULUS, differences - MODULUS, differences)
    extra_bits = np.where(categories == MAX_CODE_LENGTH, 0, categories)
    extra = np.where(signed < 0, signed - 1, signed) & ((1 << extra_bits) - 1)
    word_lengths = lengths[categories] + extra_bits
    words = (codes[categories] << extra_bits) | extra
    bits = [_bits(words[i:i + BLOCK_SAMPLES], word_lengths[i:i + BLOCK_SAMPLES])
            for i in range(0, len(words), BLOCK_SAMPLES)]
    stream = np.concatenate(bits) if bits else np.zeros(0, np.uint8)
    stream = np.concatenate([stream, np.ones(-len(stream) % 8, np.uint8)])
    data = np.packbits(stream)
    return np.insert(data, np.flatnonzero(data == MARKER) + 1, 0).tobytes()


def _bits(words: np.ndarray, word_lengths: np.ndarray) -> np.ndarray:
    """The first ``word_lengths[i]`` bits of each word, most significant first, concatenated."""
    aligned = (words.astype(np.uint64) << (WORD_BITS - word_lengths).astype(np.uint64)).astype(">u8")
    expanded = np.unpackbits(aligned.view(np.uint8).reshape(-1, WORD_BITS // 8), axis=1)
    return expanded[np.arange(WORD_BITS) < word_lengths[:, None]]


def _segment(marker: int, body: bytes) -> bytes:
    return bytes([MARKER, marker]) + (len(body) + 2).to_bytes(2, "big") + body


def _table_segment(lengths: np.ndarray) -> bytes:
    counts = np.bincount(lengths[lengths > 0], minlength=MAX_CODE_LENGTH + 1)[1:]
    symbols = sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s))
    return _segment(DHT, bytes([LOSSLESS_TABLE, *counts.tolist(), *symbols]))


def _frame_segment(precision: int, rows: int, columns: int) -> bytes:
    body = bytes([precision]) + rows.to_bytes(2, "big") + columns.to_bytes(2, "big")
    return _segment(SOF3, body + bytes([1, COMPONENT_ID, NO_SUBSAMPLING, 0]))


def _scan_segment(predictor: int) -> bytes:
    return _segment(SOS, bytes([1, COMPONENT_ID, LOSSLESS_TABLE, predictor, 0, 0]))
