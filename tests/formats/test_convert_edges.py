"""Exit status, salvage, record positions and other edges of `convert` (issue 13 items 2-4,
8, 9), each on a realistic file under tests/data or cut from the vendored HH file."""

import csv
import gzip
import json

import polars as pl
import pytest
from click.testing import CliRunner

from orpo_pipeline.cli import cli
from orpo_pipeline.errors import DataError
from orpo_pipeline.formats import ConvertOptions, convert_files, load_mapping
from orpo_pipeline.formats.readers import BadRow, read_rows
from tests.formats.conftest import HH, TEST_DATA

DATA = TEST_DATA
UNJUDGED = DATA / "alpaca-eval-cut" / "annotations-unjudged.json"
OUTPUTS = DATA / "alpaca-eval-cut" / "outputs.json"
SFT = DATA / "alpaca-response-sft" / "train.jsonl"
TRANSCRIPTS = DATA / "hh-transcript-csv" / "pairs.csv"


def convert_cli(*args: str):
    return CliRunner().invoke(cli, ["convert", *map(str, args)])


# Item 2: Alpaca `response` files keep their `input`.


def sft_rows() -> list[dict]:
    return [json.loads(line) for line in SFT.read_text().splitlines() if line.strip()]


def expected_prompts() -> list[str]:
    return [
        f"{row['instruction']}\n{row['input']}" if row["input"] else row["instruction"]
        for row in sft_rows()
    ]


def test_alpaca_with_a_response_key_is_detected_with_its_input():
    result = convert_files([SFT], ConvertOptions())
    assert result.format == "alpaca"
    assert result.rows_in == result.rows_converted == 10
    prompts = [row[0]["content"] for row in result.pairs["prompt"]]
    assert prompts == expected_prompts()
    assert [row[0]["content"] for row in result.pairs["chosen"]] == [
        row["response"] for row in sft_rows()
    ]


@pytest.mark.parametrize("key", ["answer", "completion"])
def test_alpaca_detection_accepts_the_common_answer_keys(tmp_path, key):
    path = tmp_path / "sft.jsonl"
    rows = [{"instruction": row["instruction"], key: row["response"]} for row in sft_rows()]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert convert_files([path], ConvertOptions()).format == "alpaca"


def test_a_mapping_that_drops_input_warns_with_the_count():
    mapping = load_mapping("{prompt: instruction, response: response}")
    result = convert_files([SFT], ConvertOptions(mapping=mapping))
    with_input = sum(bool(row["input"]) for row in sft_rows())
    assert with_input == 6
    (warning,) = result.warnings
    assert f"'input' ({with_input} rows)" in warning
    assert "'category' (10 rows)" in warning


def test_the_mapping_input_key_joins_like_alpaca():
    mapping = load_mapping("{prompt: instruction, input: input, response: response}")
    result = convert_files([SFT], ConvertOptions(mapping=mapping))
    assert [row[0]["content"] for row in result.pairs["prompt"]] == expected_prompts()
    (warning,) = result.warnings
    assert "'input'" not in warning


# Item 3: no pairs is a failure unless asked for.


def test_no_pairs_exits_1_with_the_summary_and_keeps_the_rejects(tmp_path):
    out = tmp_path / "pairs.parquet"
    done = convert_cli(UNJUDGED, "-o", out, "--format", "alpaca_eval")
    assert done.exit_code == 1
    assert "no pairs converted" in done.output
    assert "missing_field" in done.output and "10" in done.output
    assert "Traceback" not in done.output
    assert not out.exists()
    rejects = pl.read_parquet(tmp_path / "pairs.rejects.parquet")
    assert rejects.height == 10
    report = json.loads((tmp_path / "pairs.report.json").read_text())
    assert report["counts"]["pairs_out"] == 0


def test_allow_empty_writes_the_empty_file(tmp_path):
    out = tmp_path / "pairs.parquet"
    done = convert_cli(UNJUDGED, "-o", out, "--format", "alpaca_eval", "--allow-empty")
    assert done.exit_code == 0, done.output
    assert pl.read_parquet(out).height == 0


# Item 4: a missing verdict is named, and does not make a judgment format match.


def test_unjudged_annotations_are_not_detected_as_alpaca_eval():
    with pytest.raises(DataError, match="no known format matches"):
        convert_files([UNJUDGED], ConvertOptions())


def test_a_missing_preference_is_missing_field():
    result = convert_files([UNJUDGED], ConvertOptions(format="alpaca_eval"))
    assert set(result.rejects["reason"]) == {"missing_field"}
    assert all("'preference'" in detail for detail in result.rejects["detail"])


# Item 8: a gzip file cut short.


@pytest.fixture
def cut_gzip(tmp_path):
    """The first 300 lines of the HH test file, gzipped and cut at 60% of their bytes."""
    with gzip.open(HH, "rb") as stream:
        lines = [next(stream) for _ in range(300)]
    whole = gzip.compress(b"".join(lines), mtime=0)
    path = tmp_path / "hh-cut.jsonl.gz"
    path.write_bytes(whole[: int(len(whole) * 0.6)])
    return path, lines


def test_a_cut_gzip_is_refused_by_default(cut_gzip):
    path, _ = cut_gzip
    with pytest.raises(DataError, match=r"cut short.*--salvage"):
        convert_files([path], ConvertOptions())


def test_salvage_keeps_every_complete_line(cut_gzip, tmp_path):
    path, lines = cut_gzip
    result = convert_files([path], ConvertOptions(salvage=True))
    (truncated,) = result.rejects.filter(pl.col("reason") == "truncated_file").iter_rows(named=True)
    recovered = truncated["line"] - 1
    assert 0 < recovered < 300
    assert (
        f"lines 1-{recovered} ({sum(map(len, lines[:recovered]))} uncompressed bytes)"
        in (truncated["detail"])
    )
    assert result.rows_in == recovered + 1
    whole = tmp_path / "head.jsonl"
    whole.write_bytes(b"".join(lines[:recovered]))
    reference = convert_files([whole], ConvertOptions())
    columns = ["id", "prompt", "chosen", "rejected", "_line"]
    assert result.pairs.select(columns).equals(reference.pairs.select(columns))
    done = convert_cli(path, "-o", tmp_path / "out.parquet", "--salvage")
    assert done.exit_code == 0, done.output
    assert "truncated_file" in done.output


# Item 9: small ones.


def test_exit_codes_follow_click_usage_errors_and_user_errors(tmp_path):
    assert convert_cli(tmp_path / "nope.jsonl", "-o", tmp_path / "o.parquet").exit_code == 2
    assert convert_cli(SFT, "-o", tmp_path / "o.parquet", "--bogus").exit_code == 2
    data_error = convert_cli(UNJUDGED, "-o", tmp_path / "o.parquet")
    assert data_error.exit_code == 1
    assert "Traceback" not in data_error.output


def test_a_null_line_is_called_null(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('null\n[1]\n"text"\n')
    details = [row.detail for row in read_rows(path) if isinstance(row, BadRow)]
    assert details == [
        "the line holds a JSON null, not an object",
        "the line holds a JSON array, not an object",
        "the line holds a JSON string, not an object",
    ]


def test_json_array_provenance_gives_the_line_where_each_record_starts(tmp_path):
    result = convert_files([OUTPUTS], ConvertOptions())
    starts = [
        number for number, line in enumerate(OUTPUTS.read_text().splitlines(), 1) if line == "  {"
    ]
    assert sorted(result.pairs["_line"]) == starts
    assert starts[:2] == [2, 9]


def test_csv_provenance_gives_the_line_where_each_record_starts(tmp_path):
    with TRANSCRIPTS.open(newline="", encoding="utf-8") as stream:
        records = list(csv.reader(stream))[1:]
    starts, line = [], 2
    for record in records:
        starts.append(line)
        line += sum(value.count("\n") for value in record) + 1
    result = convert_files([TRANSCRIPTS], ConvertOptions())
    assert sorted(result.pairs["_line"]) == starts
    assert starts[-1] > len(records) + 1  # records span several lines: not record numbers


def test_report_names_what_line_means_and_counts_blank_lines(tmp_path):
    done = convert_cli(SFT, "-o", tmp_path / "pairs.parquet")
    assert done.exit_code == 0, done.output
    assert "blank lines     2 (not rows)" in done.output
    report = json.loads((tmp_path / "pairs.report.json").read_text())
    assert report["counts"]["blank_lines"] == 2
    assert report["counts"]["rows_in"] == 10
    assert report["conversion"]["inputs"][0]["line_means"].startswith("the text line")
    parquet = tmp_path / "pairs.parquet"
    again = convert_cli(parquet, "-o", tmp_path / "again.parquet")
    assert again.exit_code == 0, again.output
    report = json.loads((tmp_path / "again.report.json").read_text())
    assert report["conversion"]["inputs"][0]["line_means"].startswith("the record number")


def test_deep_nesting_in_an_unread_field_does_not_reject_the_row(tmp_path):
    # An OpenAI-messages file whose rows carry a tool schema nested 250 levels deep.
    deep: dict = {}
    for _ in range(250):
        deep = {"items": deep}
    messages = [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
    ]
    other = [
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "7"},
    ]
    path = tmp_path / "chat.jsonl"
    rows = [
        {"messages": messages, "tools": deep},
        {"messages": other, "tools": {}},
        {"messages": [{"role": "user", "content": deep}, messages[1]]},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = convert_files([path], ConvertOptions())
    assert result.format == "openai_messages"
    assert sorted(result.pairs["_line"]) == [1, 2]
    (reject,) = result.rejects.iter_rows(named=True)
    assert (reject["line"], reject["reason"]) == (3, "too_deeply_nested")


def test_a_compact_json_array_falls_back_to_record_numbers(tmp_path):
    compact = tmp_path / "outputs.json"
    compact.write_text(json.dumps(json.loads(OUTPUTS.read_text())))  # one line
    result = convert_files([compact], ConvertOptions())
    assert sorted(result.pairs["_line"]) == list(range(1, 13))
    done = convert_cli(compact, "-o", tmp_path / "pairs.parquet")
    assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "pairs.report.json").read_text())
    assert report["conversion"]["inputs"][0]["line_means"].startswith("the record number")
