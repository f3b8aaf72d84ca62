"""Chained recipes (SFT then DPO), chain manifests and diffs, and `compare` end to end."""

import json

import pytest
import yaml
from click.testing import CliRunner

from orpo_pipeline.cli import cli
from orpo_pipeline.errors import ConfigError
from orpo_pipeline.evaluation.config import EvalConfig
from orpo_pipeline.formats.generate import model_sha256
from orpo_pipeline.runs import load_manifest
from orpo_pipeline.train.compare import CompareConfig, at_flops, run_compare, summarise
from orpo_pipeline.train.recipe import RecipeConfig, diff_chains, run_recipe
from tests.rlaif.conftest import JUDGE_PROMPT


@pytest.fixture
def base(tiny_dir, pairs_files):
    train_pairs, eval_pairs = pairs_files
    return {
        "model": str(tiny_dir),
        "train_pairs": str(train_pairs),
        "eval_pairs": str(eval_pairs),
        "max_length": 64,
        "max_prompt_length": 48,
        "per_device_batch_size": 2,
        "learning_rate": 1e-3,
        "num_sample_generations": 0,
        "eval_every_steps": 1,
    }


def sft_dpo(base, tmp_path, *, beta=0.1) -> RecipeConfig:
    return RecipeConfig(
        name="sft-dpo",
        output_dir=tmp_path / "recipes",
        base=base,
        stages=[
            {"name": "sft", "objective": "sft", "max_steps": 2},
            {"name": "dpo", "objective": "dpo", "beta": beta, "max_steps": 2},
        ],
    )


def test_sft_then_dpo_chain_links_its_runs_and_diffs_stage_by_stage(base, tmp_path):
    chain = run_recipe(sft_dpo(base, tmp_path))
    manifest = load_manifest(chain)
    assert manifest["kind"] == "chain"
    sft, dpo = manifest["stages"]
    assert (sft["objective"], dpo["objective"]) == ("sft", "dpo")
    assert dpo["model"] == str(chain / sft["final"])  # SFT's final/ is the DPO policy ...
    dpo_run = load_manifest(chain / dpo["path"])
    reference = json.loads((chain / dpo["path"] / "reference.json").read_text())
    assert reference["model"] == dpo["model"]  # ... and its reference
    assert dpo_run["config"]["model"] == dpo["model"]
    # The DPO stage starts where SFT ended: its reference equals its policy at step 0.
    assert dpo_run["eval_before"]["eval_rewards/margins"] == pytest.approx(0, abs=1e-5)
    sft_after = load_manifest(chain / sft["path"])["eval_after"]["eval_chosen_nll"]
    assert dpo_run["eval_before"]["eval_chosen_nll"] == pytest.approx(sft_after, rel=1e-5)
    assert manifest["outputs"][0]["path"].startswith(dpo["final"])

    other = run_recipe(sft_dpo(base, tmp_path, beta=0.5))
    changes = diff_chains(chain, other)
    assert changes["stage 1 (dpo) config"]["beta"] == [0.1, 0.5]
    assert set(changes["stage 0 (sft) config"]) == {"output_dir"}  # each chain has its own
    assert "stages" in changes["config"]  # the chain's own manifest: the recipe changed


def test_a_later_stage_cannot_choose_its_model(base, tmp_path):
    recipe = sft_dpo(base, tmp_path)
    bad = recipe.model_copy(update={"stages": [*recipe.stages[:1], {"model": "x"}]})
    with pytest.raises(ConfigError, match=r"stages\.1: `model` is the previous stage"):
        run_recipe(bad)
    assert not (tmp_path / "recipes").exists()


def test_train_command_runs_a_recipe(base, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(sft_dpo(base, tmp_path).model_dump(mode="json")))
    result = CliRunner().invoke(cli, ["train", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "chain:" in result.output and "dpo" in result.output


def test_matched_flops_interpolate_along_each_curve():
    curve = [{"flops": 0.0, "a": 1.0}, {"flops": 10.0, "a": 3.0}, {"flops": 20.0, "a": 2.0}]
    assert at_flops(curve, 5.0, "a") == pytest.approx(2.0)
    assert at_flops(curve, 15.0, "a") == pytest.approx(2.5)
    assert at_flops(curve, 25.0, "a") is None


def test_summary_means_and_spreads_over_seeds():
    def run(flops, accuracy):
        metrics = {"eval_logp_accuracy": accuracy, "eval_logp_margin": 0.0, "eval_chosen_nll": 1.0}
        return {
            "tokens": 100,
            "flops": flops,
            "seconds": 1.0,
            "peak_memory_bytes": 10,
            "before": metrics,
            "after": metrics,
            "curve": [{"flops": 0.0, **metrics}, {"flops": flops, **metrics}],
        }

    summary = summarise(
        {"a": [run(8.0, 0.5), run(8.0, 0.7)], "b": [run(4.0, 0.6)]}, matched_points=2
    )
    assert summary["budgets"] == [2.0, 4.0]
    accuracy = summary["arms"]["a"]["eval_logp_accuracy"]
    assert accuracy["mean"] == pytest.approx(0.6) and accuracy["std"] == pytest.approx(
        0.1414, abs=1e-4
    )
    assert summary["arms"]["b"]["matched"][1]["eval_logp_accuracy"]["mean"] == pytest.approx(0.6)


@pytest.mark.parametrize(
    "isolate", [pytest.param(True, marks=pytest.mark.slow), False], ids=["processes", "inline"]
)
def test_compare_runs_every_arm_and_writes_the_report(base, tmp_path, isolate):
    config = CompareConfig(
        isolate=isolate,
        name="tiny",
        output_dir=tmp_path / "compare",
        base=base,
        arms={
            "orpo": [{"objective": "orpo", "max_steps": 2}],
            "sft_dpo": [{"objective": "sft", "max_steps": 1}, {"objective": "dpo", "max_steps": 1}],
            "sft": [{"objective": "sft", "max_steps": 2}],
        },
        matched_points=2,
        num_samples=1,
        max_new_tokens=3,
        evaluation=evaluation(base, tmp_path),
    )
    out = run_compare(config, echo=lambda line: None)
    report = json.loads((out / "compare.json").read_text())
    arms = report["summary"]["arms"]
    assert set(arms) == {"orpo", "sft_dpo", "sft"}
    for arm, runs in report["runs"].items():
        [result] = runs
        assert result["tokens"] > 0 and result["flops"] > 0 and result["peak_memory_bytes"] > 0
        flops = [point["flops"] for point in result["curve"]]
        assert flops == sorted(flops) and flops[-1] <= result["flops"], arm
    orpo, sft = report["runs"]["orpo"][0], report["runs"]["sft"][0]
    # Same steps and pairs: SFT never forwards the rejected answers, so it costs less.
    assert sft["tokens"] < orpo["tokens"]
    # The DPO stage's reference forward is counted, and the SFT stage's FLOPs come first.
    dpo_chain = report["runs"]["sft_dpo"][0]
    assert len(dpo_chain["curve"]) == 2 + 2  # evals at steps 0 and 1 of each stage
    assert set(report["samples"]) == {"start", "orpo", "sft_dpo", "sft"}
    page = (out / "report.html").read_text()
    assert "Quality at matched compute" in page and page.count("<figure") == 3
    assert "<script" not in page
    # Every arm's final model is judged against the compare's start model, not its stage's start
    # (SFT's final/ for the DPO stage); the start model's answers are generated once.
    start = {r[0]["baseline_sha256"] for r in report["runs"].values()}
    assert start == {model_sha256(base["model"])}
    for arm, summary in arms.items():
        [result] = report["runs"][arm]
        judged = summary["evaluation"]
        assert judged["win_rate"]["mean"] == result["evaluation"]["win_rate"]
        assert 0 <= judged["win_rate"]["mean"] <= 1
        wins, ties, losses = (result["evaluation"][k] for k in ("wins", "ties", "losses"))
        assert wins + ties + losses == 3
    assert "win rate vs start" in page and "judged in both orders" in page


def evaluation(base, tmp_path) -> EvalConfig:
    """A small evaluation judged by the tiny start model itself."""
    prompt_file = tmp_path / "judge_prompt.txt"
    prompt_file.write_text(JUDGE_PROMPT)
    return EvalConfig(
        num_heldout_prompts=2,
        benchmarks={"alpaca_eval": 1},
        num_ifeval_prompts=1,
        max_new_tokens=3,
        ifeval_max_new_tokens=3,
        num_bootstrap=100,
        judge={"model": base["model"], "prompt_file": prompt_file},
    )
