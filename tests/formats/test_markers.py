"""HH role markers inside text fields (issue 13 item 6), on tests/data/hh-transcript-csv."""

import gzip
import json
from collections import Counter
from pathlib import Path

from orpo_pipeline.formats import ConvertOptions, convert_files, write_pairs
from orpo_pipeline.formats.markers import answer_text, prompt_turns
from tests.formats.conftest import HH, TEST_DATA

CSV = TEST_DATA / "hh-transcript-csv" / "pairs.csv"


def test_transcripts_in_a_csv_become_the_same_pairs_as_the_hh_file(tmp_path):
    result = convert_files([CSV], ConvertOptions())
    assert result.format == "trl_preference"
    assert result.rows_in == result.rows_converted == 8
    # The CSV was cut from the first rows of the HH file: the pairs must be HH's own.
    head = tmp_path / "head.jsonl"
    with gzip.open(HH, "rt", encoding="utf-8") as stream:
        head.write_text("".join(next(stream) for _ in range(40)))
    hh = convert_files([head], ConvertOptions(format="hh_rlhf"))
    hh_pairs = {row["id"]: row for row in hh.pairs.iter_rows(named=True)}
    for row in result.pairs.iter_rows(named=True):
        assert row["id"] in hh_pairs
        assert row["prompt"] == hh_pairs[row["id"]]["prompt"]
    assert result.markers_changed == {"transcripts_split": 8, "labels_stripped": 8}
    paths = write_pairs(result, tmp_path / "pairs.jsonl")
    report = json.loads(paths["report"].read_text())
    assert report["role_markers_changed"] == {"transcripts_split": 8, "labels_stripped": 8}


def test_keep_leaves_the_text_as_it_is():
    result = convert_files([CSV], ConvertOptions(role_markers="keep"))
    assert result.markers_changed == {}
    first = result.pairs.row(0, named=True)
    assert len(first["prompt"]) == 1
    assert first["prompt"][0]["content"].startswith("\n\nHuman:")
    assert first["chosen"][0]["content"].startswith("Assistant: ")


def test_only_text_starting_with_a_marker_is_touched():
    changes: Counter[str] = Counter()
    quoted = "Summarize this dialogue:\n\nHuman: hi\n\nAssistant: hello"
    assert prompt_turns([{"role": "user", "content": quoted}], changes) == [
        {"role": "user", "content": quoted}
    ]
    # A user message whose first marker names the other role is not rewritten.
    odd = [{"role": "user", "content": "Assistant: I am the user"}]
    assert prompt_turns(odd, changes) == odd
    assert answer_text("Humans need water.", changes) == "Humans need water."
    assert changes == {}
    assert answer_text("Human: and then?", changes) == "and then?"
    assert prompt_turns([{"role": "user", "content": "Human: one question"}], changes) == [
        {"role": "user", "content": "one question"}
    ]
    assert changes == {"labels_stripped": 2}


def test_sft_and_judgment_records_are_cleaned_too(tmp_path):
    sft = tmp_path / "sft.jsonl"
    rows = [
        {"prompt": "\n\nHuman: Name a colour.\n\nAssistant:", "completion": "Assistant: Blue."},
        {"prompt": "Human: Name a fruit.", "completion": " Apple."},
    ]
    sft.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = convert_files([sft], ConvertOptions(negatives="other_prompt"))
    prompts = [row[0]["content"] for row in result.pairs["prompt"]]
    assert sorted(prompts) == ["Name a colour.", "Name a fruit."]
    assert sorted(row[0]["content"] for row in result.pairs["chosen"]) == ["Apple.", "Blue."]
    assert result.markers_changed == {"transcripts_split": 1, "labels_stripped": 2}


def test_a_quoting_prompt_is_kept_whole(tmp_path: Path):
    path = tmp_path / "pairs.jsonl"
    quoted = "Who is rude here?\n\nHuman: hi\n\nAssistant: go away"
    path.write_text(
        json.dumps({"prompt": quoted, "chosen": "The assistant.", "rejected": "No one."})
    )
    result = convert_files([path], ConvertOptions())
    assert result.pairs["prompt"][0].to_list() == [{"role": "user", "content": quoted}]


def test_hh_answers_that_start_with_a_human_label_are_counted():
    # The HH harmless-base test file itself holds 32 assistant answers that begin "Human:".
    result = convert_files([HH], ConvertOptions())
    assert result.markers_changed == {"labels_stripped": 32}
    answers = [*result.pairs["chosen"], *result.pairs["rejected"]]
    assert not any(answer[0]["content"].startswith(("Human:", "Assistant:")) for answer in answers)
