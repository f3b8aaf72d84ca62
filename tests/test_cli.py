import json
import subprocess
import sys

from click.testing import CliRunner

from orpo_pipeline.cli import cli
from orpo_pipeline.schemas import export_schemas
from tests.conftest import REPO


def test_help_lists_the_commands_without_importing_torch():
    code = (
        "import sys; from click.testing import CliRunner; from orpo_pipeline.cli import cli; "
        "r = CliRunner().invoke(cli, ['--help']); print(r.output); "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    for command in ("convert", "data", "report", "train", "model", "runs", "schema", "generate"):
        assert f"  {command} " in done.stdout


def test_every_command_has_help():
    runner = CliRunner()
    groups = [(name, command) for name, command in cli.commands.items()]
    for name, command in groups:
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, name
        for sub in getattr(command, "commands", {}):
            assert runner.invoke(cli, [name, sub, "--help"]).exit_code == 0, f"{name} {sub}"


def test_config_error_is_one_message_without_traceback(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(
        "name: x\nsource: {inputs: [a.jsonl]}\nstages: [{stage: dedup}]\noutput_dir: out\n"
    )
    result = CliRunner().invoke(cli, ["data", str(recipe)])
    assert result.exit_code == 1
    assert "stages.0: Input tag 'dedup'" in result.output
    assert "Traceback" not in result.output


def test_missing_input_is_a_clear_error(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: x\nsource: {{inputs: [{tmp_path}/nope.jsonl]}}\noutput_dir: out\n")
    result = CliRunner().invoke(cli, ["data", str(recipe)])
    assert result.exit_code == 1
    assert "nope.jsonl" in result.output
    assert "Traceback" not in result.output


def test_a_recipe_that_writes_no_pairs_exits_non_zero_and_keeps_its_rejects(tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": "yes", "rejected": "no"} for i in range(3)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: x\nsource: {{inputs: [{tmp_path}/pairs.jsonl]}}\n"
        f"stages: [{{stage: filter, min_response_chars: 10}}]\noutput_dir: {tmp_path}/out\n"
    )
    result = CliRunner().invoke(cli, ["data", str(recipe)])
    assert result.exit_code == 1, result.output
    assert "no pairs written" in result.output and "Traceback" not in result.output
    rejects = (tmp_path / "out" / "rejects" / "01_filter.jsonl").read_text().splitlines()
    assert [json.loads(line)["reason"] for line in rejects] == ["response_too_short"] * 3
    assert (tmp_path / "out" / "datacard.html").exists()


def test_schemas_directory_matches_the_models():
    assert export_schemas(REPO / "schemas", check=True) == []


def test_readme_documents_every_command():
    readme = (REPO / "README.md").read_text()
    for name, command in cli.commands.items():
        assert f"orpo-pipeline {name}" in readme, name
        for sub in getattr(command, "commands", {}):
            assert f"orpo-pipeline {name} {sub}" in readme, f"{name} {sub}"


def test_report_renders_a_data_run_and_a_training_run(tmp_path):
    (tmp_path / "hh.jsonl").write_text(
        json.dumps(
            {
                "chosen": "\n\nHuman: hi\n\nAssistant: hello",
                "rejected": "\n\nHuman: hi\n\nAssistant: go",
            }
        )
        + "\n"
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: x\nsource: {{inputs: [{tmp_path}/hh.jsonl]}}\noutput_dir: {tmp_path}/out\n"
    )
    runner = CliRunner()
    assert runner.invoke(cli, ["data", str(recipe)], catch_exceptions=False).exit_code == 0
    (tmp_path / "out" / "datacard.html").unlink()
    result = runner.invoke(cli, ["report", str(tmp_path / "out")], catch_exceptions=False)
    assert result.exit_code == 0
    assert "datacard.html" in result.output and (tmp_path / "out" / "datacard.html").exists()

    run = tmp_path / "train-run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"kind": "train"}))
    (run / "config.yaml").write_text("max_steps: 1\n")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.5}) + "\n")
    result = runner.invoke(cli, ["report", str(run)], catch_exceptions=False)
    assert result.exit_code == 0
    assert (run / "report.html").exists()


def test_report_errors_are_one_message_without_traceback(tmp_path):
    result = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert result.exit_code == 1
    assert "manifest.json" in result.output and "Traceback" not in result.output
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "train"}))
    result = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert result.exit_code == 1
    assert "metrics.jsonl" in result.output and "Traceback" not in result.output
