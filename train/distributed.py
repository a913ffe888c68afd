"""Multi-process (multi-host) training: start-up, the main process, and barriers.

Every process runs the same program on the same global batches (the input stream is
deterministic given the seed, so each builds them all and places only the rows of its
own devices); parameters are replicated; the main process (index 0) alone writes files
and prints. Checkpoints are written by orbax from every process, so the run directory
must be on a file system all processes share.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import jax
import numpy as np

__all__ = ["initialize", "process_count", "is_main_process", "barrier", "main_process_first", "any_process"]

T = TypeVar("T")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Joins the processes of a run with `jax.distributed.initialize`: with no arguments the cluster (SLURM,
    Open MPI, Kubernetes, Cloud TPU) is detected; otherwise the coordinator's host:port, the process count and
    this process's index in 0..count-1, the same address and count on every process."""
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def process_count() -> int:
    """The number of processes in the run (1 unless `initialize` joined others)."""
    return jax.process_count()


def is_main_process() -> bool:
    """True in the process that writes the run's files (the only one in a single-process run)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier `name` (nothing to wait for in a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def main_process_first(name: str, fn: Callable[[], T]) -> T:
    """Runs `fn` in the main process, then in the others: for work that fills a shared cache (data
    preparation, checkpoint conversion) that the others then read instead of writing at the same time."""
    if is_main_process():
        result = fn()
        barrier(name)
        return result
    barrier(name)
    return fn()


def any_process(flag: bool) -> bool:
    """True if `flag` is true in any process: a decision every process then takes at the same point (such as
    stopping at a Ctrl-C that reached only some of them)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(multihost_utils.process_allgather(np.array(flag)).any())
