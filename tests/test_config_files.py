from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from orpo_pipeline.config_files import apply_override, load_config
from orpo_pipeline.errors import ConfigError
from orpo_pipeline.stages import AnyStageConfig


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    stages: list[AnyStageConfig] = []


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_overrides_reach_nested_lists_and_parse_yaml_values():
    raw = {"name": "x", "stages": [{"stage": "split", "eval_size": 3}]}
    apply_override(raw, "stages.0.eval_size=7")
    apply_override(raw, "extra.flag=true")
    assert raw["stages"][0]["eval_size"] == 7
    assert raw["extra"] == {"flag": True}


def test_errors_name_the_yaml_path(tmp_path):
    path = write(tmp_path, "name: x\nstages:\n  - stage: filter\n    min_response_chars: -1\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, Recipe)
    assert f"{path}: stages.0.filter.min_response_chars: Input should be greater" in str(
        error.value
    )


def test_unknown_stage_and_unknown_key_are_reported(tmp_path):
    path = write(tmp_path, "name: x\nstages:\n  - stage: dedup\n")
    with pytest.raises(ConfigError, match=r"stages\.0: Input tag 'dedup'"):
        load_config(path, Recipe)
    path = write(tmp_path, "name: x\ncolour: red\n")
    with pytest.raises(ConfigError, match="colour: Extra inputs are not permitted"):
        load_config(path, Recipe)


def test_bad_yaml_and_bad_override_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "name: [unclosed\n"), Recipe)
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, "- a\n"), Recipe)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(write(tmp_path, "name: x\n"), Recipe, ["name"])
    with pytest.raises(ConfigError, match="no such list position"):
        load_config(write(tmp_path, "name: x\nstages: []\n"), Recipe, ["stages.4.seed=1"])


def test_yaml_is_loaded_safely(tmp_path):
    path = write(tmp_path, "name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, Recipe)
