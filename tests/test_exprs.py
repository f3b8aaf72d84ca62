"""The fast normalisation and simplification equal their plain definitions on every code point and
on mixed strings; the stable hash is sha256's."""

import hashlib
import random
import re
import unicodedata

import polars as pl

from orpo_pipeline.exprs import _normalize, simplified, stable_hash

WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B)))
WHITE_SPACE += "\u2028\u2029\u202f\u205f\u3000"
"""Unicode's White_Space property, listed by hand (what Rust's and Polars' `\\s` match)."""


def plain(text: str) -> str:
    """The definition: NFKC, every White_Space run to one space, ends stripped."""
    nfkc = unicodedata.normalize("NFKC", text)
    return re.sub(f"[{re.escape(WHITE_SPACE)}]+", " ", nfkc).strip(" ")


def test_white_space_list_is_what_polars_matches():
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    matched = pl.Series(chars).str.contains(r"^\s$")
    assert "".join(c for c, m in zip(chars, matched, strict=True) if m) == WHITE_SPACE


def test_normalize_equals_the_definition_on_every_code_point():
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    texts = [f"a{c}b" for c in chars]
    assert _normalize(pl.Series(texts, dtype=pl.String)).to_list() == [plain(t) for t in texts]


def test_normalize_equals_the_definition_on_ascii_mixed_with_combining_spaces_and_compatibility():
    rng = random.Random(0)
    alphabet = [*"ae oAE\n\t\r\x0b\x0c", " ", "\u0301", "\u0308", "\u00a0", "\ufb01", "\u1100"]
    alphabet += ["\u1161", "ｶ", "\x85", "\u2028", "\u3000", "\u2003", "\x1c", "é", "’"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(5000)]
    texts += ["plain ascii only", "", "e\u0301", "\u212b", "  lead and trail \n"]
    series = pl.Series([*texts, None], dtype=pl.String)
    assert _normalize(series).to_list() == [plain(t) for t in texts] + [None]


def plain_simplified(text: pl.Expr) -> pl.Expr:
    """The definition of `simplified` as one chain of Polars string expressions."""
    words = text.str.normalize("NFKC").str.to_lowercase().str.replace_all(r"[^\w\s]|_", " ")
    return words.str.replace_all(r"\s+", " ").str.strip_chars()


def test_simplified_equals_the_plain_chain_on_every_code_point():
    """Every code point Python's Unicode database assigns (Polars' may be newer: the fast path
    normalises as Python does)."""
    chars = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) not in ("Cn", "Cs")]
    frame = pl.DataFrame({"t": [f"A{c}b, {c}" for c in chars]})
    fast = frame.select(simplified(pl.col("t"))).to_series()
    assert fast.equals(frame.select(plain_simplified(pl.col("t"))).to_series())


def test_stable_hash_is_the_first_eight_bytes_of_sha256():
    texts = ["", "abc", "é\x00x", "🙂" * 50, None]
    hashes = pl.DataFrame({"t": texts}).select(stable_hash(pl.col("t"), salt="split:3"))
    expected = [
        int.from_bytes(hashlib.sha256(f"split:3\x00{t}".encode()).digest()[:8], "big")
        for t in texts[:-1]
    ]
    assert hashes.to_series().to_list() == [*expected, None]
