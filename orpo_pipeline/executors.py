"""Where a recipe's shard tasks run: on threads of this process, or on a Ray cluster.

An executor only maps a task function over argument tuples and returns the results in order; the
runner (`pipeline.py`) decides what the tasks are, and every task reads its input from the stage
cache and writes its own shard there, so both executors produce the same files.
"""

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from orpo_pipeline.errors import ConfigError, OrpoPipelineError


class Executor(Protocol):
    """Runs `function(*args)` for each argument tuple; returns the results in order. With
    `parallel=False` a local executor runs one task at a time (tasks that run a model, which
    already uses every core)."""

    def map(
        self, function: Callable[..., Any], calls: Sequence[tuple], *, parallel: bool = True
    ) -> list[Any]: ...


class LocalExecutor:
    """The tasks in this process, on one thread per core: Polars, numpy and Parquet release the
    GIL while they work, so shards overlap their Python and single-threaded parts."""

    def map(
        self, function: Callable[..., Any], calls: Sequence[tuple], *, parallel: bool = True
    ) -> list[Any]:
        """Run the tasks; the first error (in task order) cancels the tasks not yet started."""
        threads = min(os.cpu_count() or 1, len(calls)) if parallel else 1
        if threads <= 1:
            return [function(*args) for args in calls]
        pool = ThreadPoolExecutor(threads)
        try:
            futures = [pool.submit(function, *args) for args in calls]
            return [future.result() for future in futures]
        finally:
            pool.shutdown(cancel_futures=True)


class RayExecutor:
    """Each task as a Ray task (one CPU), all at once; a task whose worker dies is retried.

    Tasks exchange files through the stage cache, so on a cluster of several machines the cache
    directory (`ORPO_PIPELINE_CACHE`) and the inputs must be on a filesystem every node mounts at
    the same path, and orpo-pipeline must be installed on every node.
    """

    max_retries = 3
    """Retries of a task whose worker process died (Ray does not retry a task's own errors)."""

    def map(
        self, function: Callable[..., Any], calls: Sequence[tuple], *, parallel: bool = True
    ) -> list[Any]:
        """Submit every task, wait for all; raise a task's own error as itself. Each task has
        a CPU of its own whether or not `parallel`."""
        import ray

        remote = ray.remote(num_cpus=1, max_retries=self.max_retries)(function)
        try:
            return ray.get([remote.remote(*args) for args in calls])
        except ray.exceptions.RayTaskError as error:
            if isinstance(error.cause, OrpoPipelineError):
                raise error.cause from None
            raise


@contextlib.contextmanager
def executor(name: str, address: str | None = None) -> Iterator[Executor]:
    """The executor called `name`. For Ray: connect to the cluster at `address` (or start a
    local one when it is None and `RAY_ADDRESS` is unset), unless Ray is already initialised in
    this process; a cluster started here is shut down on exit."""
    if name == "local":
        yield LocalExecutor()
        return
    try:
        import ray
    except ImportError as error:
        msg = "executor 'ray' needs Ray: pip install 'orpo-pipeline[ray]'"
        raise ConfigError(msg) from error
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, include_dashboard=False, logging_level="WARNING")
        except ConnectionError as error:
            msg = f"cannot connect to the Ray cluster at {address!r}: {error}"
            raise ConfigError(msg) from error
    try:
        yield RayExecutor()
    finally:
        if started:
            ray.shutdown()
