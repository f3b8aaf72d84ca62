from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch, request):
    """Point the stage cache at a fresh directory; integration tests keep the model cache."""
    if "integration" in request.keywords:
        return
    monkeypatch.setenv("ORPO_PIPELINE_CACHE", str(tmp_path_factory.mktemp("cache")))
