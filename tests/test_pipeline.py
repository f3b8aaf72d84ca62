import gzip
import importlib
import json
import shutil
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
import yaml
from polars.testing import assert_frame_equal

from orpo_pipeline import cache, pipeline
from orpo_pipeline.config_files import load_config
from orpo_pipeline.io import ROW_GROUP, write_frame, write_parts
from orpo_pipeline.pipeline import (
    PipelineSpec,
    read_reject_labels,
    run_pipeline,
    write_report,
    write_run_data_card,
)
from orpo_pipeline.runs import diff_manifests, load_manifest, verify_run
from orpo_pipeline.stages.decontaminate import DecontaminateConfig
from tests.conftest import REPO


def hh_row(human: str, chosen: str, rejected: str) -> dict:
    prefix = f"\n\nHuman: {human}\n\nAssistant:"
    return {"chosen": f"{prefix} {chosen}", "rejected": f"{prefix} {rejected}"}


def write_hh(path, rows):
    with gzip.open(path, "wt") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")


@pytest.fixture
def recipe(tmp_path):
    rows = [hh_row(f"question {i}", f"good answer {i}", f"bad answer {i}") for i in range(40)]
    rows += [rows[3], hh_row("same", "an  answer", "an answer"), "{not json", hh_row("q", "", "x")]
    write_hh(tmp_path / "hh.jsonl.gz", rows)
    spec = {
        "name": "tiny",
        "source": {"inputs": [str(tmp_path / "hh.jsonl.gz")], "format": "hh_rlhf"},
        "stages": [
            {"stage": "validate"},
            {"stage": "dedupe"},
            {"stage": "filter"},
            {"stage": "split", "eval_size": 8},
        ],
        "output_dir": str(tmp_path / "out"),
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path / "recipe.yaml"


def test_counts_reconcile_and_every_removed_row_has_a_reason(recipe):
    report = run_pipeline(load_config(recipe, PipelineSpec))
    convert, *stages = report.stages
    assert convert.rows_in == 44
    assert convert.rows_in == convert.rows_out + sum(convert.rejected.values())
    for before, stage in zip(report.stages, stages, strict=False):
        assert stage.rows_in == before.rows_out
        assert stage.rows_in == stage.rows_out + sum(stage.rejected.values())
    rejected = {reason for s in report.stages for reason in s.rejected}
    assert {"duplicate", "chosen_equals_rejected"} <= rejected
    assert report.outputs["train.parquet"] + report.outputs["eval.parquet"] == stages[-1].rows_out
    out = report.output_dir
    train, evaluation = (
        pl.read_parquet(out / "train.parquet"),
        pl.read_parquet(out / "eval.parquet"),
    )
    assert not set(train["id"]) & set(evaluation["id"])
    assert train.columns == [
        "id",
        "prompt",
        "chosen",
        "rejected",
        "source",
        "score_chosen",
        "score_rejected",
    ]
    rejects = pl.concat(
        [
            pl.read_ndjson(p).select("reason")
            for p in sorted((out / "rejects").glob("*.jsonl"))
            if p.stat().st_size
        ],
    )
    total_rejected = sum(sum(s.rejected.values()) for s in report.stages)
    assert rejects.height == total_rejected
    dup = pl.read_ndjson(out / "rejects" / "02_dedupe.jsonl")
    assert dup["reason"].to_list() == ["duplicate"]
    assert dup["line"].to_list() == [41]


def test_rerun_skips_every_stage_and_writes_identical_files(recipe):
    spec = load_config(recipe, PipelineSpec)
    first = run_pipeline(spec)
    files = {p.name: p.read_bytes() for p in first.output_dir.glob("*.parquet")}
    second = run_pipeline(spec)
    assert all(stage.cached for stage in second.stages)
    assert not any(stage.cached for stage in first.stages)
    assert {p.name: p.read_bytes() for p in second.output_dir.glob("*.parquet")} == files
    assert [s.rejected for s in first.stages] == [s.rejected for s in second.stages]


def test_a_changed_config_value_changes_only_later_stage_keys(recipe):
    first = run_pipeline(load_config(recipe, PipelineSpec))
    changed = run_pipeline(load_config(recipe, PipelineSpec, ["stages.3.eval_size=12"]))
    assert [s.cached for s in changed.stages] == [True, True, True, True, False]
    assert [a.key == b.key for a, b in zip(first.stages, changed.stages, strict=True)] == [
        True,
        True,
        True,
        True,
        False,
    ]


def test_a_changed_input_row_changes_every_key_and_the_input_hash(recipe, tmp_path):
    spec = load_config(recipe, PipelineSpec)
    first = run_pipeline(spec)
    before = load_manifest(first.output_dir)
    shutil.copytree(first.output_dir, tmp_path / "run_a")
    rows = [hh_row(f"question {i}", f"good answer {i}", f"bad answer {i}") for i in range(40)]
    rows[5] = hh_row("question 5", "a better answer", "bad answer 5")
    write_hh(spec.source.inputs[0], rows)
    second = run_pipeline(spec)
    assert not any(a.key == b.key for a, b in zip(first.stages, second.stages, strict=True))
    changes = diff_manifests(before, load_manifest(second.output_dir))
    assert list(changes["inputs"]) == [str(spec.source.inputs[0])]
    assert changes["config"] == {}
    assert set(changes["outputs"]) <= set(first.outputs)  # paths relative to the run
    assert changes["outputs"]
    assert any("input changed" in p for p in verify_run(before))


EXPECTED_ROWS_IN = {
    "default.yaml": 2312,
    "oasst_trees.yaml": 100,
    "alpaca_eval_judgments.yaml": 431,
    "sft_alpaca_to_pairs.yaml": 200,
}


MODEL_RECIPES = {"rlaif.yaml", "rlaif_serve.yaml"}
"""Recipes that sample and judge with a model: run (shortened) in tests/rlaif/test_recipes.py."""


def test_every_shipped_recipe_is_tested():
    shipped = {p.name for p in (REPO / "pipelines").glob("*.yaml")}
    assert shipped == set(EXPECTED_ROWS_IN) | MODEL_RECIPES


@pytest.mark.parametrize("name", sorted(EXPECTED_ROWS_IN))
def test_shipped_recipe_runs_on_the_real_data(name, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    spec = load_config(REPO / "pipelines" / name, PipelineSpec, [f"output_dir={tmp_path}"])
    report = run_pipeline(spec)
    convert, *stages = report.stages
    assert convert.rows_in == EXPECTED_ROWS_IN[name]
    assert convert.rows_in >= sum(convert.rejected.values())
    for before, stage in zip(report.stages, stages, strict=False):
        assert stage.rows_in == before.rows_out == stage.rows_out + sum(stage.rejected.values())
    assert sum(report.outputs.values()) == stages[-1].rows_out > 0
    train, held_out = (pl.read_parquet(tmp_path / f) for f in ("train.parquet", "eval.parquet"))
    prompts = [
        set(f["prompt"].list.eval(pl.element().struct.field("content")).list.join("\n"))
        for f in (train, held_out)
    ]
    assert not prompts[0] & prompts[1]


def test_default_recipe_counts(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    spec = load_config(
        REPO / "pipelines" / "default.yaml", PipelineSpec, [f"output_dir={tmp_path}"]
    )
    report = run_pipeline(spec)
    assert report.stages[0].rejected == {"empty_response": 4, "roles_not_alternating": 9}
    assert report.outputs == {"train.parquet": 2199, "eval.parquet": 100}


def stage_keys(report) -> dict[str, str]:
    return {stage.stage: stage.key for stage in report.stages}


@pytest.fixture
def two_sources(tmp_path):
    """Two HH files (two sources) with duplicates across them, near-duplicates and rejects."""
    first = [hh_row(f"question {i}", f"good answer {i}", f"bad answer {i}") for i in range(30)]
    second = [hh_row(f"question {i}", f"good answer {i}", f"bad answer {i}") for i in range(20, 45)]
    second += [hh_row("Question 3?", "yes", "no"), hh_row("same", "x  y", "x y")]
    write_hh(tmp_path / "a.jsonl.gz", first)
    write_hh(tmp_path / "b.jsonl.gz", second)
    (tmp_path / "other.txt").write_text("question 7\n")
    (tmp_path / "evals.txt").write_text("question 9\n")
    spec = {
        "name": "sharded",
        "source": {"inputs": [str(tmp_path / n) for n in ("a.jsonl.gz", "b.jsonl.gz")]},
        "stages": [
            {"stage": "validate"},
            {"stage": "dedupe", "scope": "prompt"},
            {
                "stage": "near_dedupe",
                "ngram_size": 1,
                "bands": 20,
                "rows_per_band": 2,
                "threshold": 0.6,
            },
            {"stage": "cross_dedupe", "others": [str(tmp_path / "other.txt")]},
            {"stage": "decontaminate", "sets": [], "extra": [str(tmp_path / "evals.txt")]},
            {"stage": "filter"},
            {"stage": "mix", "fractions": {"a.jsonl.gz": 0.8, "b.jsonl.gz": 1.0}},
            {"stage": "split", "eval_size": 5},
        ],
        "output_dir": str(tmp_path / "out"),
    }
    return PipelineSpec.model_validate(spec)


def run_files(report) -> dict[str, object]:
    """Pair files as frames (their row groups follow the shards), rejects files as bytes."""
    out = report.output_dir
    files: dict[str, object] = {p.name: pl.read_parquet(p) for p in out.glob("*.parquet")}
    return files | {p.name: p.read_bytes() for p in out.glob("rejects/*.jsonl")}


def test_results_do_not_depend_on_the_shard_size(two_sources, tmp_path):
    whole = run_pipeline(two_sources)
    files = run_files(whole)
    sharded = run_pipeline(
        two_sources.model_copy(
            update={"shard_rows": 4, "output_dir": tmp_path / "s", "cache": False}
        )
    )
    sharded_files = run_files(sharded)
    assert sharded_files.keys() == files.keys()
    for name, content in files.items():
        if isinstance(content, pl.DataFrame):
            assert_frame_equal(sharded_files[name], content)
        else:
            assert sharded_files[name] == content, name
    assert [s.rejected for s in sharded.stages] == [s.rejected for s in whole.stages]
    reasons = {reason for s in whole.stages for reason in s.rejected}
    assert {"duplicate", "near_duplicate", "in_other_dataset", "contaminated"} <= reasons
    assert {"not_sampled", "chosen_equals_rejected"} <= reasons
    train = pl.read_parquet(whole.output_dir / "train.parquet")
    assert set(train["source"]) == {"a.jsonl.gz", "b.jsonl.gz"}


def test_a_scratch_run_deletes_each_step_once_read_and_leaves_nothing(two_sources, monkeypatch):
    # `cache: false`: a step's output is deleted (in the background) once the next step has
    # read it, so a task sees its input, its own entry and at most the entry being deleted.
    root = cache.cache_root()
    entries_seen = []
    task = pipeline.stage_task

    def counting_task(directory, *args):
        entries_seen.append(len([p for p in directory.parent.iterdir() if p.is_dir()]))
        return task(directory, *args)

    monkeypatch.setattr(pipeline, "stage_task", counting_task)
    scratch = two_sources.model_copy(update={"cache": False, "shard_rows": 10})
    report = run_pipeline(scratch)
    assert len(entries_seen) >= len(report.stages) - 1
    assert max(entries_seen) <= 3
    assert not list(root.glob(".scratch.*")), "the scratch directory is removed"
    assert not (root / "stages").exists(), "a scratch run stores nothing in the stage cache"
    whole = run_pipeline(
        two_sources.model_copy(update={"output_dir": scratch.output_dir.parent / "c"})
    )
    assert run_files(report).keys() == run_files(whole).keys()


def test_a_dropped_scratch_entry_is_gone_when_the_cache_closes(tmp_path):
    shard = (pl.DataFrame({"a": [1]}), pl.DataFrame({"reason": ["x"]}), 2)
    with cache.StageCache(tmp_path, scratch=True) as scratch:
        directory = scratch.begin("k" * 64)
        cache.write_shard(directory, 0, shard, scratch=True)
        output = scratch.commit("k" * 64, directory, 1)
        scratch.drop(output)
    assert not output.kept[0].parent.exists()
    assert list(tmp_path.iterdir()) == []


def change_key_inputs(spec: PipelineSpec, what: str, monkeypatch, tmp_path) -> None:
    """Change one file a stage reads, for real."""
    if what == "reference":
        (tmp_path / "other.txt").write_text("question 8\n")
    elif what == "eval_file":
        (tmp_path / "evals.txt").write_text("question 9\nquestion 10\n")
    elif what == "source":
        write_hh(spec.source.inputs[1], [hh_row("question 99", "good", "bad")])
    elif what == "shingles":
        read_bytes = Path.read_bytes
        monkeypatch.setattr(
            Path,
            "read_bytes",
            lambda self: read_bytes(self) + (b"\n# edited" if self.name == "shingles.py" else b""),
        )


@pytest.mark.parametrize(
    ("what", "first_changed"),
    [
        ("reference", "cross_dedupe"),
        ("eval_file", "decontaminate"),
        ("source", "convert"),
        ("shingles", "near_dedupe"),
    ],
)
def test_a_stage_key_changes_with_every_file_it_reads(
    two_sources, what, first_changed, monkeypatch, tmp_path
):
    before = stage_keys(run_pipeline(two_sources))
    change_key_inputs(two_sources, what, monkeypatch, tmp_path)
    after = stage_keys(run_pipeline(two_sources))
    order = list(before)
    changed = [name for name in order if before[name] != after[name]]
    assert changed == order[order.index(first_changed) :]  # that stage and every later one
    assert "mix" in changed


def test_the_shipped_eval_sets_are_part_of_the_key(two_sources, monkeypatch, tmp_path):
    from orpo_pipeline.stages import reference

    decontaminate = importlib.import_module("orpo_pipeline.stages.decontaminate")
    stages = [s for s in two_sources.stages if s.stage != "decontaminate"]
    spec = two_sources.model_copy(update={"stages": [*stages[:4], DecontaminateConfig()]})
    before = stage_keys(run_pipeline(spec))
    edited = tmp_path / "ifeval.jsonl"
    edited.write_bytes(reference.eval_set_path("ifeval").read_bytes() + b'{"prompt": "new"}\n')
    shipped = reference.eval_set_path
    monkeypatch.setattr(
        decontaminate, "eval_set_path", lambda name: edited if name == "ifeval" else shipped(name)
    )
    after = stage_keys(run_pipeline(spec))
    assert [n for n in before if before[n] != after[n]] == ["decontaminate"]


def save_word_tokenizer(directory: Path, words: list[str]) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.train_from_iterator(
        [" ".join(words)], trainers.WordLevelTrainer(special_tokens=["<unk>"])
    )
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>").save_pretrained(
        directory
    )


def test_a_named_tokenizer_is_part_of_the_key_and_the_data_card(recipe, tmp_path):
    save_word_tokenizer(tmp_path / "tok", ["question", "answer"])
    spec = load_config(
        recipe,
        PipelineSpec,
        [f"stages.2.tokenizer={tmp_path / 'tok'}", "stages.2.max_prompt_tokens=50"],
    )
    before = stage_keys(run_pipeline(spec))
    assert "| tokens | prompt |" in (spec.output_dir / "datacard.md").read_text()
    save_word_tokenizer(tmp_path / "tok", ["question", "answer", "good"])
    after = stage_keys(run_pipeline(spec))
    assert [n for n in before if before[n] != after[n]] == ["filter", "split"]


def test_a_data_run_writes_its_data_card_and_report_regenerates_it(recipe):
    report = run_pipeline(load_config(recipe, PipelineSpec))
    card = report.output_dir / "datacard.md"
    text = card.read_text()
    assert f"| pairs out | {sum(report.outputs.values())} |" in text
    assert "duplicate" in text
    rejected = sum(sum(stage.rejected.values()) for stage in report.stages)
    assert report.stages[0].rejected  # convert's rejects count for their source too
    kept = sum(report.outputs.values())
    assert f"| hh.jsonl.gz | {kept} | 100.0 % | {rejected} |" in text
    card.unlink()
    assert write_report(report.output_dir) == [
        report.output_dir / n for n in ("datacard.html", "datacard.md")
    ]
    assert card.read_text() == text


def test_empty_rejects_files_are_written_and_read(recipe):
    # Regression (issue 5): polars cannot read an empty JSONL file, which is what a stage that
    # rejects nothing leaves.
    report = run_pipeline(load_config(recipe, PipelineSpec))
    empty = report.output_dir / "rejects" / "04_split.jsonl"
    assert empty.exists() and empty.stat().st_size == 0
    assert read_reject_labels(empty).height == 0
    write_frame(pl.DataFrame(schema={"reason": pl.String}), report.output_dir / "zero.jsonl")
    assert read_reject_labels(report.output_dir / "zero.jsonl").height == 0
    assert read_reject_labels(report.output_dir / "rejects" / "02_dedupe.jsonl").to_dict(
        as_series=False
    ) == {"reason": ["duplicate"], "source": ["hh.jsonl.gz"]}
    write_run_data_card(report.output_dir)


def test_reject_labels_set_only_after_the_first_rows_are_read(tmp_path):
    # Regression (bench_scale at 1 M pairs): Polars inferred `_cluster` as a null column from
    # the first 100 rows of a chunk and then refused the first row that named a cluster.
    rows = [{"reason": "too_long", "_cluster": None, "score": 1}] * 150
    rows += [{"reason": "near_duplicate", "_cluster": "abc", "score": "high"}]
    path = tmp_path / "03_near_dedupe.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    frame = read_reject_labels(path, ["_cluster", "_eval_set"])
    assert frame.columns == ["reason", "_cluster"]
    assert frame.height == 151
    assert frame.tail(1).to_dicts() == [{"reason": "near_duplicate", "_cluster": "abc"}]


def test_a_slice_reads_only_the_shard_files_that_hold_it_with_the_whole_schema(tmp_path):
    # Regression (bench_scale at 10 M pairs): slicing the concatenation of 50 shard files read
    # every file before the slice, so each stage's later shards took longer and longer.
    frames = [
        pl.DataFrame({"a": [1, 2, 3], "b": [None, None, None]}),
        pl.DataFrame({"a": [4, 5], "b": ["x", None]}),
        pl.DataFrame({"a": [6, 7, 8, 9]}),
    ]
    paths = []
    for i, frame in enumerate(frames):
        paths.append(tmp_path / f"kept-{i:05d}.parquet")
        frame.write_parquet(paths[-1])
    whole = pipeline._scan_parts(paths)
    for shard_rows in (1, 2, 3, 4, 5, 8, 9, 100):
        windows = pipeline._slices_of(paths, shard_rows)
        assert [w.start for w in windows] == list(range(0, 9, shard_rows))
        for window in windows:
            got = pipeline._read_slice(window).collect()
            assert_frame_equal(got, whole.slice(window.start, shard_rows).collect())
    # Rows 4 and 5: the second file's last row and the third file's first.
    window = pipeline._slices_of(paths, 2)[2]
    assert window.pieces == ((paths[1], 1, 1), (paths[2], 0, 1))
    plan = pipeline._read_slice(pipeline._slices_of(paths, 5)[1]).explain()  # rows 5 to 8
    assert paths[2].name in plan and paths[0].name not in plan and paths[1].name not in plan


def test_outputs_and_rejects_are_written_slice_by_slice_in_row_order_with_the_whole_schema(
    tmp_path,
):
    # The final files and the rejects are written by `write_parts` from slices of the shards;
    # the bytes do not depend on the slice size.
    frames = [
        pl.DataFrame({"a": list(range(70_000)), "b": [None] * 70_000}),
        pl.DataFrame({"a": [70_000, 70_001], "b": ["x", None]}),
        pl.DataFrame({"a": list(range(70_002, 120_000))}),
    ]
    paths = []
    for i, frame in enumerate(frames):
        paths.append(tmp_path / f"rejected-{i:05d}.parquet")
        frame.write_parquet(paths[-1])
    whole = pl.concat(frames, how="diagonal_relaxed")
    for shard_rows in (30_000, 200_000, 9_999):
        slices = pipeline._read_slices(paths, shard_rows)
        if shard_rows == 9_999:
            slices[3] = slices[3].filter(pl.col("a") < 0)  # an empty one
        assert write_parts(slices, tmp_path / f"out-{shard_rows}.jsonl") == 120_000 - (
            9_999 if shard_rows == 9_999 else 0
        )
        write_parts(slices, tmp_path / f"out-{shard_rows}.parquet")
    whole.write_ndjson(tmp_path / "expected.jsonl")
    expected = (tmp_path / "expected.jsonl").read_bytes()
    for shard_rows in (30_000, 200_000):
        assert (tmp_path / f"out-{shard_rows}.jsonl").read_bytes() == expected
        assert_frame_equal(pl.read_parquet(tmp_path / f"out-{shard_rows}.parquet"), whole)
    assert (tmp_path / "out-30000.parquet").read_bytes() == (
        tmp_path / "out-200000.parquet"
    ).read_bytes()
    assert_frame_equal(
        pl.read_parquet(tmp_path / "out-9999.parquet"),
        whole.filter(~pl.col("a").is_between(3 * 9_999, 4 * 9_999 - 1)),
    )
    metadata = pq.ParquetFile(tmp_path / "out-30000.parquet").metadata
    sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    assert sizes == [ROW_GROUP, ROW_GROUP, 20_000]
    assert metadata.row_group(0).column(0).compression == "ZSTD"


def test_an_output_with_no_rows_keeps_its_columns(tmp_path):
    empty = pl.LazyFrame(schema={"prompt": pl.String, "score": pl.Float64})
    assert write_parts([empty, empty], tmp_path / "none.parquet") == 0
    assert pl.read_parquet(tmp_path / "none.parquet").schema == empty.collect_schema()
    assert pq.ParquetFile(tmp_path / "none.parquet").metadata.num_row_groups == 0
    assert write_parts([empty], tmp_path / "none.jsonl") == 0


@pytest.mark.parametrize("scratch", [True, False])
def test_scratch_shards_are_uncompressed_and_not_flushed(scratch, tmp_path, monkeypatch):
    flushed = []
    monkeypatch.setattr(cache.os, "fsync", lambda fd: flushed.append(fd))
    shard = (pl.DataFrame({"a": [1, 2]}), pl.DataFrame({"reason": ["x"]}), 3)
    record = cache.write_shard(tmp_path, 0, shard, scratch=scratch, format="hh_rlhf")
    assert record == {"rows_in": 3, "format": "hh_rlhf"}
    assert cache.finished_shard(tmp_path, 0) == record
    kept, rejected, _ = cache.shard_paths(tmp_path, 0)
    codec = pq.ParquetFile(kept).metadata.row_group(0).column(0).compression
    assert codec == ("UNCOMPRESSED" if scratch else "LZ4")
    assert len(flushed) == (0 if scratch else 3)  # kept, rejected and the marker
    assert_frame_equal(pl.read_parquet(rejected), shard[1])


def test_a_second_near_dedupe_labels_its_rejects_with_its_own_clusters(tmp_path):
    # A global stage's column (`_cluster`) replaces the one an earlier stage of its kind added.
    words = "the quick brown fox jumps over the lazy dog near the river bank today"
    rows = [hh_row(f"{words} {i}", f"good {i}", f"bad {i}") for i in range(6)]
    rows += [hh_row(f"question {i}", f"good {i}", f"bad {i}") for i in range(6)]
    write_hh(tmp_path / "hh.jsonl.gz", rows)
    spec = PipelineSpec.model_validate(
        {
            "name": "twice",
            "source": {"inputs": [str(tmp_path / "hh.jsonl.gz")], "format": "hh_rlhf"},
            "stages": [
                {"stage": "near_dedupe", "threshold": 0.99},
                {"stage": "near_dedupe", "unit": "char", "ngram_size": 3, "threshold": 0.5},
            ],
            "output_dir": str(tmp_path / "out"),
            "shard_rows": 5,
            "cache": False,
        }
    )
    report = run_pipeline(spec)
    assert [s.rejected for s in report.stages[1:]] == [{}, {"near_duplicate": 5 + 5}]
    rejects = pl.read_ndjson(tmp_path / "out" / "rejects" / "02_near_dedupe.jsonl")
    kept_ids = set(pl.read_parquet(tmp_path / "out" / "pairs.parquet")["id"])
    assert rejects["_cluster"].is_not_null().all()
    assert set(rejects["_cluster"]) <= kept_ids
    assert "_cluster_right" not in rejects.columns
