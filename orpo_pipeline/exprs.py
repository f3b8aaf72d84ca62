"""Reusable Polars expressions over canonical pair columns."""

import hashlib

import polars as pl


def messages_text(column: str) -> pl.Expr:
    """All message contents of a message-list column, as `role: content` lines."""
    line = pl.element().struct.field("role") + pl.lit(": ") + pl.element().struct.field("content")
    return pl.col(column).list.eval(line).list.join("\n")


def answer_text(column: str) -> pl.Expr:
    """The content of the single answer message in `chosen` or `rejected`."""
    return pl.col(column).list.first().struct.field("content")


def normalized(text: pl.Expr, *, casefold: bool = False) -> pl.Expr:
    """Unicode NFKC with whitespace runs collapsed and ends stripped; optionally lower-cased."""
    text = text.str.normalize("NFKC").str.replace_all(r"\s+", " ").str.strip_chars()
    return text.str.to_lowercase() if casefold else text


def any_blank_message(column: str) -> pl.Expr:
    """True when the column has no message or any message is empty or whitespace-only."""
    blank = pl.element().struct.field("content").str.strip_chars().str.len_chars() == 0
    return (pl.col(column).list.len() == 0) | pl.col(column).list.eval(blank).list.any()


def _sha256_u64(values: pl.Series, salt: str) -> pl.Series:
    digests = (hashlib.sha256(f"{salt}\x00{value}".encode()).digest() for value in values)
    return pl.Series(values.name, [int.from_bytes(d[:8], "big") for d in digests], pl.UInt64)


def stable_hash(text: pl.Expr, *, salt: str = "") -> pl.Expr:
    """First 8 bytes of sha256(salt, text) as UInt64: unlike `Expr.hash`, stable across versions."""
    return text.map_batches(lambda s: _sha256_u64(s, salt), return_dtype=pl.UInt64)
