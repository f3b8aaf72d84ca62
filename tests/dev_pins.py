"""Print requirements.lock's exact pins of pyproject's `dev` extra (for `make test-minimums`)."""

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def dev_pins() -> list[str]:
    """The lock lines of every package the dev extra names, in the extra's order."""
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = [canonicalize_name(Requirement(line).name) for line in extra["dev"]]
    lock = {
        canonicalize_name(line.split("==")[0]): line.strip()
        for line in (REPO / "requirements.lock").read_text().splitlines()
        if "==" in line
    }
    return [lock[name] for name in names]


if __name__ == "__main__":
    print("\n".join(dev_pins()))
