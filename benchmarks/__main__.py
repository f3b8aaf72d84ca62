"""Run every `bench_*.py` module's `main()` in turn: `python -m benchmarks [--quick]`."""

import importlib
import pkgutil
import sys
from pathlib import Path


def main() -> None:
    names = sorted(
        module.name
        for module in pkgutil.iter_modules([str(Path(__file__).parent)])
        if module.name.startswith("bench_")
    )
    for name in names:
        print(f"## {name}", flush=True)
        importlib.import_module(f"benchmarks.{name}").main(sys.argv[1:])


if __name__ == "__main__":
    main()
