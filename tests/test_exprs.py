"""The fast NFKC path equals `unicodedata` on every code point and on mixed strings."""

import random
import unicodedata

import polars as pl

from orpo_pipeline.exprs import _nfkc


def test_fast_nfkc_equals_unicodedata_on_every_code_point():
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    texts = pl.Series(chars, dtype=pl.String)
    expected = [unicodedata.normalize("NFKC", c) for c in chars]
    assert _nfkc(texts).to_list() == expected


def test_fast_nfkc_equals_unicodedata_on_ascii_mixed_with_combining_and_compatibility():
    rng = random.Random(0)
    alphabet = [*"ae oAE\n\t", "\u0301", "\u0308", "\u00a0", "\ufb01", "\u1100", "\u1161", "ｶ"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(5000)]
    texts += ["plain ascii only", "", "e\u0301", "\u212b"]
    series = pl.Series([*texts, None], dtype=pl.String)
    expected = [unicodedata.normalize("NFKC", t) for t in texts] + [None]
    assert _nfkc(series).to_list() == expected
