"""Load YAML configs into pydantic models, with `--set key=value` overrides and located errors."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from orpo_pipeline.errors import ConfigError

Model = TypeVar("Model", bound=BaseModel)


def render_validation_error(error: ValidationError, *, where: str) -> str:
    """One `where: yaml.path: message` line per problem."""
    lines = []
    for problem in error.errors():
        location = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        lines.append(f"{where}: {location}: {problem['msg']}")
    return "\n".join(lines)


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Set `a.b.0.c=value` in nested dicts and lists; the value is parsed as YAML."""
    key, sep, value = assignment.partition("=")
    if not sep or not key:
        msg = f"--set expects key=value, got {assignment!r}"
        raise ConfigError(msg)
    *parents, last = key.split(".")
    node: Any = raw
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if not isinstance(node, dict | list):
            msg = f"--set {key}: {part!r} is not a mapping or list"
            raise ConfigError(msg)
    if isinstance(node, list):
        node[int(last)] = yaml.safe_load(value)
    else:
        node[last] = yaml.safe_load(value)


def load_config(path: Path, model: type[Model], overrides: Sequence[str] = ()) -> Model:
    """Read YAML (safe loader only), apply overrides, validate; errors name the YAML path."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        msg = f"cannot read config {path}: {error.strerror}"
        raise ConfigError(msg) from error
    except UnicodeDecodeError as error:
        msg = f"{path} is not UTF-8 text: byte {error.object[error.start]:#04x} at {error.start}"
        raise ConfigError(msg) from error
    except yaml.YAMLError as error:
        msg = f"{path}: not valid YAML: {error}"
        raise ConfigError(msg) from error
    if not isinstance(raw, dict):
        msg = f"{path}: expected a mapping at the top level, got {type(raw).__name__}"
        raise ConfigError(msg)
    try:
        for assignment in overrides:
            apply_override(raw, assignment)
    except (IndexError, ValueError) as error:
        msg = f"--set {assignment}: no such list position ({error})"
        raise ConfigError(msg) from error
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(render_validation_error(error, where=str(path))) from error


def load_overrides(path: Path | None, model: type[Model], overrides: Sequence[str] = ()) -> Model:
    """`load_config` when a file is given, else the model's defaults with the overrides."""
    if path is not None:
        return load_config(path, model, overrides)
    raw: dict[str, Any] = {}
    try:
        for assignment in overrides:
            apply_override(raw, assignment)
        return model.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(render_validation_error(error, where="--set")) from error
