"""Stable 64-bit hashes of word or character n-grams, computed with numpy over whole columns.

The hashes depend only on the text and the constants below, never on Python's `hash()`, Polars'
`hash()`, the platform or a library version, so signatures and matches are reproducible.
Each unit (word or character) is hashed with xxHash64 (a fixed, published function); each
shingle as a polynomial over its units' hashes, finished with the splitmix64 mixer.
"""

from typing import Literal

import numpy as np
import polars as pl
import polars_hash  # noqa: F401  (registers the `nchash` namespace)

Unit = Literal["word", "char"]

_UNIT_BASE = 0x9E3779B97F4A7C15


def mix64(x: np.ndarray) -> np.ndarray:
    """Splitmix64's finaliser: a bijection on uint64 that spreads every input bit."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB
    return x ^ (x >> 31)


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
    """xxHash64 (seed 0) of each string of a flat string Series, in Rust (polars-hash)."""
    return units.to_frame("unit").select(pl.col("unit").nchash.xxhash64()).to_series().to_numpy()


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
    unit_starts = np.cumsum(counts) - counts
    windows = np.maximum(counts - size + 1, 1)
    window_lengths = np.repeat(np.minimum(counts, size), windows)
    starts = np.concatenate(([0], np.cumsum(windows)))
    offset_in_text = np.arange(starts[-1]) - np.repeat(starts[:-1], windows)
    positions = np.repeat(unit_starts, windows) + offset_in_text
    whole = window_lengths == size
    acc = np.empty(starts[-1], dtype=np.uint64)
    acc[whole] = _runs(units, size)[positions[whole]]
    acc[~whole] = _short_runs(units, positions[~whole], window_lengths[~whole])
    return mix64(acc ^ window_lengths.astype(np.uint64)), starts


def _runs(units: np.ndarray, size: int) -> np.ndarray:
    """The polynomial hash of every run of `size` consecutive units (item p: the run from p),
    over contiguous slices."""
    acc = np.zeros(max(len(units) - size + 1, 0), dtype=np.uint64)
    for i in range(size):
        acc *= np.uint64(_UNIT_BASE)
        acc += units[i : i + len(acc)]
    return acc


def _short_runs(units: np.ndarray, positions: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The same hash of the runs of `lengths` units from `positions` (texts shorter than a
    shingle: one run each)."""
    acc = np.zeros(len(positions), dtype=np.uint64)
    for i in range(int(lengths.max(initial=0))):
        inside = i < lengths
        acc[inside] = acc[inside] * np.uint64(_UNIT_BASE) + units[positions[inside] + i]
    return acc
