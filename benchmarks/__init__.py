"""Benchmarks (`make bench`); not tests. Each `bench_*.py` module has a `main(argv)`."""
