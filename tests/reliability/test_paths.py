"""Crafted names cannot make output paths escape the output directory or run anything.

Input file names, `source` values, recipe names and mapping fields are data: they may end up in
columns and reports, never in a path outside the output directory and the cache.
"""

import json
import re
from pathlib import Path

import polars as pl
import yaml
from click.testing import CliRunner

from orpo_pipeline.cli import cli
from orpo_pipeline.config_files import load_config
from orpo_pipeline.formats.writer import sidecar_paths
from orpo_pipeline.pipeline import PipelineSpec, run_pipeline
from orpo_pipeline.stages import STAGES

CRAFTED_FILE_NAMES = ["..evil.jsonl", "$(touch pwned).jsonl", "a;touch pwned;.jsonl", "-o.jsonl"]
CRAFTED_SOURCES = ["../../../escaped", "/tmp/absolute", "..", "a/../../b\n"]


def files(root: Path) -> set[Path]:
    return {path for path in root.rglob("*") if path.is_file()}


def write_inputs(directory: Path) -> list[Path]:
    directory.mkdir(parents=True)
    paths = []
    for name in CRAFTED_FILE_NAMES:
        path = directory / name
        rows = [{"q": f"question {i} in {name}", "good": "yes", "bad": "no"} for i in range(5)]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        paths.append(path)
    return paths


def test_stage_names_are_plain_words():
    # Stage tags name the rejects files (`rejects/NN_<stage>.jsonl`): they must not hold paths.
    assert all(re.fullmatch(r"[a-z][a-z_]*", name) for name in STAGES)


def test_sidecar_files_stay_beside_the_output():
    for name in ("..pairs.parquet", "..parquet", "a..b.jsonl", ".hidden.jsonl"):
        out = Path("/runs/x") / name
        assert {path.parent for path in sidecar_paths(out).values()} == {out.parent}


def test_crafted_names_in_a_recipe_write_only_below_the_output_dir(tmp_path, monkeypatch):
    work, cache = tmp_path / "work", tmp_path / "cache"
    monkeypatch.setenv("ORPO_PIPELINE_CACHE", str(cache))
    inputs = write_inputs(work / "in")
    monkeypatch.chdir(work)
    before = files(tmp_path)
    for index, source in enumerate(CRAFTED_SOURCES):
        recipe = {
            "name": f"../../{source}",
            "source": {
                "inputs": [str(path) for path in inputs],
                "source": source,
                "mapping": {
                    "prompt": "q",
                    "system": "../../etc/passwd",  # just a (missing) key
                    "chosen": "good",
                    "rejected": "bad",
                },
            },
            "stages": [{"stage": "validate"}, {"stage": "split", "eval_size": 2}],
            "output_dir": f"out{index}",
        }
        (work / "recipe.yaml").write_text(yaml.safe_dump(recipe))
        report = run_pipeline(load_config(work / "recipe.yaml", PipelineSpec))
        assert report.outputs == {"train.parquet": 18, "eval.parquet": 2}
        assert set(pl.read_parquet(work / f"out{index}" / "train.parquet")["source"]) == {source}
    created = files(tmp_path) - before - {work / "recipe.yaml"}
    outside = [
        path
        for path in created
        if not path.is_relative_to(cache)
        and not any(path.is_relative_to(work / f"out{i}") for i in range(len(CRAFTED_SOURCES)))
    ]
    assert outside == []
    assert not [path for path in tmp_path.rglob("*pwned*") if path.name == "pwned"]


def test_crafted_names_in_convert_write_only_beside_the_output(tmp_path):
    inputs = write_inputs(tmp_path / "in")
    before = files(tmp_path)
    out = tmp_path / "out" / "pairs.jsonl"
    result = CliRunner().invoke(
        cli,
        [
            "convert",
            *map(str, inputs),
            "-o",
            str(out),
            "--source",
            CRAFTED_SOURCES[0],
            "--mapping",
            "{prompt: q, chosen: good, rejected: bad}",
        ],
    )
    assert result.exit_code == 0, result.output
    assert {path.parent for path in files(tmp_path) - before} == {out.parent}
    assert set(pl.read_ndjson(out)["source"]) == {CRAFTED_SOURCES[0]}
    provenance = pl.read_ndjson(out.with_name("pairs.provenance.jsonl"))
    assert set(provenance["file"]) == {str(path) for path in inputs}
    assert not list(tmp_path.rglob("pwned"))
