"""Reusable Polars expressions over canonical pair columns."""

import functools
import re
import unicodedata

import polars as pl
import polars_hash  # noqa: F401  (registers the `chash` namespace)


def messages_text(column: str) -> pl.Expr:
    """All message contents of a message-list column, as `role: content` lines."""
    line = pl.element().struct.field("role") + pl.lit(": ") + pl.element().struct.field("content")
    return pl.col(column).list.eval(line).list.join("\n")


def answer_text(column: str) -> pl.Expr:
    """The content of the single answer message in `chosen` or `rejected`."""
    return pl.col(column).list.first().struct.field("content")


def messages_text_chars(column: str) -> pl.Expr:
    """The length in characters of `messages_text(column)`, without building the text."""
    message = pl.element().struct
    line = message.field("role").str.len_chars() + 2 + message.field("content").str.len_chars()
    return pl.col(column).list.eval(line).list.sum() + pl.col(column).list.len() - 1


def contents(column: str) -> pl.Expr:
    """The message contents of a message-list column joined by newlines, without roles."""
    return pl.col(column).list.eval(pl.element().struct.field("content")).list.join("\n")


def user_turns(column: str) -> pl.Expr:
    """The contents of the user messages of a message-list column, as a list of strings."""
    message = pl.element()
    is_user = message.struct.field("role") == "user"
    return pl.col(column).list.eval(message.filter(is_user).struct.field("content"))


_HANGUL_JAMO_MAYBE = (*range(0x1161, 0x1176), *range(0x11A8, 0x11C3))
"""Hangul vowels and trailing consonants, which compose algorithmically (no decomposition)."""
_SPACES_NFKC_KEEPS = (0x85, 0x1680, 0x2028, 0x2029)
"""The non-ASCII Unicode whitespace that NFKC leaves as is (it maps the rest to U+0020)."""
_WHITESPACE_RUN = re.compile(r"[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")
"""A run of Unicode White_Space, which Polars' (Rust's) `\\s` matches; Python's `\\s` also
matches U+001C..U+001F."""


@functools.cache
def _slow_path_class() -> str:
    """A regex class of every character that NFKC may change, reorder or compose with the one
    before (not NFKC itself, combining marks, the second half of canonical pairs), plus the
    non-ASCII whitespace NFKC keeps. A text with none of them is NFKC and has ASCII whitespace
    only.

    Built once from `unicodedata` over the assigned planes (about 0.2 s).
    """
    codes: set[int] = {*_HANGUL_JAMO_MAYBE, *_SPACES_NFKC_KEEPS}
    for code in (*range(0x80, 0x32400), *range(0xE0000, 0xE1000)):
        if 0xD800 <= code <= 0xDFFF:
            continue
        char = chr(code)
        parts = unicodedata.decomposition(char).split()
        if len(parts) == 2 and not parts[0].startswith("<"):
            codes.add(int(parts[1], 16))
        if unicodedata.combining(char) or not unicodedata.is_normalized("NFKC", char):
            codes.add(code)
    ranges: list[list[int]] = []
    for code in sorted(codes):
        if ranges and code == ranges[-1][1] + 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    return "[" + "".join(rf"\x{{{lo:x}}}-\x{{{hi:x}}}" for lo, hi in ranges) + "]"


def _normalize_slowly(text: str) -> str:
    return _WHITESPACE_RUN.sub(" ", unicodedata.normalize("NFKC", text)).strip(" ")


def _normalize(texts: pl.Series) -> pl.Series:
    """NFKC, whitespace runs to one space, ends stripped: the same as Polars'
    `str.normalize("NFKC").str.replace_all(r"\\s+", " ").str.strip_chars()`, five times faster.

    ASCII text is found by comparing byte and character lengths; the rest is scanned with one
    vectorised regex, and only strings it matches go through CPython's `unicodedata`. All other
    strings are NFKC with ASCII whitespace only, which two regexes with fast literal
    prefilters collapse.
    """
    non_ascii = (texts.str.len_bytes() != texts.str.len_chars()).fill_null(value=False).arg_true()
    slow = texts.gather(non_ascii).str.contains(_slow_path_class()).fill_null(value=False)
    rows = non_ascii.filter(slow)
    if not rows.is_empty():
        normal = [_normalize_slowly(text) for text in texts.gather(rows)]
        texts = texts.scatter(rows, pl.Series(normal, dtype=pl.String))
    spaced = texts.str.replace_all(r"[\t-\r]", " ").str.replace_all(" {2,}", " ")
    return spaced.str.strip_chars(" ")


def normalized(text: pl.Expr, *, casefold: bool = False) -> pl.Expr:
    """Unicode NFKC with whitespace runs collapsed and ends stripped; optionally lower-cased."""
    text = text.map_batches(_normalize, return_dtype=pl.String, is_elementwise=True)
    return text.str.to_lowercase() if casefold else text


def simplified(text: pl.Expr) -> pl.Expr:
    """NFKC, lower case, punctuation and symbols turned to spaces, whitespace collapsed.

    The form texts are compared in for near-duplicates and contamination, where "Hello, World!"
    and "hello world" are the same words. After `normalized` the only whitespace is single
    spaces, so only the runs the punctuation leaves need collapsing (tested against the plain
    Polars chain).
    """
    words = normalized(text, casefold=True).str.replace_all(r"[^\w\s]|_", " ")
    return words.str.replace_all(" {2,}", " ").str.strip_chars(" ")


def any_blank_message(column: str) -> pl.Expr:
    """True when the column has no message or any message is empty or whitespace-only."""
    blank = ~pl.element().struct.field("content").str.contains(r"\S")
    return (pl.col(column).list.len() == 0) | pl.col(column).list.eval(blank).list.any()


def stable_hash(text: pl.Expr, *, salt: str = "") -> pl.Expr:
    """First 8 bytes of sha256(salt, "\\x00", text) as UInt64, big-endian (hashed in Rust by
    polars-hash): unlike `Expr.hash`, stable across versions."""
    digest = (pl.lit(f"{salt}\x00") + text).chash.sha2_256()
    return digest.str.head(16).str.to_integer(base=16, dtype=pl.UInt64)
