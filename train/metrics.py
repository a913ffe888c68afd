"""Task metrics, the overall score, and the prediction files, all by the task's declaration (data/tasks.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data.atomic import atomic_write
from data.tasks import DataError, TaskSpec

__all__ = ["pearson", "spearman", "f1", "task_metric", "overall_score", "predictions_dir", "prediction_file",
           "write_predictions", "read_predictions"]


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r in float64, nan when either vector is constant (as scipy.stats.pearsonr gives it)."""
    x, y = (np.asarray(v, np.float64) for v in (x, y))
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.clip(np.corrcoef(x, y)[0, 1], -1.0, 1.0))


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties given their mean rank (scipy.stats.rankdata's default)."""
    values, inverse, counts = np.unique(np.asarray(x, np.float64), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2)[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation: Pearson's r of the ranks."""
    return pearson(_ranks(x), _ranks(y))


def f1(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """F1 of class 1 for two classes; the unweighted mean of the classes' F1 (macro) for more."""
    scores = []
    for k in range(num_classes):
        true_pos = np.sum((preds == k) & (labels == k))
        predicted, actual = np.sum(preds == k), np.sum(labels == k)
        scores.append(2 * true_pos / (predicted + actual) if predicted + actual else 0.0)
    return float(scores[1] if num_classes == 2 else np.mean(scores))


def task_metric(spec: TaskSpec, preds: np.ndarray, labels: np.ndarray) -> float:
    """The task's declared metric of `preds` against `labels`."""
    if spec.metric == "pearson":
        return pearson(preds, labels)
    if spec.metric == "spearman":
        return spearman(preds, labels)
    if spec.metric == "f1":
        return f1(preds, labels, spec.num_classes)
    return float(np.mean(preds == labels))


def overall_score(metrics: dict[str, float], specs: dict[str, TaskSpec]) -> float | None:
    """The CS224N score, (sst_acc + para_acc + (sts_pearson + 1) / 2) / 3: the mean over the scored tasks that
    count in it (in_overall), correlations mapped to 0-1 by (r + 1) / 2. A run without such a task gets the same
    mean over all its scored tasks; None when nothing is scored."""
    scored = [task for task in metrics if task in specs]
    counted = [task for task in scored if specs[task].in_overall] or scored
    parts = [(metrics[t] + 1) / 2 if specs[t].metric in ("pearson", "spearman") else metrics[t] for t in counted]
    return float(np.mean(parts)) if parts else None


def predictions_dir(run_dir: Path) -> Path:
    """The folder of a run's prediction files (and of a row's copy in results/)."""
    return Path(run_dir) / "predictions"


def prediction_file(run_dir: Path, task: str, split: str) -> Path:
    """Where a run keeps its predictions of `task` on `split`: `predictions/<task>-<split>-output.csv`, the name the
    CS224N hand-in expects."""
    return predictions_dir(run_dir) / f"{task}-{split}-output.csv"


def write_predictions(path: Path, spec: TaskSpec, ids, preds: np.ndarray) -> None:
    """Writes a prediction file in the CS224N layout (which the course's leaderboard reads): a header line, then
    `id , prediction` per example; scores with 4 decimals, classes as integers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    formatted = (f"{p:.4f}" if spec.is_regression else str(int(p)) for p in preds)
    with atomic_write(path, encoding="utf-8") as f:
        f.write(f"id \t {spec.prediction_header} \n")
        for example_id, p in zip(ids, formatted):
            f.write(f"{example_id} , {p} \n")


def read_predictions(path: Path) -> dict[str, float]:
    """A prediction file that write_predictions wrote (`id , prediction` per line after a header) as {id:
    prediction}."""
    lines = Path(path).read_text().splitlines()[1:]
    try:
        return {key.strip(): float(value) for key, value in (line.split(",") for line in lines if line.strip())}
    except ValueError as err:
        raise DataError(f"{path}: not a prediction file ({err})") from None
