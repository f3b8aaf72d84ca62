from pathlib import Path

import pytest

from orpo_pipeline.cache import cache_root
from orpo_pipeline.models import provision_default_model

REPO = Path(__file__).resolve().parents[1]
MODEL_CACHE = cache_root()
"""The real cache (the Makefile's), read before any test points ORPO_PIPELINE_CACHE elsewhere."""


@pytest.fixture(scope="session")
def default_checkpoint() -> Path:
    """The embedded default model, provisioned once into the real cache."""
    return provision_default_model(MODEL_CACHE)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch, request):
    """Point the stage cache at a fresh directory; integration tests keep the model cache."""
    if "integration" in request.keywords:
        return
    monkeypatch.setenv("ORPO_PIPELINE_CACHE", str(tmp_path_factory.mktemp("cache")))
