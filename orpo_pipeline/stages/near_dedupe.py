"""Near-duplicate prompts by MinHash LSH, clustered with union-find; the earliest row is kept.

The keys are compact b-bit signatures computed per shard (112 bytes a row by default), so the
decide step holds neither texts nor full signatures: at 10 M rows the keys take about 1.6 GB.
"""

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar, Literal

import numpy as np
import polars as pl
from pydantic import Field

from orpo_pipeline.exprs import contents, simplified
from orpo_pipeline.stages.base import REASON, ROW, GlobalStage, StageConfig, tag_rejects
from orpo_pipeline.stages.shingles import mix64, shingle_hashes

CLUSTER = "_cluster"
"""Column holding the `id` of the pair kept for the row's near-duplicate cluster (null if none)."""
_CHUNK_ROWS = 16_384
"""Rows signed at a time, which bounds the memory of the shingle arrays."""
_BLOCK_ROWS = 64
"""Rows whose shingles go through all permutations in one array (a few MB: it stays in cache;
twice as fast as one pass over the chunk per permutation)."""


class NearDedupeConfig(StageConfig):
    """Reject prompts that are near-duplicates of an earlier prompt as `near_duplicate`.

    Each prompt (its message contents, `simplified`) is cut into shingles and signed with
    `bands * rows_per_band` MinHash values. Prompts sharing all values of any band are candidates
    (probability 1 - (1 - s**rows_per_band)**bands at Jaccard similarity s); a candidate pair whose
    estimated Jaccard similarity (the share of equal MinHash values, standard error
    sqrt(s(1 - s)/num_permutations)) reaches `threshold` is linked, and linked prompts form
    clusters (union-find). The earliest `_row` of a cluster is kept; every row of a cluster of two
    or more gets `_cluster`, the `id` of the kept pair.
    """

    stage: Literal["near_dedupe"] = "near_dedupe"
    reject_labels: ClassVar[dict[str, str]] = {"near_duplicate": CLUSTER}
    unit: Literal["word", "char"] = "word"
    """Shingle unit: words or characters of the simplified prompt."""
    ngram_size: int = Field(default=5, ge=1)
    """Units per shingle (datatrove and text-dedup: 5 words; NeMo Curator: 24 characters)."""
    bands: int = Field(default=14, ge=1)
    """LSH bands (datatrove: 14 bands of 8, detection 50 % at Jaccard ~0.72)."""
    rows_per_band: int = Field(default=8, ge=1)
    """MinHash values per band; the signature has `bands * rows_per_band` permutations."""
    threshold: float = Field(default=0.7, gt=0, le=1)
    """Minimum estimated Jaccard similarity that links two candidate prompts."""
    seed: int = 0
    """Seeds the MinHash permutations."""
    signature_bits: Literal[8, 16, 32] = 8
    """Bits kept of each MinHash value (b-bit MinHash). Two different values agree on b bits
    with probability 2**-b, which the similarity estimate corrects for; 8 bits give the same
    clusters as 32 on the 1 M benchmark but a quarter of the memory."""


def _permutations(config: NearDedupeConfig) -> tuple[np.ndarray, np.ndarray]:
    """Odd multipliers and xor masks, one pair per MinHash value, derived from sha256."""
    num = config.bands * config.rows_per_band
    digests = [
        hashlib.sha256(f"near_dedupe:{config.seed}:{i}".encode()).digest() for i in range(num)
    ]
    multipliers = np.array([int.from_bytes(d[:8], "big") | 1 for d in digests], dtype=np.uint64)
    masks = np.array([int.from_bytes(d[8:16], "big") for d in digests], dtype=np.uint64)
    return multipliers, masks


def minhash_signatures(texts: pl.Series, config: NearDedupeConfig) -> np.ndarray:
    """MinHash signatures of simplified texts: uint32, shape (len(texts), num_permutations).

    Value i of a text is the least of `(shingle ^ mask_i) * multiplier_i` (a bijection of uint64)
    over its shingles, keeping the high 32 bits. Chunks of rows are signed on all cores (numpy
    releases the GIL).
    """
    multipliers, masks = _permutations(config)
    signatures = np.empty((len(texts), len(multipliers)), dtype=np.uint32)

    def sign(begin: int) -> None:
        chunk = texts.slice(begin, _CHUNK_ROWS)
        hashes, starts = shingle_hashes(chunk, size=config.ngram_size, unit=config.unit)
        for first in range(0, len(chunk), _BLOCK_ROWS):  # every permutation of a block at once
            last = min(first + _BLOCK_ROWS, len(chunk))
            block = hashes[starts[first] : starts[last]]
            permuted = masks[:, None] ^ block[None, :]
            permuted *= multipliers[:, None]
            least = np.minimum.reduceat(permuted, starts[first:last] - starts[first], axis=1)
            signatures[begin + first : begin + last] = (least >> 32).T

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(sign, range(0, len(texts), _CHUNK_ROWS)))
    return signatures


def _bbit(signatures: np.ndarray, bits: int) -> np.ndarray:
    """The low `bits` bits of each MinHash value (the high bits of a minimum are biased to 0)."""
    return signatures.astype(np.dtype(f"uint{bits}"))


def _similar(signatures: pl.Series, pairs: np.ndarray, threshold: float) -> np.ndarray:
    """Per candidate pair: whether the estimated Jaccard similarity reaches `threshold`.

    With b-bit values an unequal pair still agrees with probability 2**-b, so the share of equal
    values m estimates s + (1 - s) * 2**-b; invert that. Only the pairs' signatures are gathered.
    """
    similar = []
    for chunk in np.array_split(pairs, max(1, len(pairs) // 1_000_000)):
        left, right = (signatures.gather(chunk[:, side]).to_numpy() for side in (0, 1))
        chance = 2.0 ** -(left.dtype.itemsize * 8)
        equal = (left == right).mean(axis=1)
        similar.append((equal - chance) / (1 - chance) >= threshold)
    return np.concatenate(similar) if similar else np.zeros(0, dtype=bool)


def _band_keys(signatures: pl.Series, band: slice) -> np.ndarray:
    """One uint64 per row standing for a band's values (the `band` columns of each signature):
    their bytes themselves when they fit in eight (8 values of 8 bits, the default), else a hash
    of them. Read chunk by chunk of the Array series, so the signatures are never copied whole."""
    return np.concatenate(
        [_chunk_band_keys(chunk.to_numpy()[:, band]) for chunk in signatures.get_chunks()]
    )


def _chunk_band_keys(columns: np.ndarray) -> np.ndarray:
    width = columns.shape[1] * columns.itemsize
    if width > 8:
        key = np.zeros(len(columns), dtype=np.uint64)
        for column in columns.T:
            key = mix64(key ^ column.astype(np.uint64))
        return key
    padded = np.zeros((len(columns), 8), dtype=np.uint8)
    padded[:, :width] = np.ascontiguousarray(columns).view(np.uint8).reshape(len(columns), width)
    return padded.view(np.uint64).ravel()


def _candidate_pairs(signatures: pl.Series, config: NearDedupeConfig) -> np.ndarray:
    """Pairs (earlier, later) of row positions that share a band; each later row is paired with
    the earliest row of its bucket. Shape (num_pairs, 2), unique, sorted."""
    rows = len(signatures)

    def band_pairs(band: int) -> np.ndarray:
        """The band's pairs, each as earlier * rows + later (int64 sorts far faster than pairs)."""
        width = config.rows_per_band
        key = _band_keys(signatures, slice(band * width, (band + 1) * width))
        order = np.argsort(key)
        sorted_key = key[order]
        del key
        new_bucket = np.ones(rows, dtype=bool)
        new_bucket[1:] = sorted_key[1:] != sorted_key[:-1]
        del sorted_key
        bucket_first = np.minimum.reduceat(order, np.flatnonzero(new_bucket))
        first = bucket_first[np.cumsum(new_bucket) - 1]
        later = first != order
        return first[later].astype(np.int64) * rows + order[later]

    with ThreadPoolExecutor(os.cpu_count()) as pool:  # numpy sorts without the GIL
        codes = list(pool.map(band_pairs, range(config.bands)))
    code = np.unique(np.concatenate(codes)) if codes else np.zeros(0, dtype=np.int64)
    return np.stack([code // max(rows, 1), code % max(rows, 1)], axis=1)


def _components(num_rows: int, pairs: np.ndarray) -> np.ndarray:
    """Union-find over linked pairs: each row's root is the smallest row of its cluster."""
    parent = np.arange(num_rows)
    while True:
        left, right = parent[pairs[:, 0]], parent[pairs[:, 1]]
        low, high = np.minimum(left, right), np.maximum(left, right)
        unmerged = low != high
        if not unmerged.any():
            return parent
        np.minimum.at(parent, high[unmerged], low[unmerged])  # hang each root under a smaller one
        while not np.array_equal(grandparent := parent[parent], parent):
            parent = grandparent  # pointer jumping until every row points at its root


def cluster_roots(signatures: pl.Series, config: NearDedupeConfig) -> np.ndarray:
    """For an Array series of signatures in row order: the position of each row's cluster root
    (itself if alone)."""
    pairs = _candidate_pairs(signatures, config)
    linked = pairs[_similar(signatures, pairs, config.threshold)]
    return _components(len(signatures), linked)


def _clusters(keys: pl.DataFrame, config: NearDedupeConfig) -> pl.DataFrame:
    """`_row`, `_cluster` and `_near_duplicate` for keys (`_row`, `id`, `_signature`)."""
    if not keys[ROW].is_sorted():  # keys arrive in `_row` order: no copy then
        keys = keys.sort(ROW)
    roots = cluster_roots(keys["_signature"], config)
    in_cluster = np.bincount(roots, minlength=keys.height)[roots] > 1
    cluster_ids = keys["id"].gather(roots).scatter(np.flatnonzero(~in_cluster), None)
    return pl.DataFrame(
        {
            ROW: keys[ROW],
            CLUSTER: cluster_ids,
            "_near_duplicate": roots != np.arange(keys.height),
        }
    )


def _signature_dtype(config: NearDedupeConfig) -> pl.DataType:
    uint = {8: pl.UInt8, 16: pl.UInt16, 32: pl.UInt32}[config.signature_bits]
    return pl.Array(uint, config.bands * config.rows_per_band)


def _keys(lf: pl.LazyFrame, config: NearDedupeConfig) -> pl.LazyFrame:
    """`_row`, `id` and `_signature`: the b-bit MinHash signature of the simplified prompt."""

    def sign(texts: pl.Series) -> pl.Series:
        signatures = _bbit(minhash_signatures(texts, config), config.signature_bits)
        return pl.Series("_signature", signatures, dtype=_signature_dtype(config))

    text = simplified(contents("prompt"))
    signature = text.map_batches(sign, return_dtype=_signature_dtype(config), is_elementwise=True)
    return lf.select(ROW, "id", signature.alias("_signature"))


def _decide(keys: pl.LazyFrame, config: NearDedupeConfig) -> pl.LazyFrame:
    """Tag later members of near-duplicate prompt clusters; add `_cluster` to every member."""
    schema = {ROW: keys.collect_schema()[ROW], CLUSTER: pl.String, "_near_duplicate": pl.Boolean}
    lf = keys.map_batches(lambda frame: _clusters(frame, config), schema=schema)
    return tag_rejects(lf, {"near_duplicate": ~pl.col("_near_duplicate")}).select(
        ROW, CLUSTER, REASON
    )


near_dedupe = GlobalStage(_keys, _decide)
"""Tag later members of near-duplicate prompt clusters and add `_cluster` to every member."""
