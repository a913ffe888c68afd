"""Checkpoints of a run: the latest TrainState with its data position, and the best epoch's parameters.

Both are orbax CheckpointManagers keeping one checkpoint each, with JSON metadata beside the arrays:
    <run>/checkpoints/latest   {"state": params, optimizer state, step; "meta": the loop's Progress}
    <run>/checkpoints/best     {"state": {"params": ...}; "meta": {"epoch", "dev"}}
A write that fails (a full disk, a read-only folder) raises CheckpointWriteError and keeps the previous
checkpoint; the temporary folders of writes that never finished are removed when the managers open.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import time
from pathlib import Path

import orbax.checkpoint as ocp

from .distributed import is_main_process

__all__ = ["CheckpointWriteError", "managers", "save", "restore", "os_error"]

# Orbax writes a checkpoint under this name and renames it when complete.
_UNFINISHED = "*.orbax-checkpoint-tmp*"


class CheckpointWriteError(RuntimeError):
    """A checkpoint that could not be written, with the operating system's reason; the previous one is kept."""


def _remove_unfinished(directory: Path, patience_s: float = 30.0) -> None:
    """Deletes the temporary directories of checkpoint writes that never finished (a kill, a full disk).

    After a failed write in this process, orbax's other writer threads of that checkpoint can still be adding
    files (a full disk fails one item first), so a directory found not empty while being deleted is tried again
    until `patience_s` has passed. (Orbax's own clean-up runs once, in the background, and gives up.)"""
    deadline = time.monotonic() + patience_s
    for unfinished in directory.glob(_UNFINISHED):
        while unfinished.exists():
            try:
                shutil.rmtree(unfinished)
            except FileNotFoundError:
                pass
            except OSError as err:
                if err.errno != errno.ENOTEMPTY or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def _wait_for_writers(directory: Path, quiet_s: float = 0.5, patience_s: float = 30.0) -> None:
    """Returns once no file under `directory`'s unfinished checkpoints has changed for `quiet_s`: when one item
    of a checkpoint fails (a full disk), orbax reports it while the writers of the other items go on."""
    def snapshot():
        stats = {p: p.stat() for p in directory.glob(_UNFINISHED + "/**/*") if p.is_file()}
        return {(str(p), stat.st_size, stat.st_mtime_ns) for p, stat in stats.items()}

    deadline = time.monotonic() + patience_s
    previous, quiet_since = None, time.monotonic()
    while time.monotonic() < deadline:
        try:
            current = snapshot()
        except FileNotFoundError:  # a file renamed or removed while listed
            current = None
        if current != previous:
            previous, quiet_since = current, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return
        time.sleep(0.05)


def managers(run_dir: Path) -> tuple[ocp.CheckpointManager, ocp.CheckpointManager]:
    """The run's (latest, best) checkpoint managers, after removing unfinished writes."""
    directories = [(run_dir / "checkpoints" / name).resolve() for name in ("latest", "best")]
    if is_main_process():
        for directory in directories:
            _remove_unfinished(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True, cleanup_tmp_directories=False)
    latest, best = (ocp.CheckpointManager(directory, options=options) for directory in directories)
    return latest, best


def os_error(err: Exception) -> str | None:
    """The operating system's reason for a failed write, or None if `err` is not one: tensorstore (orbax's
    array writer) reports file errors such as a full disk as ValueError carrying the OS error code."""
    if isinstance(err, OSError):
        return err.strerror or str(err)
    code = re.search(r"os_error_code='(\d+)'", str(err))
    return os.strerror(int(code.group(1))) if code else None


def save(manager: ocp.CheckpointManager, step: int, tree, meta: dict) -> None:
    """Writes `tree` and its JSON `meta` as checkpoint `step` and waits until it is complete."""
    try:
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)))
        manager.wait_until_finished()
    except (OSError, ValueError) as err:
        reason = os_error(err)
        if reason is None:
            raise
        _wait_for_writers(Path(manager.directory))
        raise CheckpointWriteError(f"{manager.directory}: cannot write checkpoint {step} ({reason}); "
                                   "the previous checkpoint is kept") from None


def restore(manager: ocp.CheckpointManager, target) -> tuple:
    """The latest checkpoint's (tree shaped like `target`, meta). `target` may hold jax.ShapeDtypeStruct leaves
    (from `jax.eval_shape`) with their shardings."""
    restored = manager.restore(
        manager.latest_step(),
        args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()),
    )
    return restored["state"], restored["meta"]
