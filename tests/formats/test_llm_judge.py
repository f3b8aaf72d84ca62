"""FastChat llm_judge folders (issue 13 item 5), on tests/data/mt-bench-judgments."""

import json

import pytest
from click.testing import CliRunner

from orpo_pipeline.cli import cli
from orpo_pipeline.errors import ConfigError
from orpo_pipeline.formats import ConvertOptions, convert_files, write_pairs
from tests.formats.conftest import TEST_DATA

FOLDER = TEST_DATA / "mt-bench-judgments"
JUDGMENTS = FOLDER / "model_judgment" / "gpt-4_pair.jsonl"


def judgment_lines() -> list[dict]:
    return [json.loads(line) for line in JUDGMENTS.read_text().splitlines()]


def answer_turns(model: str, question_id: int) -> list[str]:
    for line in (FOLDER / "model_answer" / f"{model}.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["question_id"] == question_id:
            return row["choices"][0]["turns"]
    raise KeyError(question_id)


def question_turns(question_id: int) -> list[str]:
    for line in (FOLDER / "question.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["question_id"] == question_id:
            return row["turns"]
    raise KeyError(question_id)


@pytest.fixture(scope="module")
def result():
    return convert_files([FOLDER], ConvertOptions())


def test_the_folder_is_detected_and_every_judgment_is_explained(result):
    assert result.format == "llm_judge"
    assert result.kind == "pairwise"
    assert result.rows_in == len(judgment_lines()) == 13
    assert result.rows_in == result.rows_converted + result.rows_rejected
    rejects = dict(zip(result.rejects["line"], result.rejects["reason"], strict=True))
    assert rejects == {
        4: "judge_orders_disagree",  # g1 model_1, g2 tie
        5: "tie",
        7: "judge_error",
        10: "missing_answer",  # the baseline answered one turn; turn 2 was judged
        11: "missing_answer",  # no model answered question 131
        12: "unknown_question",  # question 999
    }
    pair_lines = sorted(result.pairs["_line"])
    assert pair_lines == [1, 2, 3, 6, 8, 9]
    # Line 13 repeats line 1's judgment (FastChat appends on a rerun): converted, same pair.
    assert result.rows_converted == len(pair_lines) + 1
    assert set(result.pairs["_file"]) == {str(JUDGMENTS)}
    assert result.inputs == (
        FOLDER / "question.jsonl",
        *sorted((FOLDER / "model_answer").glob("*.jsonl")),
        JUDGMENTS,
    )


def pair_at(result, line: int) -> dict:
    (row,) = result.pairs.filter(result.pairs["_line"] == line).iter_rows(named=True)
    return row


def test_winner_by_both_orders_is_chosen(result):
    first = pair_at(result, 1)  # question 81, model_1 (tiny-chat-v1) wins both orders
    assert first["prompt"] == [{"role": "user", "content": question_turns(81)[0]}]
    assert first["chosen"][0]["content"] == answer_turns("tiny-chat-v1", 81)[0]
    assert first["rejected"][0]["content"] == answer_turns("tiny-chat-v2", 81)[0]
    third = pair_at(result, 3)  # question 102, model_2 (tiny-chat-v1) wins
    assert third["chosen"][0]["content"] == answer_turns("tiny-chat-v1", 102)[0]
    assert third["rejected"][0]["content"] == answer_turns("tiny-chat-v2", 102)[0]


def test_turn_two_judgments_give_two_turn_prompts(result):
    line_8 = pair_at(result, 8)  # question 81 turn 2, model_1 (tiny-chat-v1) wins
    questions = question_turns(81)
    assert line_8["prompt"] == [
        {"role": "user", "content": questions[0]},
        {"role": "assistant", "content": answer_turns("tiny-chat-v1", 81)[0]},
        {"role": "user", "content": questions[1]},
    ]
    assert line_8["chosen"][0]["content"] == answer_turns("tiny-chat-v1", 81)[1]
    assert line_8["rejected"][0]["content"] == answer_turns("tiny-chat-v2", 81)[1]
    # The earlier answer in the prompt is the winner's own, even when the winner is model_2.
    line_9 = pair_at(result, 9)
    assert line_9["prompt"][1]["content"] == answer_turns("tiny-chat-v1", 101)[0]
    assert line_9["chosen"][0]["content"] == answer_turns("tiny-chat-v1", 101)[1]


def test_reject_details_name_the_verdicts_and_files(result):
    details = dict(zip(result.rejects["line"], result.rejects["detail"], strict=True))
    assert "g1_winner='model_1' but g2_winner='tie'" in details[4]
    assert "gpt-3.5-turbo.jsonl has 1 answer turn(s) for question 102 turn 2" in details[10]
    assert "question_id 999 is not in question.jsonl" in details[12]


def test_the_three_paths_give_the_same_pairs(result):
    paths = [FOLDER / "question.jsonl", FOLDER / "model_answer", JUDGMENTS]
    again = convert_files(paths, ConvertOptions())
    assert again.format == "llm_judge"
    assert again.pairs.equals(result.pairs)
    assert again.rejects.equals(result.rejects)


def test_a_folder_without_judgments_is_a_clear_error(tmp_path):
    (tmp_path / "model_answer").mkdir()
    (tmp_path / "model_judgment").mkdir()
    (tmp_path / "question.jsonl").write_text((FOLDER / "question.jsonl").read_text())
    (tmp_path / "model_answer" / "a.jsonl").write_text("")
    with pytest.raises(ConfigError, match=r"no pairwise judgments \(\*_pair.jsonl\)"):
        convert_files([tmp_path], ConvertOptions())


def test_cli_report_counts_every_judgment_by_file(tmp_path):
    out = tmp_path / "mt.parquet"
    done = CliRunner().invoke(cli, ["convert", str(FOLDER), "-o", str(out)])
    assert done.exit_code == 0, done.output
    assert "rows converted  7 (1 agreeing with a row that gave the pair)" in done.output
    report = json.loads((tmp_path / "mt.report.json").read_text())
    assert report["counts"]["rows_in"] == 13
    assert report["counts"]["rows_without_own_pair"] == 1
    assert report["by_file"] == {
        str(JUDGMENTS): {"rows_in": 13, "rows_rejected": 6, "pairs_out": 6}
    }
    inputs = [item["path"] for item in report["conversion"]["inputs"]]
    assert inputs[0].endswith("question.jsonl")
    assert inputs[-1] == str(JUDGMENTS)


def test_written_pairs_load_in_datasets(result, tmp_path):
    import datasets

    paths = write_pairs(result, tmp_path / "mt.parquet")
    loaded = datasets.load_dataset("parquet", data_files=str(paths["pairs"]), split="train")
    assert loaded.num_rows == 6
