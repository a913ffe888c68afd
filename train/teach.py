"""`python -m train.teach --task TASK --out FILE RUN_DIR [RUN_DIR ...]`: a teacher file for distillation.

Writes the predictions of finished runs on TASK's training rows as soft targets (data/teachers.py): class
probabilities, or the score on the label's scale. Several runs give their mean: an ensemble teacher. Runs that held
out a fold of TASK's rows (`train.main --holdout TASK=K/N`) predict only the rows they held out, and each row gets the
mean of the runs that never saw it: a cross-fitted teacher, whose targets on the training rows are as good as its
predictions on unseen data rather than memorised labels. The file is small enough to commit, so a student
(`python -m train.main --teacher TASK=FILE`) needs no teacher checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np

from data.tasks import DataError
from data.teachers import write_teacher

from .losses import predictions
from .run import Run, RunError, load_run

__all__ = ["teacher_targets", "make_teacher", "main"]


def teacher_targets(run: Run, params, task: str, rows: np.ndarray | None = None) -> np.ndarray:
    """One run's targets for `task`'s training rows in file order (those at positions `rows`, or all): class
    probabilities ((n, 2) for a two-class pair task), or scores on the label's scale."""
    spec, data = run.config.spec(task), run.data[task]
    orders = data.orders("train")
    if rows is not None:
        orders = [encoded.select(rows) for encoded in orders]
    outputs = run.predictor.outputs(params, task, orders[0], data.buckets, *orders[1:])
    if spec.has_class_logits:
        return np.asarray(jax.nn.softmax(outputs, -1))
    if not spec.is_regression:
        positive = np.asarray(jax.nn.sigmoid(outputs))
        return np.stack([1 - positive, positive], -1)
    return np.asarray(predictions(outputs, task, run.config))


def make_teacher(task: str, run_dirs: list[Path], out: Path) -> np.ndarray:
    """Writes the mean of the runs' targets for `task` to `out` and returns it: per row, over every run, or over
    the runs that held the row out when the runs hold out folds (all of them must)."""
    total, count, ids, spec, held_out = None, None, None, None, set()
    for run_dir in run_dirs:
        run, params = load_run(run_dir)
        if task not in run.config.tasks:
            raise RunError(f"{run_dir}: the run has no task {task} (its tasks: {','.join(run.config.tasks)})")
        data = run.data[task]
        run_ids = data.split("train").ids
        if ids is not None and run_ids != ids:
            raise RunError(f"{run_dir}: its {task} training rows differ from those of {run_dirs[0]}")
        held_out.add(data.holdout is not None)
        if len(held_out) > 1:
            raise RunError(f"{run_dir}: mixes runs that hold out a fold of {task}'s rows with runs that saw them all")
        rows = np.flatnonzero(data.held_out_mask()) if data.holdout else None  # None: every row
        ids, spec = run_ids, run.config.spec(task)
        targets = teacher_targets(run, params, task, rows)
        if total is None:
            total, count = np.zeros((len(ids), *targets.shape[1:]), np.float32), np.zeros(len(ids), np.int64)
        index = slice(None) if rows is None else rows
        total[index] += targets
        count[index] += 1
        print(f"{run_dir}: {task} targets for {len(targets)} of {len(ids)} training rows", flush=True)
    if not count.all():
        missing = np.flatnonzero(count == 0)
        raise RunError(f"no run held out {len(missing)} of {task}'s {len(ids)} training rows (the first: "
                       f"{ids[missing[0]]}): give runs of every fold")
    mean = total / count.reshape(-1, *[1] * (total.ndim - 1)).astype(np.float32)
    write_teacher(out, spec, ids, mean, [str(d) for d in run_dirs])
    return mean


def main(argv=None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m train.teach", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, help="the task whose training rows the runs predict")
    parser.add_argument("--out", required=True, help="the teacher file to write (.npz)")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished runs with that task")
    args = parser.parse_args(argv)
    try:
        make_teacher(args.task, [Path(d) for d in args.runs], Path(args.out))
    except (RunError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
