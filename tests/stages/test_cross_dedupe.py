import polars as pl
import pytest

from orpo_pipeline.errors import ConfigError, DataError
from orpo_pipeline.records import PAIR_SCHEMA
from orpo_pipeline.stages.base import REASON
from orpo_pipeline.stages.cross_dedupe import FOUND_IN, CrossDedupeConfig, cross_dedupe
from tests.stages.conftest import make_pair, pairs_frame

ROWS = [
    make_pair("What is  the capital of France?", "Paris.", "Lyon."),
    make_pair("what is the capital of france?", "Paris.", "Lyon."),
    make_pair("What is the capital of France?", "Paris!", "Nice."),
    make_pair("Name a prime number.", "7", "8"),
]


@pytest.fixture
def other_pairs(tmp_path):
    path = tmp_path / "other.parquet"
    pl.DataFrame(
        [make_pair("What is the capital of France?", "Paris.", "Lyon.")], schema=PAIR_SCHEMA
    ).write_parquet(path)
    return path


def tagged(config: CrossDedupeConfig) -> pl.DataFrame:
    return cross_dedupe(pairs_frame(ROWS), config).collect()


def test_prompt_scope_matches_normalised_prompts(other_pairs):
    result = tagged(CrossDedupeConfig(others=(other_pairs,)))
    assert result[REASON].to_list() == ["in_other_dataset", None, "in_other_dataset", None]
    assert result[FOUND_IN].to_list() == [str(other_pairs), None, str(other_pairs), None]
    casefolded = tagged(CrossDedupeConfig(others=(other_pairs,), casefold=True))
    assert casefolded[REASON].to_list() == ["in_other_dataset"] * 3 + [None]


def test_pair_scope_needs_the_whole_pair(other_pairs):
    result = tagged(CrossDedupeConfig(others=(other_pairs,), scope="pair"))
    assert result[REASON].to_list() == ["in_other_dataset", None, None, None]


def test_prompt_lists_and_the_first_file_that_matches(tmp_path, other_pairs):
    listed = tmp_path / "prompts.txt"
    listed.write_text("Name a prime number.\nWHAT IS THE CAPITAL OF FRANCE?\n")
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text('{"prompt": "name a prime number."}\n')
    result = tagged(CrossDedupeConfig(others=(jsonl, listed, other_pairs), casefold=True))
    assert result[REASON].to_list() == ["in_other_dataset"] * 4
    assert result[FOUND_IN].to_list() == [str(listed), str(listed), str(listed), str(jsonl)]


def test_reference_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        tagged(CrossDedupeConfig(others=(tmp_path / "missing.parquet",)))
    with pytest.raises(ConfigError, match=r"expected a \.parquet"):
        tagged(CrossDedupeConfig(others=(tmp_path / "data.csv",)))
    listed = tmp_path / "prompts.txt"
    listed.write_text("a prompt\n")
    with pytest.raises(DataError, match=r"no column\(s\) \['chosen', 'rejected'\]"):
        tagged(CrossDedupeConfig(others=(listed,), scope="pair"))
