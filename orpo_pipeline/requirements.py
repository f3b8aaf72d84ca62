"""The dependency versions pyproject.toml declares, checked when the package is imported.

pip installs what pyproject asks, but an environment can drift (a preinstalled CUDA torch, an older
transformers on a GPU box, `pip install --no-deps`). Failing at import with the version to install
beats an AttributeError deep inside a training step.
"""

from importlib.metadata import PackageNotFoundError, requires, version

from packaging.requirements import Requirement


def unmet(requirements: list[str]) -> list[tuple[Requirement, str]]:
    """Each requirement the environment does not satisfy, with what is installed instead."""
    problems = []
    for line in requirements:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # an optional extra or another platform's dependency
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            problems.append((requirement, "not installed"))
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            problems.append((requirement, f"found {installed}"))
    return problems


def check_installed() -> None:
    """Raise ImportError naming each declared dependency whose installed version does not fit."""
    try:
        declared = requires("orpo-pipeline") or []
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return
    if problems := unmet(declared):
        needed = [(f"{r.name}{r.specifier}", found) for r, found in problems]
        listed = "".join(f"\n  {want}: {found}" for want, found in needed)
        fix = " ".join(f"'{want}'" for want, _ in needed)
        msg = f"orpo-pipeline needs other package versions:{listed}\nInstall: pip install {fix}"
        raise ImportError(msg)
