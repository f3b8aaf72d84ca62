import random

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from orpo_pipeline.stages.base import REASON, ROW
from orpo_pipeline.stages.near_dedupe import (
    CLUSTER,
    NearDedupeConfig,
    _components,
    minhash_signatures,
    near_dedupe,
)
from tests.stages.conftest import make_pair, pairs_frame

WORDS = [f"w{i}" for i in range(2000)]


def text(seed: int, num_words: int = 120) -> str:
    return " ".join(random.Random(seed).choices(WORDS, k=num_words))


def edited(base: str, *, position: int, word: str = "CHANGED") -> str:
    words = base.split()
    words[position] = word
    return " ".join(words)


def tagged(lf: pl.LazyFrame, config: NearDedupeConfig) -> pl.DataFrame:
    return near_dedupe(lf, config).sort(ROW).collect()


def test_keeps_the_earliest_row_of_each_cluster_and_names_it():
    a, b, c = text(1), text(2), text(3)
    prompts = [
        a,
        edited(a, position=60).upper() + "!",  # case and punctuation do not matter
        b,
        edited(a, position=100),
        edited(b, position=10),
        c,
    ]
    lf = pairs_frame([make_pair(p, "x", "y") for p in prompts])
    ids = lf.collect()["id"].to_list()
    for frame in (lf, lf.reverse()):  # the winner is chosen by `_row`, not by position
        result = tagged(frame, NearDedupeConfig())
        assert result[REASON].to_list() == [
            None,
            "near_duplicate",
            None,
            "near_duplicate",
            "near_duplicate",
            None,
        ]
        assert result[CLUSTER].to_list() == [ids[0], ids[0], ids[2], ids[0], ids[2], None]


def test_prompts_that_share_only_some_words_are_not_clustered():
    a = text(1)
    words = a.split()
    half_changed = " ".join(words[:60] + text(9).split()[60:])  # Jaccard of 5-grams ~0.3
    result = tagged(
        pairs_frame([make_pair(p, "x", "y") for p in (a, half_changed)]), NearDedupeConfig()
    )
    assert result[REASON].to_list() == [None, None]
    assert result[CLUSTER].to_list() == [None, None]


def test_threshold_decides_which_candidates_are_linked():
    a = text(1, num_words=200)
    # 20 changed words, one every 10: about 100 of 196 shingles change, Jaccard ~0.33.
    far = " ".join(w if i % 10 else "CHANGED" for i, w in enumerate(a.split()))
    lf = pairs_frame([make_pair(p, "x", "y") for p in (a, far)])
    loose = NearDedupeConfig(bands=40, rows_per_band=2, threshold=0.2)
    assert tagged(lf, loose)[REASON].to_list() == [None, "near_duplicate"]
    strict = NearDedupeConfig(bands=40, rows_per_band=2, threshold=0.6)
    assert tagged(lf, strict)[REASON].to_list() == [None, None]


def test_character_shingles_catch_edits_inside_words():
    prompts = [
        "Summarise the plot of Hamlet in three sentences.",
        "Summarize the plot of Hamlet in 3 sentences",
        "Translate this poem into French.",
    ]
    lf = pairs_frame([make_pair(p, "x", "y") for p in prompts])
    words = tagged(lf, NearDedupeConfig(ngram_size=3, bands=40, rows_per_band=3, threshold=0.5))
    chars = tagged(
        lf, NearDedupeConfig(unit="char", ngram_size=4, bands=40, rows_per_band=3, threshold=0.5)
    )
    assert words[REASON].to_list() == [None, None, None]
    assert chars[REASON].to_list() == [None, "near_duplicate", None]


def test_empty_and_single_row_frames():
    assert tagged(pairs_frame([]), NearDedupeConfig()).height == 0
    one = tagged(pairs_frame([make_pair("a", "b", "c")]), NearDedupeConfig())
    assert one[REASON].to_list() == [None]
    assert one[CLUSTER].to_list() == [None]


def test_union_find_joins_chains_into_one_cluster_rooted_at_the_smallest_row():
    pairs = np.array([[1, 2], [4, 3], [2, 5], [0, 5], [6, 7]])
    assert _components(9, pairs).tolist() == [0, 0, 0, 3, 3, 0, 6, 6, 8]


def test_estimated_jaccard_is_unbiased():
    rng = random.Random(0)
    texts, exact = [], []
    for _ in range(200):
        a = set(rng.sample(WORDS, 150))
        shared = rng.randint(0, 150)
        b = set(rng.sample(sorted(a), shared)) | set(rng.sample(WORDS, 150 - shared))
        texts += [" ".join(sorted(a)), " ".join(sorted(b))]
        exact.append(len(a & b) / len(a | b))
    signatures = minhash_signatures(pl.Series(texts), NearDedupeConfig(ngram_size=1))
    estimate = (signatures[0::2] == signatures[1::2]).mean(axis=1)
    error = estimate - np.array(exact)
    assert abs(error.mean()) < 0.01
    assert np.sqrt((error**2).mean()) < 0.05  # ~ sqrt(s(1 - s)/112)


def test_signatures_are_stable_across_versions():
    # Locks the shingle hash and the permutations: a change here reshuffles every stored cluster.
    signature = minhash_signatures(
        pl.Series(["the quick brown fox jumps over the lazy dog"]), NearDedupeConfig()
    )
    assert signature[0, :4].tolist() == [288926463, 970505434, 2974993085, 314900946]


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 4), st.integers(0, 119), st.booleans()), min_size=1, max_size=25
    ),
    st.randoms(use_true_random=False),
)
def test_kept_and_rejected_partition_the_input_in_any_order(rows, rng):
    prompts = [
        edited(text(base), position=pos) if change else text(base) for base, pos, change in rows
    ]
    lf = pairs_frame([make_pair(p, "x", str(i)) for i, p in enumerate(prompts)])
    order = list(range(len(prompts)))
    rng.shuffle(order)
    result = tagged(lf.collect()[order].lazy(), NearDedupeConfig())
    kept = result.filter(pl.col(REASON).is_null())
    rejected = result.filter(pl.col(REASON).is_not_null())
    assert kept.height + rejected.height == len(prompts)
    assert sorted(kept[ROW].to_list() + rejected[ROW].to_list()) == list(range(len(prompts)))
    # Every rejected row names a kept, earlier row as its cluster.
    kept_rows = dict(zip(kept["id"], kept[ROW], strict=True))
    for cluster, row in zip(rejected[CLUSTER], rejected[ROW], strict=True):
        assert kept_rows[cluster] < row
    assert result.equals(tagged(lf, NearDedupeConfig()))
    # Exact copies of a base text always end up in one cluster.
    for base in {b for b, _, change in rows if not change}:
        copies = [i for i, (b, _, change) in enumerate(rows) if b == base and not change]
        assert result[REASON].gather(copies[1:]).to_list() == ["near_duplicate"] * (len(copies) - 1)
