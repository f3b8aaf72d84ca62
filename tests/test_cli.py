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
    for command in ("convert", "data", "train", "model", "runs", "schema", "generate"):
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


def test_schemas_directory_matches_the_models():
    assert export_schemas(REPO / "schemas", check=True) == []


def test_readme_documents_every_command():
    readme = (REPO / "README.md").read_text()
    for name, command in cli.commands.items():
        assert f"orpo-pipeline {name}" in readme, name
        for sub in getattr(command, "commands", {}):
            assert f"orpo-pipeline {name} {sub}" in readme, f"{name} {sub}"
