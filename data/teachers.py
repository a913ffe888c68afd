"""Teacher files: a finished run's (or an ensemble's) predictions on a task's training rows, as soft targets for
a student (distillation, train/losses.py), so that no teacher checkpoint is needed to train one.

A teacher file is a small .npz: `task`, `kind`, `targets` (per training row in file order, class probabilities
(n, K) for classes, K = 2 for a two-class pair task, or the score on the label's scale (n,)), `ids_sha256` (the
training rows' ids, hashed) and `runs` (the run directories it was made from). `read_teacher` refuses a file that
does not match the task's training data, naming it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from data.atomic import atomic_write
from data.tasks import DataError, TaskSpec

__all__ = ["ids_digest", "target_width", "write_teacher", "read_teacher"]


def ids_digest(ids: list[str]) -> str:
    """SHA256 of the row ids in order (one per line)."""
    return hashlib.sha256("".join(f"{i}\n" for i in ids).encode()).hexdigest()


def target_width(spec: TaskSpec) -> int | None:
    """Columns of a task's targets: its class count (2 for a two-class pair task), or None for scores."""
    return None if spec.is_regression else spec.num_classes


def write_teacher(path: Path, spec: TaskSpec, ids: list[str], targets: np.ndarray, runs: list[str]) -> None:
    """Writes a teacher file for `spec`'s training rows `ids` (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        np.savez_compressed(f, task=spec.name, kind=spec.kind, targets=np.asarray(targets, np.float32),
                            ids_sha256=ids_digest(ids), runs=np.asarray(runs, dtype=str))


def read_teacher(path: str | Path, spec: TaskSpec, ids: list[str]) -> np.ndarray:
    """The targets of a teacher file for `spec`'s training rows `ids`; DataError naming the file when it is not
    one, or was made for another task, other rows or another target shape."""
    path = Path(path)
    try:
        with np.load(path) as f:
            fields = {k: f[k] for k in ("task", "kind", "targets", "ids_sha256")}
    except FileNotFoundError:
        raise DataError(f"{path}: teacher file not found") from None
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"{path}: not a teacher file ({err})") from None
    targets, width = fields["targets"], target_width(spec)
    expected = (len(ids),) if width is None else (len(ids), width)
    problems = [
        (str(fields["task"]) != spec.name or str(fields["kind"]) != spec.kind,
         f"made for task {fields['task']} ({fields['kind']}), not {spec.name} ({spec.kind})"),
        (targets.shape != expected, f"targets of shape {targets.shape}, the task's {len(ids)} training rows need "
                                    f"{expected}"),
        (str(fields["ids_sha256"]) != ids_digest(ids), "made for other training rows (their ids differ)"),
        (not np.all(np.isfinite(targets)), "holds targets that are not finite"),
    ]
    for failed, message in problems:
        if failed:
            raise DataError(f"{path}: {message}")
    return targets
