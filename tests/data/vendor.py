"""Copy the real third-party files the tests read from a `shared/data` folder into `tests/data/`.

    python tests/data/vendor.py ../shared/data

Small files are copied byte for byte. A file over `CUT_BYTES` keeps its first `KEEP_RECORDS`
records plus every record the full file rejects (so each reject reason the tests count survives);
JSON arrays are written again with two-space indentation, JSON Lines keep their original lines.
Each folder gets its upstream SOURCE.md with a note of what was cut, and a LICENSE.
"""

import json
import shutil
import sys
from pathlib import Path

from orpo_pipeline.formats import ConvertOptions, convert_files

HERE = Path(__file__).resolve().parent
CUT_BYTES = 400_000
KEEP_RECORDS = 200
SKIP = {"hh-rlhf-harmless-base"}  # the default job's data: tests read data/ at the repo root
APACHE_TEXT = (HERE.parents[1] / "orpo_pipeline/resources/eval_sets/LICENSE").read_text()
APACHE_TEXT = APACHE_TEXT[APACHE_TEXT.index("                                 Apache License") :]
MIT_TEXT = """MIT License

Copyright (c) 2023 OpenAI

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""
LICENCES = {  # folder -> licence text; the rest are Apache-2.0 repositories
    "openai-cookbook-toy-chat": "From openai/openai-cookbook, under its licence:\n\n" + MIT_TEXT,
    "ifeval": "IFEval prompts from google-research/google-research, Apache License 2.0, via the "
    "identical copy in microsoft/llm-steer-instruct (MIT License, Copyright (c) Microsoft "
    "Corporation). See SOURCE.md.\n\n" + APACHE_TEXT,
}


def rejected_records(path: Path) -> set[int]:
    """0-based record indices that the full file rejects (empty when it is no pair data)."""
    try:
        result = convert_files([path], ConvertOptions(negatives="other_prompt"))
    except Exception:  # prompt lists and configs: nothing is rejected row by row
        return set()
    lines = result.rejects["line"].to_list()
    return {line - 1 for line in lines if line is not None}


def cut(source: Path, target: Path) -> str | None:
    """Write `source` to `target`, cut when large; a line for SOURCE.md when it was cut."""
    if source.stat().st_size <= CUT_BYTES or source.suffix not in {".json", ".jsonl"}:
        shutil.copyfile(source, target)
        return None
    keep = set(range(KEEP_RECORDS)) | rejected_records(source)
    if len(keep) >= len(source.read_text(encoding="utf-8").splitlines()):  # nothing to cut
        shutil.copyfile(source, target)
        return None
    if source.suffix == ".jsonl":
        lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for i, line in enumerate(lines) if i in keep]
        target.write_text("".join(kept), encoding="utf-8")
        total = len(lines)
    else:
        records = json.loads(source.read_text(encoding="utf-8"))
        kept = [record for i, record in enumerate(records) if i in keep]
        target.write_text(json.dumps(kept, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        total = len(records)
    return f"`{target.relative_to(target_root(target))}`: {len(kept)} of {total} records"


def target_root(path: Path) -> Path:
    return next(parent for parent in path.parents if parent.parent == HERE)


def vendor(shared: Path) -> None:
    for folder in sorted(p for p in shared.iterdir() if p.is_dir() and p.name not in SKIP):
        out = HERE / folder.name
        shutil.rmtree(out, ignore_errors=True)
        cuts = []
        for source in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "SOURCE.md"):
            target = out / source.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            if note := cut(source, target):
                cuts.append(note)
        note = (
            "\n\n## Vendored into tests/data\n\nCopied by `tests/data/vendor.py` from the "
            "project's shared data folder. Files are byte-for-byte copies"
        )
        if cuts:
            note += (
                f" except these, cut to their first {KEEP_RECORDS} records plus every record the "
                "full file rejects (JSON arrays re-indented):\n\n"
                + "".join(f"- {line}\n" for line in cuts)
            )
        else:
            note += ".\n"
        upstream = (folder / "SOURCE.md").read_text(encoding="utf-8").rstrip()
        (out / "SOURCE.md").write_text(upstream + note, encoding="utf-8")
        default = "Apache License 2.0; see SOURCE.md for the origin.\n\n" + APACHE_TEXT
        (out / "LICENSE").write_text(LICENCES.get(folder.name, default), encoding="utf-8")
        print(folder.name, "cut:" if cuts else "", *cuts)


if __name__ == "__main__":
    vendor(Path(sys.argv[1]))
