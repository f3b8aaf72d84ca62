import json
from pathlib import Path

import pytest

from orpo_pipeline.formats import ConversionResult, ConvertOptions, convert_files

REPO = Path(__file__).resolve().parents[2]
TEST_DATA = REPO / "tests" / "data"
"""Real third-party files the tests read, vendored with their licences (tests/data/vendor.py)."""
HH = REPO / "data" / "hh-rlhf-harmless-base" / "test.jsonl.gz"
"""The default job's real HH-RLHF file, shipped with the repository."""


@pytest.fixture
def small_slices(monkeypatch):
    """The vectorised converters convert files in slices of 4 rows, so the rows of a small file
    cross slice borders (tests on large files set a larger size)."""
    from orpo_pipeline.formats import vectorized

    monkeypatch.setattr(vectorized, "SLICE_ROWS", 4)


def write_jsonl(path: Path, rows: list) -> Path:
    """Write rows (objects or raw strings) as JSON Lines."""
    lines = [row if isinstance(row, str) else json.dumps(row, ensure_ascii=False) for row in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def convert(tmp_path):
    """Convert rows written to a JSONL file: convert(rows, format=..., **knobs)."""

    def run(rows: list, **options) -> ConversionResult:
        path = write_jsonl(tmp_path / "input.jsonl", rows)
        return convert_files([path], ConvertOptions(**options))

    return run


def texts(result: ConversionResult) -> list[tuple[str, str]]:
    """(chosen, rejected) answer texts of every pair, in output order."""
    return [
        (chosen[0]["content"], rejected[0]["content"])
        for chosen, rejected in result.pairs.select("chosen", "rejected").iter_rows()
    ]


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}
