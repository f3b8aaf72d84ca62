"""Static guarantees over our own source: no shell, safe YAML, safe torch.load, no remote code."""

import ast

import pytest

from orpo_pipeline.train.config import TrainConfig
from tests.conftest import REPO

SOURCES = sorted((REPO / "orpo_pipeline").rglob("*.py"))


def calls(path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords if k.arg}
            yield f"{path.relative_to(REPO)}:{node.lineno}", name, keywords


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_source_file_is_safe(path):
    for where, name, keywords in calls(path):
        assert keywords.get("shell", "False") == "False", f"{where}: shell=True"
        assert name not in {"eval", "exec", "os.system", "pickle.load", "pickle.loads"}, where
        assert name not in {"yaml.load", "yaml.unsafe_load", "yaml.full_load"}, where
        if name == "torch.load":
            unsafe = f"{where}: torch.load without weights_only"
            assert keywords.get("weights_only") == "True", unsafe
        assert keywords.get("trust_remote_code", "False") != "True", where


def test_run_names_cannot_escape_the_output_directory():
    # The run directory is "<name>-<time>-<hash>", so only separators could escape it.
    for name in ("../escape", "a/b", "/abs", "x\\y", ""):
        with pytest.raises(ValueError, match="name"):
            TrainConfig(name=name, train_pairs="t.parquet")
