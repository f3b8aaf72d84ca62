"""JSON Schema export of the record and config models into `schemas/`."""

import json
from pathlib import Path

from pydantic import BaseModel

from orpo_pipeline.evaluation.config import EvalConfig
from orpo_pipeline.formats import ConvertOptions, FieldMapping
from orpo_pipeline.io import write_text
from orpo_pipeline.pipeline import PipelineSpec
from orpo_pipeline.records import RECORD_MODELS
from orpo_pipeline.train.compare import CompareConfig
from orpo_pipeline.train.config import TrainConfig
from orpo_pipeline.train.recipe import RecipeConfig


def schema_models() -> dict[str, type[BaseModel]]:
    """File name -> model, for every exported schema."""
    models: dict[str, type[BaseModel]] = {
        f"{name}.schema.json": m for name, m in RECORD_MODELS.items()
    }
    models["convert_options.schema.json"] = ConvertOptions
    models["field_mapping.schema.json"] = FieldMapping
    models["pipeline.schema.json"] = PipelineSpec
    models["train_config.schema.json"] = TrainConfig
    models["recipe.schema.json"] = RecipeConfig
    models["compare_config.schema.json"] = CompareConfig
    models["eval_config.schema.json"] = EvalConfig
    return models


def render_schema(model: type[BaseModel]) -> str:
    """The model's JSON Schema as stable, pretty JSON."""
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **model.model_json_schema(),
    }
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def export_schemas(directory: Path, *, check: bool = False) -> list[str]:
    """Write every schema (or, with `check`, only compare); return the names that differed."""
    drifted = []
    for name, model in schema_models().items():
        path = directory / name
        text = render_schema(model)
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        drifted.append(name)
        if not check:
            write_text(text, path)
    return drifted
