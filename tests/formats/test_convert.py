import gzip
import json

import datasets
import polars as pl
import pyarrow.parquet as pq
import pytest
from trl.data_utils import is_conversational, maybe_apply_chat_template

from orpo_pipeline.errors import ConfigError, DataError
from orpo_pipeline.formats import ConvertOptions, convert_files, format_summary, write_pairs
from orpo_pipeline.formats.writer import PARQUET_METADATA_KEY
from orpo_pipeline.records import PAIR_SCHEMA, PreferencePair
from tests.formats.conftest import HH, TEST_DATA, write_jsonl
from tests.formats.test_generate import tiny_tokenizer

# file under tests/data -> (format, rows in, rows converted, pairs out, rejects by reason); SFT
# files use negatives="other_prompt" so the counts need no model. Large files are cut (SOURCE.md).
REAL_DATA = {
    "alpaca-eval/example/outputs.json": ("alpaca", 200, 200, 200, {}),
    "alpaca-eval/results/alpaca-7b/alpaca_eval_gpt4/annotations.json": (
        "alpaca_eval",
        213,
        197,
        197,
        {"tie": 16},
    ),
    "alpaca-eval/results/text_davinci_001/alpaca_eval_gpt4/annotations.json": (
        "alpaca_eval",
        218,
        195,
        195,
        {"tie": 20, "empty_response": 2, "judge_error": 1},
    ),
    "arena-hard-auto/arena-hard-v0.1/model_answer/gpt-4-0314.jsonl": (
        "openai_messages",
        200,
        200,
        200,
        {},
    ),
    "fastchat-dummy-sharegpt/dummy_conversation.json": ("sharegpt", 500, 500, 500, {}),
    "llamafactory-demo-data/alpaca_en_demo.json": ("alpaca", 200, 200, 200, {}),
    "llamafactory-demo-data/dpo_en_demo.json": ("sharegpt_preference", 200, 200, 200, {}),
    "llamafactory-demo-data/dpo_zh_demo.json": ("sharegpt_preference", 200, 200, 200, {}),
    "llamafactory-demo-data/glaive_toolcall_en_demo.json": ("sharegpt", 200, 200, 200, {}),
    "llamafactory-demo-data/identity.json": ("alpaca", 91, 91, 91, {}),
    "llamafactory-demo-data/kto_en_demo.json": ("kto", 257, 108, 107, {"no_desirable_answer": 149}),
    "llamafactory-demo-data/v1_dpo_demo.jsonl": ("llamafactory_v1", 10, 10, 10, {}),
    "llamafactory-demo-data/v1_sft_demo.jsonl": ("openai_messages", 200, 200, 200, {}),
    "oasst-en100-trees/en_100_message.jsonl": ("oasst", 100, 100, 212, {}),
    "oasst-en100-trees/en_100_tree.jsonl": ("oasst", 100, 100, 212, {}),
    "openai-cookbook-toy-chat/toy_chat_fine_tuning.jsonl": (
        "openai_messages",
        5,
        4,
        4,
        {"prompt_not_ending_with_user": 1},
    ),
    "orpo-mistral-outputs/outputs/alpacaeval/Mistral-ORPO-beta.json": ("alpaca", 200, 200, 200, {}),
    "self-instruct/data/finetuning/t0_train_50k/data_per_template/ag_news_classify.jsonl": (
        "prompt_completion",
        200,
        200,
        200,
        {},
    ),
    "self-instruct/data/seed_tasks.jsonl": ("alpaca", 175, 175, 175, {}),
    "self-instruct/human_eval/user_oriented_instructions.jsonl": ("alpaca", 252, 252, 252, {}),
}
# Prompt lists, answers without their prompts and configs: no pairs can be made from them.
NOT_PAIR_DATA = {
    "arena-hard-auto/arena-hard-v0.1/question.jsonl": "no known format matches",
    "arena-hard-auto/arena-hard-v2.0/question.jsonl": "no known format matches",
    "fastchat-llm-judge/judge_prompts.jsonl": "no known format matches",
    "fastchat-llm-judge/mt_bench/question.jsonl": "no known format matches",
    "fastchat-llm-judge/mt_bench/reference_answer/gpt-4.jsonl": "no known format matches",
    "fastchat-llm-judge/vicuna_bench/question.jsonl": "no known format matches",
    "ifeval/input_data.jsonl": "no known format matches",
    "llamafactory-demo-data/dataset_info.json": "expected an array of records",
    "orpo-mistral-outputs/outputs/mtbench/Mistral-ORPO-beta.jsonl": "no known format matches",
}


def test_every_vendored_file_is_covered():
    vendored = [
        source.parent
        for source in TEST_DATA.glob("*/SOURCE.md")
        if "## Vendored into tests/data" in source.read_text(encoding="utf-8")
    ]
    files = {
        str(path.relative_to(TEST_DATA))
        for folder in vendored
        for path in folder.rglob("*")
        if path.is_file() and path.name not in {"SOURCE.md", "LICENSE"}
    }
    assert files == set(REAL_DATA) | set(NOT_PAIR_DATA)


@pytest.mark.parametrize("name", sorted(REAL_DATA))
def test_real_data_converts_with_known_counts(name):
    fmt, rows_in, rows_converted, pairs_out, rejects = REAL_DATA[name]
    result = convert_files([TEST_DATA / name], ConvertOptions(negatives="other_prompt"))
    assert result.format == fmt
    assert (result.rows_in, result.rows_converted, result.pairs.height) == (
        rows_in,
        rows_converted,
        pairs_out,
    )
    assert result.reject_counts() == rejects
    assert result.rows_in == result.rows_converted + result.rows_rejected
    assert result.pairs.columns == [*PAIR_SCHEMA.names(), "_file", "_line"]
    for row in result.pairs.select(PAIR_SCHEMA.names()).head(50).iter_rows(named=True):
        PreferencePair.model_validate(row)


@pytest.mark.parametrize("name", sorted(NOT_PAIR_DATA))
def test_files_without_pairs_get_one_clear_error(name):
    with pytest.raises(DataError, match=NOT_PAIR_DATA[name]) as caught:
        convert_files([TEST_DATA / name], ConvertOptions())
    if "no known format" in NOT_PAIR_DATA[name]:
        message = str(caught.value)
        assert "Formats looked for" in message
        assert "hh_rlhf" in message
        assert "--mapping" in message


def test_several_files_and_explicit_format(tmp_path):
    copy = tmp_path / "copy.jsonl.gz"
    copy.write_bytes((HH).read_bytes())
    result = convert_files([HH, copy], ConvertOptions(format="hh_rlhf", source="hh"))
    assert result.rows_in == 2 * 2312
    assert result.pairs["_file"].n_unique() == 2
    assert result.pairs["source"].unique().to_list() == ["hh"]


def test_inputs_of_different_formats_are_refused(tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "Q", "chosen": "A", "rejected": "B"}])
    with pytest.raises(ConfigError, match="different formats"):
        convert_files([pairs, HH], ConvertOptions())


def test_unknown_format_name_lists_formats(tmp_path):
    with pytest.raises(ConfigError, match="choose one of: hh_rlhf"):
        convert_files([HH], ConvertOptions(format="hh"))


def test_every_row_lands_in_output_or_rejects(tmp_path):
    path = tmp_path / "messy.jsonl"
    good = {"prompt": "Q", "chosen": "Yes.", "rejected": "No."}
    path.write_bytes(
        b"\n".join(
            [
                json.dumps(good).encode(),
                b"{broken",
                b'{"prompt": "\xff"}',
                json.dumps({"prompt": "Q", "chosen": "", "rejected": "No."}).encode(),
                json.dumps({"prompt": "Q", "chosen": 3, "rejected": "No."}).encode(),
                json.dumps({"prompt": "Q", "rejected": "No."}).encode(),
                json.dumps(good).encode(),
            ]
        )
    )
    result = convert_files([path], ConvertOptions(format="trl_preference"))
    assert result.rows_in == 7
    assert result.pairs["_line"].to_list() == [1, 7]
    assert result.rejects.select("line", "reason").rows() == [
        (2, "invalid_json"),
        (3, "invalid_utf8"),
        (4, "empty_response"),
        (5, "wrong_type"),
        (6, "missing_field"),
    ]
    assert result.rejects["raw"][1] == '{"prompt": "\ufffd"}'
    summary = format_summary(result)
    assert "rows rejected   5" in summary
    assert "invalid_json" in summary


@pytest.fixture(scope="module")
def hh_result():
    return convert_files([HH], ConvertOptions())


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_written_files_load_with_datasets_and_feed_trl(hh_result, tmp_path, suffix):
    out = tmp_path / f"pairs{suffix}"
    paths = write_pairs(hh_result, out)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [
            f"pairs{suffix}",
            f"pairs.rejects{suffix}",
            f"pairs.provenance{suffix}",
            "pairs.report.json",
        ]
    )
    report = json.loads(paths["report"].read_text())
    assert report["counts"] == {
        "rows_in": 2312,
        "rows_converted": 2299,
        "rows_rejected": 13,
        "pairs_out": 2299,
        "rows_without_own_pair": 0,
        "blank_lines": 0,
    }
    assert report["rejects_by_reason"] == {"roles_not_alternating": 9, "empty_response": 4}
    assert report["conversion"]["format"] == "hh_rlhf"
    assert len(report["conversion"]["inputs"][0]["sha256"]) == 64

    loader = "parquet" if suffix == ".parquet" else "json"
    loaded = datasets.load_dataset(
        loader, data_files=str(out), split="train", cache_dir=str(tmp_path / "hf")
    )
    assert loaded.column_names == PAIR_SCHEMA.names()
    assert loaded.num_rows == 2299
    row = loaded[0]
    assert is_conversational(row)
    rendered = maybe_apply_chat_template(
        {key: row[key] for key in ("prompt", "chosen", "rejected")}, tiny_tokenizer()
    )
    assert rendered["prompt"].endswith("<|im_start|> assistant")
    assert rendered["chosen"].strip().endswith("<|im_end|>")
    provenance = (
        pl.read_parquet(paths["provenance"])
        if suffix == ".parquet"
        else pl.read_ndjson(paths["provenance"])
    )
    assert provenance.columns == ["id", "file", "line"]
    assert provenance["line"][0] == 1


def test_parquet_carries_the_conversion_metadata(hh_result, tmp_path):
    write_pairs(hh_result, tmp_path / "pairs.parquet")
    metadata = pq.ParquetFile(tmp_path / "pairs.parquet").metadata.metadata
    conversion = json.loads(metadata[PARQUET_METADATA_KEY.encode()])
    assert conversion["options"]["rejected"] == "random_lower"


def test_write_refuses_other_extensions(hh_result, tmp_path):
    with pytest.raises(ConfigError, match=r"\.parquet or \.jsonl"):
        write_pairs(hh_result, tmp_path / "pairs.csv")


def test_compressed_json_array_input(tmp_path):
    rows = [{"prompt": "Q", "chosen": "Yes.", "rejected": "No."}]
    with gzip.open(tmp_path / "pairs.json.gz", "wt") as stream:
        json.dump({"train": rows}, stream)
    assert convert_files([tmp_path / "pairs.json.gz"], ConvertOptions()).pairs.height == 1
