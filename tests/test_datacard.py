import re
import struct
import subprocess
import zlib
from pathlib import Path

import polars as pl
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from orpo_pipeline.datacard import write_data_card
from orpo_pipeline.records import PAIR_SCHEMA
from tests.stages.conftest import make_pair

CHROMIUM = Path("/usr/bin/chromium")
REPORT = {
    "name": "tiny",
    "stages": [
        {"stage": "convert", "rows_in": 9, "rows_out": 8, "rejected": {"empty_response": 1}},
        {"stage": "filter", "rows_in": 8, "rows_out": 6, "rejected": {"blank_message": 2}},
        {"stage": "near_dedupe", "rows_in": 6, "rows_out": 5, "rejected": {"near_duplicate": 1}},
        {"stage": "decontaminate", "rows_in": 5, "rows_out": 4, "rejected": {"contaminated": 1}},
    ],
    "outputs": {"pairs.parquet": 4},
}


def pair(prompt: str, chosen: str, rejected: str, source: str, margin: float) -> dict:
    return {
        **make_pair(prompt, chosen, rejected, score_chosen=5 + margin, score_rejected=5),
        "source": source,
    }


@pytest.fixture
def card_inputs():
    pairs = pl.DataFrame(
        [
            pair("Tell me a joke.", "Why did the chicken cross the road?", "No.", "web", 2),
            pair(
                "Explain <b>HTML</b> & escaping.", "Use &lt;b&gt;.", "Ignore it, really.", "web", 1
            ),
            pair("Summarise this.", "A summary.", "Something much longer than it.", "books", 0.5),
            pair("Count to three.", "One, two, three.", "1 2 3", "books", 3),
        ],
        schema=PAIR_SCHEMA,
    )
    kept_id = pairs["id"][0]
    rejects = {
        "02_filter": pl.DataFrame(
            {"reason": ["blank_message"] * 2, "source": ["web", "forum"], "id": ["a", "b"]}
        ),
        "03_near_dedupe": pl.DataFrame(
            {"reason": ["near_duplicate"], "source": ["web"], "_cluster": [kept_id]}
        ),
        "04_decontaminate": pl.DataFrame(
            {
                "reason": ["contaminated"],
                "source": ["books"],
                "_cluster": [kept_id],  # carried along from near_dedupe; not a second duplicate
                "_eval_set": ["mt_bench"],
            }
        ),
    }
    return pairs, rejects


LABELS = {
    "03_near_dedupe": {"near_duplicate": "_cluster"},
    "04_decontaminate": {"contaminated": "_eval_set"},
}


def test_writes_html_and_markdown_with_every_section(tmp_path, card_inputs):
    pairs, rejects = card_inputs
    html_path, md_path = write_data_card(tmp_path / "card", REPORT, pairs, rejects, labels=LABELS)
    assert (html_path.name, md_path.name) == ("datacard.html", "datacard.md")
    html, md = html_path.read_text(), md_path.read_text()
    for heading in (
        "Counts",
        "Stages",
        "Sources",
        "Lengths",
        "Rejects by label",
    ):
        assert f"<h2>{heading}</h2>" in html
        assert f"## {heading}" in md
    assert "<script" not in html and "http" not in html.replace("http://www.w3.org/2000/svg", "")
    assert html.count("<svg") == 2 + 3 + 2  # two bar charts, three lengths, difference, margin
    assert "Explain &lt;b&gt;HTML&lt;/b&gt;" not in html  # texts are summarised, never pasted
    assert "| pairs in | 9 |" in md and "| pairs out | 4 |" in md
    assert "| 1 | filter | 8 | 6 | blank_message: 2 |" in md
    assert "| web | 2 | 50.0 % | 2 |" in md and "| forum | 0 | 0.0 % | 1 |" in md
    # Each declared label is counted for its own reason only: the carried `_cluster` is not.
    assert "### 04_decontaminate · contaminated by _eval_set" in md and "| mt_bench | 1 |" in md
    assert "### 03_near_dedupe · near_duplicate by _cluster" in md
    assert f"| {pairs['id'][0]} | 1 |" in md and md.count("| distinct values | 1 |") == 2
    assert "chosen longer than rejected | 50.0 %" in md
    assert re.search(r"\| chars \| chosen \| 10 \| ", md)  # min length of the chosen answers
    assert "tokens" not in md


def test_token_lengths_with_a_tokenizer(tmp_path, card_inputs):
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.train_from_iterator(
        ["one two three"], trainers.WordLevelTrainer(special_tokens=["<unk>"])
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>")
    _, md_path = write_data_card(tmp_path, REPORT, card_inputs[0], tokenizer=fast)
    md = md_path.read_text()
    assert "| tokens | rejected | 1 | " in md  # "No." is one word
    assert "Rejects by label" not in md


def test_empty_run(tmp_path):
    report = {"name": "empty", "stages": [], "outputs": {}}
    html_path, md_path = write_data_card(tmp_path, report, pl.DataFrame(schema=PAIR_SCHEMA))
    assert "no data" in html_path.read_text()
    assert "| pairs out | 0 |" in md_path.read_text()


def png_pixels(path: Path) -> tuple[int, int, bytes]:
    """Width, height and the decompressed, still filtered, scanlines of a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = {}, 8
    while offset < len(data):
        (length,), kind = (
            struct.unpack(">I", data[offset : offset + 4]),
            data[offset + 4 : offset + 8],
        )
        chunks.setdefault(kind, b"")
        chunks[kind] += data[offset + 8 : offset + 8 + length]
        offset += 12 + length
    width, height = struct.unpack(">II", chunks[b"IHDR"][:8])
    return width, height, zlib.decompress(chunks[b"IDAT"])


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium")
def test_renders_in_chromium(tmp_path, card_inputs):
    html_path, _ = write_data_card(tmp_path / "card", REPORT, *card_inputs)
    screenshot = tmp_path / "card.png"
    subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={screenshot}",
            "--window-size=1200,2000",
            html_path.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    width, height, scanlines = png_pixels(screenshot)
    assert (width, height) == (1200, 2000)
    # A blank page compresses to a few kB and its filtered scanlines use a handful of byte values;
    # tables, text and coloured bars do neither.
    assert screenshot.stat().st_size > 20_000
    assert len(set(scanlines)) > 128


def test_lazy_frames_give_the_same_card(tmp_path, card_inputs):
    pairs, rejects = card_inputs
    _, eager = write_data_card(tmp_path / "eager", REPORT, pairs, rejects)
    lazy_rejects = {name: frame.lazy() for name, frame in rejects.items()}
    _, lazy = write_data_card(tmp_path / "lazy", REPORT, pairs.lazy(), lazy_rejects)
    assert lazy.read_text() == eager.read_text()
