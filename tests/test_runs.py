"""Manifests: inputs by hash and rows, git state with its diff, seeds, hardware."""

import gzip
import json
import subprocess

import polars as pl
from pydantic import BaseModel

from orpo_pipeline import io
from orpo_pipeline.runs import describe_inputs, diff_manifests, load_manifest, write_manifest


class Split(BaseModel):
    seed: int = 7


class Recipe(BaseModel):
    name: str = "r"
    split: Split = Split()
    shuffle_seed: int = 3


def test_inputs_carry_sha256_bytes_and_rows_of_record_files(tmp_path):
    pl.DataFrame({"a": [1, 2, 3]}).write_parquet(tmp_path / "a.parquet")
    (tmp_path / "b.jsonl").write_text('{"a": 1}\n\n{"a": 2}\n')
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        f.write('{"a": 1}\n' * 5)
    (tmp_path / "d.txt").write_text("not records\n")
    described = {entry["path"].rsplit("/", 1)[1]: entry for entry in describe_inputs([tmp_path])}
    assert {name: entry["rows"] for name, entry in described.items()} == {
        "a.parquet": 3,
        "b.jsonl": 2,
        "c.jsonl.gz": 5,
        "d.txt": None,
    }
    assert described["d.txt"]["bytes"] == len("not records\n")
    assert described["d.txt"]["sha256"] == io.sha256_file(tmp_path / "d.txt")


def test_the_stat_cache_hashes_an_unchanged_file_once(tmp_path, monkeypatch):
    data, cache = tmp_path / "big.jsonl", tmp_path / "hashes.json"
    data.write_text('{"a": 1}\n')
    calls = []
    real = io.sha256_file
    monkeypatch.setattr(io, "sha256_file", lambda path: calls.append(path) or real(path))
    first = describe_inputs([data], stat_cache=cache)
    assert describe_inputs([data], stat_cache=cache) == first
    assert len(calls) == 1
    data.write_text('{"a": 2}\n')
    assert describe_inputs([data], stat_cache=cache)[0]["sha256"] != first[0]["sha256"]
    assert len(calls) == 2


def test_manifest_records_the_diff_seeds_hardware_and_relative_outputs(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.chdir(repo)
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q"], check=True)
    (repo / "code.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "code.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    (repo / "code.py").write_text("x = 2\n")
    run = repo / "run"
    run.mkdir()
    (run / "out.jsonl").write_text("{}\n")
    manifest = write_manifest(
        run,
        kind="data",
        config=Recipe(),
        inputs=[],
        outputs=describe_inputs([run / "out.jsonl"]),
    )
    assert load_manifest(run) == json.loads(json.dumps(manifest))
    assert manifest["git"]["dirty"] is True
    assert "+x = 2" in manifest["git"]["diff"]
    assert manifest["seeds"] == {"split.seed": 7, "shuffle_seed": 3}
    assert manifest["outputs"][0]["path"] == "out.jsonl"
    assert manifest["environment"]["hardware"]["cpu_count"] > 0
    assert manifest["environment"]["packages"]["polars"] == pl.__version__

    other = {**manifest, "git": {**manifest["git"], "diff": "+x = 3", "diff_sha256": "f00"}}
    assert diff_manifests(manifest, other)["code"] == {
        "diff_sha256": [manifest["git"]["diff_sha256"], "f00"]
    }
