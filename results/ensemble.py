"""What several rows give together: `python results/ensemble.py ROW_DIR ROW_DIR [...]`.

Reads each row's dev predictions (predictions/<task>-dev-output.csv, in a row's folder of results/<budget>/ or a
run directory) for every task all the rows predict, and the shipped dev labels. Prints per task and overall each
row's score, the mean of those scores, and the score of the rows' predictions combined: the majority vote for
class tasks (ties to the lower class), the mean for score tasks. The combination is several models, not one: a
reference for what one model distilled from them, or their soup, might reach.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data.tasks import DataError, TaskSpec, read_rows, registry  # noqa: E402
from train.metrics import overall_score, prediction_file, read_predictions, task_metric  # noqa: E402


def row_predictions(row_dir: Path, task: str, ids: list[str]) -> np.ndarray:
    """The row's dev predictions of `task` in the order of `ids`; refuses a file that misses any of them."""
    path = prediction_file(row_dir, task, "dev")
    if not path.exists():
        raise DataError(f"{path}: no such file")
    predicted = read_predictions(path)
    missing = [i for i in ids if i not in predicted]
    if missing:
        raise DataError(f"{path}: no prediction for {len(missing)} dev id(s), e.g. {missing[0]}")
    return np.array([predicted[i] for i in ids])


def majority_vote(preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Per example the class most rows predict (rows x examples in), ties to the lower class."""
    votes = np.stack([(preds == c).sum(axis=0) for c in range(num_classes)], axis=1)
    return votes.argmax(axis=1)


def combine(spec: TaskSpec, preds: np.ndarray) -> np.ndarray:
    """The rows' predictions (rows x examples) as one: the mean score, or the majority vote of classes."""
    return preds.mean(axis=0) if spec.is_regression else majority_vote(preds.astype(int), spec.num_classes)


def shared_tasks(rows: list[Path], specs: dict[str, TaskSpec]) -> list[str]:
    """The tasks (in registry order) that every row has dev predictions for."""
    return [task for task in specs if all(prediction_file(row, task, "dev").exists() for row in rows)]


def scores(rows: list[Path], specs: dict[str, TaskSpec]) -> dict[str, dict[str, float]]:
    """Line name -> task -> dev score (and "overall"): each row (by its folder's name, or its path where two share
    a name); with two rows or more, the mean of their scores and the score of their predictions combined."""
    tasks = shared_tasks(rows, specs)
    if not tasks:
        raise DataError(f"{', '.join(map(str, rows))}: no task with dev predictions in every row")
    names = [row.name for row in rows]
    if len(set(names)) < len(rows):  # rows of one name from several budgets
        names = [str(row) for row in rows]
    table: dict[str, dict[str, float]] = {name: {} for name in names}
    combined: dict[str, float] = {}
    for task in tasks:
        dev = read_rows(specs[task].files["dev"], specs[task], labeled=True)
        preds = np.stack([row_predictions(row, task, dev.ids) for row in rows])
        for name, row_preds in zip(names, preds):
            table[name][task] = task_metric(specs[task], row_preds, dev.labels)
        combined[task] = task_metric(specs[task], combine(specs[task], preds), dev.labels)
    for line in (*table.values(), combined):
        line["overall"] = overall_score(line, specs)
    if len(rows) > 1:
        lines = list(table.values())
        table[f"mean of {len(rows)} rows' scores"] = {key: float(np.mean([line[key] for line in lines]))
                                                      for key in lines[0]}
        table[f"{len(rows)} rows combined"] = combined
    return table


def main(argv=None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", nargs="+", type=Path, metavar="ROW_DIR")
    parser.add_argument("--data-dir", default=str(REPO / "data" / "cs224n"), help="where the dev files are")
    parser.add_argument("--task-file", action="append", default=[], metavar="TOML", help="a file declaring more tasks")
    args = parser.parse_args(argv)
    try:
        table = scores(args.rows, registry(tuple(args.task_file), args.data_dir))
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    columns = list(next(iter(table.values())))
    print("| row | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, line in table.items():
        print(f"| {name} | " + " | ".join(f"{line[c]:.4f}" for c in columns) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
