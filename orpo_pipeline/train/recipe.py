"""Recipes: training stages run in a chain (SFT then DPO), each a run, linked by a chain manifest.

Stage k > 0 starts from stage k−1's `final/`, which is also its reference model: SFT→DPO is
`stages: [{objective: sft}, {objective: dpo}]`.
"""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from orpo_pipeline.config_files import render_validation_error
from orpo_pipeline.errors import ConfigError, OrpoPipelineError
from orpo_pipeline.io import write_text
from orpo_pipeline.runs import (
    config_hash,
    describe_inputs,
    diff_manifests,
    load_manifest,
    utc_stamp,
    write_manifest,
)
from orpo_pipeline.train.config import Settings, TrainConfig

CHAIN_KIND = "chain"


class RecipeConfig(Settings):
    """A chain of training stages sharing one base config."""

    name: str = Field(default="recipe", pattern=r"^[A-Za-z0-9_.-]+$")
    """Chain name; its directory is `<output_dir>/<name>-<UTC time>-<config hash8>/`."""
    output_dir: Path = Path("runs/recipes")
    """Where chain directories are created; stage runs go to `<chain>/stages/`."""
    base: dict[str, Any]
    """Training settings every stage shares (any `TrainConfig` field)."""
    stages: list[dict[str, Any]] = Field(min_length=1)
    """Per-stage settings over `base`, e.g. `{name: sft, objective: sft, max_steps: 20}`; a
    later stage's `model` is the previous stage's `final/` and cannot be set."""

    def stage_configs(self, *, output_dir: Path) -> list[TrainConfig]:
        """Each stage's `TrainConfig` (stage k > 0 still has the base model; `run_recipe` links)."""
        configs = []
        for index, stage in enumerate(self.stages):
            if index and "model" in stage:
                msg = f"stages.{index}: `model` is the previous stage's final/; remove it"
                raise ConfigError(msg)
            settings = {"name": f"{index}-{stage.get('objective', 'orpo')}"} | self.base | stage
            try:
                configs.append(TrainConfig.model_validate(settings | {"output_dir": output_dir}))
            except ValidationError as error:
                raise ConfigError(
                    render_validation_error(error, where=f"stages.{index}")
                ) from error
        return configs


def _run_stage(config: TrainConfig, *, isolated: bool) -> Path:
    """Train one stage; isolated: in a fresh Python process, so its peak memory is its own."""
    if not isolated:
        from orpo_pipeline.train.loop import train

        return train(config).run_dir
    before = set(config.output_dir.iterdir()) if config.output_dir.is_dir() else set()
    path = config.output_dir / f".{config.name}.yaml"
    write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), path)
    command = [sys.executable, "-m", "orpo_pipeline", "train", str(path)]
    done = subprocess.run(command, check=False)
    new = sorted(p for p in set(config.output_dir.iterdir()) - before if p.is_dir())
    if done.returncode != 0 or len(new) != 1:
        msg = f"stage {config.name} failed (exit {done.returncode}); see the output above"
        raise OrpoPipelineError(msg)
    return new[0]


def run_recipe(recipe: RecipeConfig, *, isolated: bool = False) -> Path:
    """Run every stage in order; write the chain's `recipe.yaml` and `manifest.json`.

    Returns the chain directory. Its manifest lists each stage's run id, path, objective and
    final model; `runs diff` on two chains also compares them stage by stage.
    """
    chain_dir = recipe.output_dir / f"{recipe.name}-{utc_stamp()}-{config_hash(recipe)[:8]}"
    stages_dir = chain_dir / "stages"
    configs = recipe.stage_configs(output_dir=stages_dir)  # validated before anything runs
    stages_dir.mkdir(parents=True)
    write_text(
        yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False), chain_dir / "recipe.yaml"
    )
    stages, model = [], None
    for config in configs:
        if model is not None:
            config = config.model_copy(update={"model": str(model)})
        run_dir = _run_stage(config, isolated=isolated)
        model = run_dir / "final"
        stages.append(
            {
                "name": config.name,
                "objective": config.objective,
                "run_id": run_dir.name,
                "path": str(run_dir.relative_to(chain_dir)),
                "model": config.model,
                "final": str(model.relative_to(chain_dir)),
            }
        )
    first = load_manifest(chain_dir / stages[0]["path"])
    write_manifest(
        chain_dir,
        kind=CHAIN_KIND,
        config=recipe,
        inputs=first["inputs"],
        outputs=describe_inputs([model]),
        extra={"stages": stages},
    )
    return chain_dir


def diff_chains(a_dir: Path, b_dir: Path) -> dict[str, dict[str, list[Any]]]:
    """`diff_manifests` of two runs; for two chains, also of their stages, pairwise in order."""
    a, b = load_manifest(a_dir), load_manifest(b_dir)
    sections = diff_manifests(a, b)
    if a.get("kind") != CHAIN_KIND or b.get("kind") != CHAIN_KIND:
        return sections
    a_stages, b_stages = a["stages"], b["stages"]
    if len(a_stages) != len(b_stages):
        sections["stages"] = {"count": [len(a_stages), len(b_stages)]}
    for index, (x, y) in enumerate(zip(a_stages, b_stages, strict=False)):
        stage = diff_manifests(load_manifest(a_dir / x["path"]), load_manifest(b_dir / y["path"]))
        for section, items in stage.items():
            sections[f"stage {index} ({x['name']}) {section}"] = items
    return sections


def load_recipe_or_config(path: Path, overrides: tuple[str, ...]) -> RecipeConfig | TrainConfig:
    """A recipe when the YAML has `stages:`, else a single training config."""
    from orpo_pipeline.config_files import load_config

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raw = None  # load_config reports it with its own message
    model = RecipeConfig if isinstance(raw, dict) and "stages" in raw else TrainConfig
    return load_config(path, model, overrides)


def chain_summary(chain_dir: Path) -> str:
    """A few lines for the terminal: each stage's run and the chain's final model."""
    manifest = json.loads((chain_dir / "manifest.json").read_text(encoding="utf-8"))
    lines = [f"chain: {chain_dir}"]
    lines += [f"  {s['name']}: {chain_dir / s['path']}" for s in manifest["stages"]]
    lines.append(f"model: {chain_dir / manifest['stages'][-1]['final']}")
    return "\n".join(lines)
