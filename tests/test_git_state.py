"""The git probe of run manifests: bytes, not text; a capped diff; never a failed run."""

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from orpo_pipeline import runs
from orpo_pipeline.runs import git_state

GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t", "-c", "init.defaultBranch=main"]


def commit(repo: Path, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        (repo / name).write_bytes(content)
    subprocess.run([*GIT, "add", *files], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-qm", "c"], cwd=repo, check=True)


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    subprocess.run([*GIT, "init", "-q"], check=True)
    return tmp_path


def head_diff(repo: Path) -> bytes:
    return subprocess.run(["git", "diff", "HEAD"], cwd=repo, capture_output=True).stdout


def test_a_latin1_change_is_recorded_by_its_bytes(repo):
    commit(repo, {"a.csv": b"Jos\xe9\n"})
    (repo / "a.csv").write_bytes(b"Jos\xe9 Mar\xeda\n")
    state = git_state()
    assert state["dirty"] is True
    assert state["branch"] == "main"
    assert state["diff_sha256"] == hashlib.sha256(head_diff(repo)).hexdigest()
    assert state["diff_stat"] == {"files": 1, "insertions": 1, "deletions": 1, "binary_files": 0}
    assert "+Jos\ufffd Mar\ufffda" in state["diff"]
    assert state["diff_truncated"] is False
    json.dumps(state)  # the manifest can hold it


def test_a_binary_change_counts_as_a_binary_file(repo):
    commit(repo, {"model.bin": bytes(range(256)), "code.py": b"x = 1\n"})
    (repo / "model.bin").write_bytes(bytes(reversed(range(256))))
    (repo / "code.py").write_bytes(b"x = 2\ny = 3\n")
    state = git_state()
    assert state["diff_stat"] == {"files": 2, "insertions": 2, "deletions": 1, "binary_files": 1}
    assert "Binary files" in state["diff"]


def test_a_large_diff_is_capped_but_hashed_whole(repo, monkeypatch):
    commit(repo, {"big.txt": b"start\n"})
    lines = b"".join(b"line %07d of a three megabyte change\n" % i for i in range(80_000))
    (repo / "big.txt").write_bytes(lines)
    state = git_state()
    whole = head_diff(repo)
    assert len(whole) > 3_000_000
    assert state["diff_bytes"] == len(whole)
    assert state["diff_truncated"] is True
    assert len(state["diff"].encode()) == runs.DIFF_TEXT_LIMIT
    assert state["diff_sha256"] == hashlib.sha256(whole).hexdigest()
    assert state["diff_stat"]["insertions"] == 80_000


def test_a_repository_with_no_commit(repo):
    (repo / "a.py").write_text("x = 1\n")
    subprocess.run([*GIT, "add", "a.py"], check=True)
    state = git_state()
    assert state == {
        "sha": None,
        "branch": "main",
        "dirty": True,
        "note": "the repository has no commit yet",
    }


def test_outside_a_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_state() == {"sha": None}


def test_no_git_binary_on_path(repo, monkeypatch):
    monkeypatch.setenv("PATH", str(repo / "empty-bin"))
    state = git_state()
    assert set(state) == {"error"}
    assert "No such file" in state["error"]


def test_a_clean_checkout_has_no_diff(repo):
    commit(repo, {"a.py": b"x = 1\n"})
    state = git_state()
    assert state["dirty"] is False
    assert state["diff"] is None
    assert len(state["sha"]) == 40


def test_data_run_in_a_checkout_with_a_latin1_change(repo, monkeypatch):
    """The issue's reproduction: `orpo-pipeline data` inside such a checkout writes its manifest."""
    from click.testing import CliRunner

    from orpo_pipeline.cli import cli

    commit(repo, {"a.csv": b"Jos\xe9\n"})
    (repo / "a.csv").write_bytes(b"Jos\xe9 \xc9\n")
    (repo / "pairs.jsonl").write_text(
        json.dumps({"prompt": "Q?", "chosen": "Yes.", "rejected": "No."}) + "\n"
    )
    (repo / "recipe.yaml").write_text(
        "name: t\nsource: {inputs: [pairs.jsonl]}\nstages: [{stage: validate}]\noutput_dir: out\n"
    )
    result = CliRunner().invoke(cli, ["data", "recipe.yaml"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((repo / "out" / "manifest.json").read_text())
    assert manifest["git"]["dirty"] is True
    assert manifest["git"]["diff_stat"]["files"] == 1
