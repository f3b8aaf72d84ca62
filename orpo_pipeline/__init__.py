"""orpo-pipeline: from preference or SFT data to an ORPO-trained model."""

import os

# Polars' allocator (jemalloc) gives freed memory back to the system at once instead of lazily:
# lazily freed pages (MADV_FREE) stay in the process's RSS until the kernel needs them, which
# made a 1 M-pair recipe peak ~250 MB higher at the same speed. Takes effect when Polars is
# first imported after this package; a `_RJEM_MALLOC_CONF` already set is left alone.
os.environ.setdefault("_RJEM_MALLOC_CONF", "muzzy_decay_ms:0")

__version__ = "0.1.0"

from orpo_pipeline.requirements import check_installed

check_installed()
