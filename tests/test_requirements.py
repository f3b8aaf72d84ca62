"""Declared dependency bounds: checked at import, with the version to install in the message."""

import subprocess
import sys
import tomllib
from importlib.metadata import requires
from pathlib import Path

from packaging.requirements import Requirement

from orpo_pipeline.requirements import unmet

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_unmet_names_old_and_missing_packages_and_skips_extras():
    problems = unmet(["polars>=99", "no-such-package>=1", "ray>=2; extra == 'ray'", "click>=8"])
    assert [(str(r), found) for r, found in problems] == [
        ("polars>=99", f"found {__import__('polars').__version__}"),
        ("no-such-package>=1", "not installed"),
    ]


def test_the_installed_metadata_is_this_pyproject():
    installed = {Requirement(r).name: str(Requirement(r)) for r in requires("orpo-pipeline")}
    for line in PYPROJECT["project"]["dependencies"]:
        assert installed[Requirement(line).name] == str(Requirement(line))


def test_every_runtime_dependency_has_a_minimum_and_torch_a_range():
    for line in PYPROJECT["project"]["dependencies"]:
        requirement = Requirement(line)
        operators = {spec.operator for spec in requirement.specifier}
        assert ">=" in operators, f"{line}: state the oldest version that works"
        assert "==" not in operators, f"{line}: exact pins belong in requirements.lock"
    torch = next(
        Requirement(r) for r in PYPROJECT["project"]["dependencies"] if r.startswith("torch")
    )
    assert {spec.operator for spec in torch.specifier} == {">=", "<"}


def test_import_fails_with_the_version_to_install(tmp_path):
    """A too-old package (its metadata shadowed first on the path) stops the import clearly."""
    fake = tmp_path / "polars-1.0.0.dist-info"
    fake.mkdir()
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: polars\nVersion: 1.0.0\n")
    done = subprocess.run(
        [sys.executable, "-c", "import orpo_pipeline"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tmp_path), "PATH": ""},
        cwd=tmp_path,
    )
    assert done.returncode == 1
    minimum = next(
        str(Requirement(r).specifier)
        for r in PYPROJECT["project"]["dependencies"]
        if r.startswith("polars")
    )
    assert (
        f"ImportError: orpo-pipeline needs other package versions:\n  polars{minimum}: "
        "found 1.0.0\nInstall: pip install 'polars" in done.stderr
    )
