"""How closely teacher files follow their task's gold labels: `python results/teacher_fit.py FILE [FILE ...]`.

A teacher file (train/teach.py) holds a teacher's targets on its task's training rows. Per file: for class targets,
the share of rows whose most probable class is the gold one, the mean probability of the gold class and the mean
entropy (nats); for scores, their Pearson correlation with the gold scores and the mean absolute difference. A teacher
that trained on the rows it predicts fits them far better than it predicts unseen data, and its targets then carry
little beyond the gold labels; a cross-fitted teacher (`train.main --holdout`) predicts each row unseen. A task
declared in a task file of one's own needs that file (`--task-file TOML`, as for train.main).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data.tasks import DataError, read_rows, registry  # noqa: E402
from data.teachers import read_teacher  # noqa: E402


def fit(targets: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The agreement of `targets` (class probabilities (n, K) or scores (n,)) with the gold `labels`."""
    if targets.ndim == 1:
        return {"pearson": float(np.corrcoef(targets, labels)[0, 1]),
                "mean_abs_difference": float(np.abs(targets - labels).mean())}
    gold = labels.astype(int)
    return {"agreement": float((targets.argmax(-1) == gold).mean()),
            "gold_probability": float(targets[np.arange(len(gold)), gold].mean()),
            "entropy": float((targets * -np.log(np.clip(targets, 1e-12, None))).sum(-1).mean())}


def main(argv=None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.add_argument("--data-dir", type=Path, default=REPO / "data" / "cs224n",
                        help="folder of the built-in tasks' files")
    parser.add_argument("--task-file", action="append", default=[], metavar="TOML",
                        help="a task file declaring the files' tasks beside the built-in ones (repeatable)")
    args = parser.parse_args(argv)
    try:
        tasks = registry(tuple(args.task_file), args.data_dir)
    except (OSError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print("| teacher file | task | rows | agreement with gold | gold probability | entropy (nats) |")
    print("|---|---|---|---|---|---|")
    for path in args.files:
        try:
            with np.load(path) as f:
                task = str(f["task"])
            if task not in tasks:
                raise DataError(f"{path}: its task {task!r} is not built in; name the task file declaring it with "
                                "--task-file")
            spec = tasks[task]
            rows = read_rows(spec.files["train"], spec, labeled=True)
            targets = read_teacher(path, spec, rows.ids)
        except (OSError, ValueError, KeyError, DataError) as err:
            print(f"error: {path}: {err}" if str(path) not in str(err) else f"error: {err}", file=sys.stderr)
            return 1
        scores = fit(targets, rows.labels)
        cells = ([f"{scores['agreement']:.3f}", f"{scores['gold_probability']:.3f}", f"{scores['entropy']:.3f}"]
                 if "agreement" in scores else
                 [f"Pearson {scores['pearson']:.3f}", f"mean abs difference {scores['mean_abs_difference']:.3f}", ""])
        print(f"| {path} | {task} | {len(rows)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
