import polars as pl
import pytest
from pydantic import ValidationError

from orpo_pipeline.stages.base import REASON, ROW
from orpo_pipeline.stages.mix import MixConfig, mix
from tests.stages.conftest import make_pair, pairs_frame

SIZES = {"web": 100, "books": 30, "code": 10}


def rows() -> list[dict]:
    result = []
    for source, size in SIZES.items():
        for i in range(size):
            result.append({**make_pair(f"{source} prompt {i}", "a", "b"), "source": source})
    return result


def counts(frame: pl.DataFrame) -> dict[tuple[str, str | None], int]:
    grouped = frame.group_by("source", REASON).len()
    return {(s, r): n for s, r, n in grouped.iter_rows()}


def test_weights_split_the_size_and_unlisted_sources_are_rejected():
    result = mix(pairs_frame(rows()), MixConfig(weights={"web": 2, "books": 1}, size=60)).collect()
    assert counts(result) == {
        ("web", None): 40,
        ("web", "not_sampled"): 60,
        ("books", None): 20,
        ("books", "not_sampled"): 10,
        ("code", "source_not_in_mix"): 10,
    }


def test_a_short_source_shrinks_the_mixture_instead_of_being_oversampled():
    config = MixConfig(weights={"web": 0.5, "books": 0.3, "code": 0.2}, size=100)
    result = mix(pairs_frame(rows()), config).collect()
    # code has 10 rows, enough for a mixture of 50: 25 web, 15 books, 10 code.
    kept = result.filter(pl.col(REASON).is_null()).group_by("source").len()
    assert dict(kept.iter_rows()) == {"web": 25, "books": 15, "code": 10}


def test_fractions_keep_a_share_of_each_source():
    config = MixConfig(fractions={"web": 0.25, "books": 1, "code": 0})
    result = mix(pairs_frame(rows()), config).collect()
    assert counts(result) == {
        ("web", None): 25,
        ("web", "not_sampled"): 75,
        ("books", None): 30,
        ("code", "not_sampled"): 10,
    }


def test_the_sample_depends_on_seed_and_ids_not_on_row_order():
    data = rows()
    config = MixConfig(fractions={"web": 0.5, "books": 0.5, "code": 0.5}, seed=1)

    def sampled(frame: pl.LazyFrame, config: MixConfig) -> set[str]:
        return set(mix(frame, config).filter(pl.col(REASON).is_null()).collect()["id"])

    forward = sampled(pairs_frame(data), config)
    backward = sampled(pairs_frame(data[::-1]), config)
    shuffled = sampled(pairs_frame(data).sort("id"), config)
    assert forward == backward == shuffled
    assert sampled(pairs_frame(data), config.model_copy(update={"seed": 2})) != forward
    assert len(forward) == 50 + 15 + 5


def test_counts_reconcile():
    lf = pairs_frame(rows())
    result = mix(lf, MixConfig(weights={"web": 1, "books": 1}, size=30)).collect()
    assert result.height == lf.collect().height
    assert sorted(result[ROW].to_list()) == list(range(140))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "either `weights`"),
        ({"weights": {"a": 1}}, "go together"),
        ({"weights": {"a": 1}, "size": 3, "fractions": {"a": 1}}, "either `weights`"),
        ({"fractions": {"a": 1.5}}, "at most 1"),
        ({"fractions": {"a": 0}}, "at least one > 0"),
        ({"weights": {"a": -1, "b": 2}, "size": 3}, ">= 0"),
    ],
)
def test_config_errors(settings, message):
    with pytest.raises(ValidationError, match=message):
        MixConfig(**settings)
