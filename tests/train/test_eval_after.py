"""`eval_after`: a training run ends by judging its final model against the start model."""

from orpo_pipeline.evaluation.config import EvalConfig
from orpo_pipeline.runs import load_manifest
from orpo_pipeline.stages.judge import JudgeConfig
from orpo_pipeline.train.config import TrainConfig
from orpo_pipeline.train.loop import train
from orpo_pipeline.train.report import write_report
from tests.rlaif.conftest import JUDGE_PROMPT


def test_eval_after_is_off_unless_asked(make_config):
    assert make_config().eval_after is None
    assert TrainConfig.model_validate({"train_pairs": "p.parquet", "eval_after": True}).eval_after
    assert (
        TrainConfig.model_validate({"train_pairs": "p.parquet", "eval_after": False}).eval_after
        is None
    )


def test_a_run_with_eval_after_records_and_reports_the_evaluation(make_config, tiny_dir, tmp_path):
    prompt_file = tmp_path / "judge_prompt.txt"
    prompt_file.write_text(JUDGE_PROMPT)
    evaluation = EvalConfig(
        num_heldout_prompts=2,
        benchmarks={"mt_bench": 1},
        num_ifeval_prompts=1,
        max_new_tokens=3,
        ifeval_max_new_tokens=3,
        judge=JudgeConfig(model=str(tiny_dir), prompt_file=prompt_file),
        num_bootstrap=100,
    )
    result = train(make_config(eval_after=evaluation.model_dump()))
    manifest = load_manifest(result.run_dir)
    assert result.evaluation == manifest["evaluation"]
    pairwise = manifest["evaluation"]["pairwise"]
    assert pairwise["num_prompts"] == 3
    assert pairwise["wins"] + pairwise["ties"] + pairwise["losses"] == 3
    notes = manifest["evaluation"]["judge_notes"]
    assert any("judge is the start model itself" in note for note in notes), notes
    assert "win rate" in result.summary().lower() or "win_rate" in result.summary()
    assert '<section id="evaluation">' in (result.run_dir / "report.html").read_text()
    write_report(result.run_dir)  # `orpo-pipeline report` re-renders and keeps the section
    assert '<section id="evaluation">' in (result.run_dir / "report.html").read_text()
