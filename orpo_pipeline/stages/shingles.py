"""Stable 64-bit hashes of word or character n-grams, computed with numpy over whole columns.

The hashes depend only on the text and the constants below, never on Python's `hash()`, Polars'
`hash()`, the platform or a library version, so signatures and matches are reproducible.
Each unit (word or character) is hashed as a polynomial over its UTF-8 bytes; each shingle as a
polynomial over its units' hashes; both are finished with the splitmix64 mixer.
"""

from typing import Literal

import numpy as np
import polars as pl

Unit = Literal["word", "char"]

_BYTE_BASE = 0x100000001B3  # odd, so it is invertible modulo 2**64
_UNIT_BASE = 0x9E3779B97F4A7C15
_BYTE_BASE_INVERSE = pow(_BYTE_BASE, -1, 2**64)


def mix64(x: np.ndarray) -> np.ndarray:
    """Splitmix64's finaliser: a bijection on uint64 that spreads every input bit."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB
    return x ^ (x >> 31)


def _powers(base: int, count: int) -> np.ndarray:
    """base**0, base**1, ..., base**(count - 1), modulo 2**64."""
    powers = np.full(count, base, dtype=np.uint64)
    powers[:1] = 1
    return np.cumprod(powers, dtype=np.uint64)  # wraps modulo 2**64, as intended


def utf8_buffers(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """Zero-copy views of a string Series: int64 offsets (from 0, length n + 1) and UTF-8 bytes.

    Nulls read as empty strings.
    """
    array = texts.to_arrow(compat_level=pl.CompatLevel.oldest())  # large_string: int64 offsets
    _, offsets_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[
        array.offset : array.offset + len(array) + 1
    ]
    if data_buffer is None:
        return offsets - offsets[0], np.empty(0, dtype=np.uint8)
    data = np.frombuffer(data_buffer, dtype=np.uint8)[offsets[0] : offsets[-1]]
    return offsets - offsets[0], data


def _unit_hashes(units: pl.Series) -> np.ndarray:
    """Hash each string of a flat string Series; uint64, one per string."""
    if units.is_empty():
        return np.empty(0, dtype=np.uint64)
    offsets, data = utf8_buffers(units)
    # prefix[k] = sum over j < k of (byte_j + 1) * BASE**j, so a unit's hash is a difference of two
    # prefixes shifted back by BASE**-start. The +1 keeps trailing NUL bytes from vanishing.
    prefix = np.zeros(len(data) + 1, dtype=np.uint64)
    np.cumsum((data.astype(np.uint64) + 1) * _powers(_BYTE_BASE, len(data)), out=prefix[1:])
    starts, ends = offsets[:-1], offsets[1:]
    inverse = _powers(_BYTE_BASE_INVERSE, len(data) + 1)[starts]
    lengths = (ends - starts).astype(np.uint64)
    return mix64((prefix[ends] - prefix[starts]) * inverse + lengths)


def shingle_hashes(texts: pl.Series, *, size: int, unit: Unit) -> tuple[np.ndarray, np.ndarray]:
    """Hash every run of `size` consecutive words or characters of each text.

    Words are split on single spaces (pass text through `exprs.simplified` first). A text with
    fewer than `size` units has one shingle: all of its units (the empty text included), so every
    text has at least one shingle.

    Returns:
        `(hashes, starts)`: uint64 shingle hashes of all texts, concatenated, and int64 offsets of
        length `len(texts) + 1`: text `i` owns `hashes[starts[i]:starts[i + 1]]`.
    """
    lists = texts.fill_null("").str.split(" " if unit == "word" else "")
    counts = lists.list.len().to_numpy().astype(np.int64)
    units = _unit_hashes(lists.explode(empty_as_null=False).drop_nulls())
    units = np.append(units, np.uint64(0))  # a pad, so windows past the end can be gathered
    unit_starts = np.cumsum(counts) - counts
    windows = np.maximum(counts - size + 1, 1)
    window_lengths = np.repeat(np.minimum(counts, size), windows)
    starts = np.concatenate(([0], np.cumsum(windows)))
    offset_in_text = np.arange(starts[-1]) - np.repeat(starts[:-1], windows)
    positions = np.repeat(unit_starts, windows) + offset_in_text
    acc = np.zeros(starts[-1], dtype=np.uint64)
    for i in range(size):
        inside = i < window_lengths
        acc = np.where(
            inside, acc * _UNIT_BASE + units[np.minimum(positions + i, len(units) - 1)], acc
        )
    return mix64(acc ^ window_lengths.astype(np.uint64)), starts
