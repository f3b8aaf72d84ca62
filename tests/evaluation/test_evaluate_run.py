"""End to end on tiny models in-process: a finished run is judged against its start model and
against another run; manifest, report, verdicts, cache and `runs diff` agree."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from orpo_pipeline.cli import cli
from orpo_pipeline.evaluation.config import EvalConfig
from orpo_pipeline.evaluation.run import evaluate_run
from orpo_pipeline.runs import diff_manifests, load_manifest, write_manifest
from orpo_pipeline.stages.judge import JudgeConfig
from orpo_pipeline.train.config import TrainConfig
from tests.rlaif.conftest import JUDGE_PROMPT, PROMPTS, save_causal_lm


def write_run(folder: Path, start: Path, eval_pairs: Path, seed: int) -> Path:
    """A finished training run: manifest, a report page and a `final/` model."""
    folder.mkdir(parents=True)
    save_causal_lm(folder / "final", seed=seed)
    config = TrainConfig(model=str(start), train_pairs=eval_pairs, eval_pairs=eval_pairs)
    write_manifest(folder, kind="train", config=config, inputs=[], outputs=[])
    (folder / "report.html").write_text("<html><body><h1>run</h1></body></html>\n")
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    start = save_causal_lm(root / "start", seed=0)
    pairs = root / "eval.jsonl"
    rows = [
        {
            "id": str(i),
            "prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": "honey never spoils"}],
            "rejected": [{"role": "assistant", "content": "no"}],
        }
        for i, prompt in enumerate([*PROMPTS, PROMPTS[0]])  # a repeated prompt counts once
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompt_file = root / "judge_prompt.txt"
    prompt_file.write_text(JUDGE_PROMPT)
    runs = root / "runs"
    first = write_run(runs / "first", start, pairs, seed=1)
    second = write_run(runs / "second", start, pairs, seed=2)
    config = EvalConfig(
        num_heldout_prompts=3,
        benchmarks={"alpaca_eval": 2, "mt_bench": 1},
        num_ifeval_prompts=2,
        max_new_tokens=5,
        ifeval_max_new_tokens=5,
        batch_size=4,
        judge=JudgeConfig(model=str(start), prompt_file=prompt_file),
        num_bootstrap=200,
    )
    return {"start": start, "first": first, "second": second, "config": config, "runs": runs}


def test_a_run_against_its_start_model(setup):
    run, config = setup["first"], setup["config"]
    result = evaluate_run(run, config=config)
    pairwise = result["pairwise"]

    verdicts = [json.loads(line) for line in (run / "evaluation" / "verdicts.jsonl").open()]
    assert [v["set"] for v in verdicts] == ["heldout"] * 3 + ["alpaca_eval"] * 2 + ["mt_bench"]
    assert verdicts[0]["prompt"] == [{"role": "user", "content": PROMPTS[0]}]
    outcomes = [v["outcome"] for v in verdicts]
    assert (pairwise["wins"], pairwise["ties"], pairwise["losses"]) == (
        outcomes.count(1.0),
        outcomes.count(0.5),
        outcomes.count(0.0),
    )
    assert pairwise["num_prompts"] == 6
    assert pairwise["win_rate"] == pytest.approx(sum(outcomes) / 6)
    low, high = pairwise["win_rate_ci"]
    assert low <= pairwise["win_rate"] <= high
    for v in verdicts:  # both orders were asked; agreeing orders decide, others are ties
        decided = v["reason"] is None
        assert decided == (v["verdict_candidate_first"] != v["verdict_baseline_first"])
        assert (v["outcome"] != 0.5) == decided
        assert v["candidate"]["num_tokens"] <= 5 and v["baseline"]["num_tokens"] <= 5
    assert result["length"]["candidate"]["mean_tokens"] == pytest.approx(
        sum(v["candidate"]["num_tokens"] for v in verdicts) / 6
    )

    assert result["baseline"]["model"] == str(setup["start"])
    assert result["candidate"]["model"] == str(run / "final")
    assert result["judge"]["sha256"] == result["baseline"]["sha256"]
    assert len(result["judge_notes"]) == 1 and "start model itself" in result["judge_notes"][0]

    checked = [json.loads(line) for line in (run / "evaluation" / "ifeval.jsonl").open()]
    assert [c["model"] for c in checked] == ["candidate"] * 2 + ["baseline"] * 2
    for role in ("candidate", "baseline"):
        scores = result["ifeval"][role]
        mine = [c for c in checked if c["model"] == role]
        assert scores["num_prompts"] == 2
        assert scores["prompt_level_strict"] == sum(c["prompt_level_strict"] for c in mine) / 2

    manifest = load_manifest(run)
    assert manifest["evaluation"] == json.loads(json.dumps(result))
    assert manifest["evaluation"]["summary"]["win_rate"] == pairwise["win_rate"]
    page = (run / "report.html").read_text()
    assert page.count('<section id="evaluation">') == 1 and "<h1>run</h1>" in page
    assert "start model itself" in page and 'data-plot="length"' in page

    # Again: every answer comes from the sample cache, the verdicts are the same, and the
    # report still holds one evaluation section.
    cache = Path(__import__("os").environ["ORPO_PIPELINE_CACHE"]) / "samples"
    shards = sorted(cache.rglob("*.jsonl"))
    again = evaluate_run(run, config=config)
    assert sorted(cache.rglob("*.jsonl")) == shards
    assert again["pairwise"] == pairwise
    assert (run / "report.html").read_text().count('<section id="evaluation">') == 1


def test_cli_against_another_run_and_runs_diff(setup):
    first, second, runs = setup["first"], setup["second"], setup["runs"]
    config_file = first.parent.parent / "eval.yaml"
    config_file.write_text(json.dumps(setup["config"].model_dump(mode="json")))
    for run in (first, second):
        result = CliRunner().invoke(
            cli,
            [
                "eval",
                run.name,
                "--root",
                str(runs),
                "--config",
                str(config_file),
                "--against",
                "first",
            ],
            catch_exceptions=False,
        )
        assert result.exit_code == 0, result.output
        assert "win_rate:" in result.output and "evaluation: up to 6 prompts" in result.output
    evaluation = load_manifest(second)["evaluation"]
    assert evaluation["baseline"]["label"] == "run first"
    assert evaluation["baseline"]["model"] == str(first / "final")
    assert evaluation["judge_notes"] == []  # the judge is the start model, in neither contest
    itself = load_manifest(first)["evaluation"]["pairwise"]
    assert (itself["wins"], itself["losses"]) == (0, 0)  # the same answers on both sides
    a, b = load_manifest(first), load_manifest(second)
    before, after = a["evaluation"]["summary"], b["evaluation"]["summary"]
    expected = {k: [before[k], after[k]] for k in before if before[k] != after[k]}
    assert diff_manifests(a, b)["evaluation"] == expected
    assert "ifeval_prompt_level_strict_candidate" in after
    b["evaluation"]["summary"] = after | {"win_rate": 0.75}
    assert diff_manifests(a, b)["evaluation"]["win_rate"] == [before["win_rate"], 0.75]
    del b["evaluation"]  # a run without evaluation: every number is shown as gone
    assert diff_manifests(a, b)["evaluation"]["lc_win_rate"] == [before["lc_win_rate"], None]


def test_eval_after_takes_true_false_or_a_config():
    from pydantic import BaseModel

    from orpo_pipeline.evaluation.config import EvalAfter

    class Holder(BaseModel):
        eval_after: EvalAfter = EvalConfig()

    assert Holder(eval_after=True).eval_after == EvalConfig()
    assert Holder(eval_after=False).eval_after is None
    assert Holder(eval_after={"num_ifeval_prompts": 0}).eval_after.num_ifeval_prompts == 0


def test_bad_configs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="implicit_reward"):
        EvalConfig(judge=JudgeConfig(judge="implicit_reward", reference="default"))
    result = CliRunner().invoke(cli, ["eval", str(tmp_path), "--set", "max_new_tokens=0"])
    assert result.exit_code != 0 and "max_new_tokens" in result.output


def test_prompts_longer_than_the_limit_are_passed_over(setup):
    from orpo_pipeline.evaluation.run import benchmark_prompts, heldout_prompts

    every = benchmark_prompts("arena_hard", 1250)
    short = benchmark_prompts("arena_hard", 4, max_chars=100)
    assert len(short) == 4 and all(len(p[0]["content"]) <= 100 for p in short)
    assert all(p in every for p in short) and len(every) == 1250
    assert len(benchmark_prompts("mt_bench", 500)) == 80  # first turns only
    pairs = setup["first"].parent.parent / "eval.jsonl"
    assert heldout_prompts(pairs, 10) == [[{"role": "user", "content": p}] for p in PROMPTS]
    kept = heldout_prompts(pairs, 10, max_chars=12)
    assert kept == [[{"role": "user", "content": p}] for p in PROMPTS if len(p) <= 12]


def test_heldout_prompts_come_from_labelled_rows_and_sft_records_too(tmp_path):
    from orpo_pipeline.evaluation.run import heldout_prompts

    labelled = tmp_path / "unpaired.jsonl"
    rows = [
        {"prompt": p, "completion": "an answer", "label": i % 2 == 0}
        for i, p in enumerate([PROMPTS[0], PROMPTS[0], PROMPTS[1]])
    ]
    labelled.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sft = tmp_path / "sft.jsonl"
    sft.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": p},
                        {"role": "assistant", "content": "ok"},
                    ]
                }
            )
            + "\n"
            for p in PROMPTS[:2]
        )
    )
    expected = [[{"role": "user", "content": p}] for p in PROMPTS[:2]]
    assert heldout_prompts(labelled, 10) == expected  # a repeated prompt counts once
    assert heldout_prompts(sft, 10) == expected
