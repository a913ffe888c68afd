"""Dev metrics, prediction files, and `python -m train.evaluate --checkpoint RUN_DIR`."""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from data.input_pipeline import EncodedSplit, length_sorted_batches, shard_batch

from .config import TrainConfig
from .losses import predictions
from .model import MultitaskBert

__all__ = ["Predictor", "predict_split", "task_metric", "overall_score", "write_predictions"]

# Column header of each task's prediction file, as the CS224N scripts write them.
PREDICTION_HEADERS = {
    "sst": "Predicted_Sentiment",
    "para": "Predicted_Is_Paraphrase",
    "sts": "Predicted_Similarity",
    "cfimdb": "Predicted_Sentiment",
}


class Predictor:
    """A model's jitted prediction functions: `predictor(params, task, encoded, buckets)` gives the predictions
    for every example of a tokenized split, in file order, on the task's reporting scale. With
    `swapped` (the same cross-encoded pairs, sentences swapped), the predictions are taken from the mean of
    the model's outputs on both orders.

    A bi-encoded pair task encodes each sentence once, in length-sorted batches of sentences
    (`EncodedSplit.sentences`), then runs its head on the two sentences' features: a batch of pairs
    would pad both sentences of a pair to the longer one's bucket.
    """

    def __init__(self, model: MultitaskBert, config: TrainConfig, mesh: Mesh, batch_size: int | None = None):
        self.mesh = mesh
        self.batch_size = batch_size or config.eval_batch_size

        def outputs(params, batch, task):
            if "u" in batch:
                return model.apply({"params": params}, batch["u"], batch["v"], task, method=MultitaskBert.pair_head)
            return model.apply({"params": params}, batch, task)

        self._outputs = {task: jax.jit(functools.partial(outputs, task=task)) for task in config.tasks}

        def features(params, batch, pooling):
            return model.apply({"params": params}, batch, pooling, method=MultitaskBert.pair_features)

        # Keyed by pooling, not task: pair tasks pooled alike share their compiled programs.
        self._features = {pooling: jax.jit(functools.partial(features, pooling=pooling))
                          for pooling in {config.pooling_of(task) for task in config.tasks}}
        self.config = config

    def __call__(self, params, task: str, encoded: EncodedSplit, buckets: np.ndarray,
                 swapped: EncodedSplit | None = None) -> np.ndarray:
        outputs = self._split_outputs(params, task, encoded, buckets)
        if swapped is not None:
            outputs = (outputs + self._split_outputs(params, task, swapped, buckets)) / 2
        return np.asarray(predictions(outputs, task, self.config))

    def _split_outputs(self, params, task: str, encoded: EncodedSplit, buckets: np.ndarray) -> np.ndarray:
        if encoded.mode == "bi":
            sentences = encoded.sentences()
            batches = length_sorted_batches(sentences, buckets, self.batch_size)
            features = predict_split(self._features[self.config.pooling_of(task)], params, batches, len(sentences),
                                     self.mesh)
            batches = _feature_batches(features[: len(encoded)], features[len(encoded) :], self.batch_size)
        else:
            batches = length_sorted_batches(encoded, buckets, self.batch_size)
        return predict_split(self._outputs[task], params, batches, len(encoded), self.mesh)


def _feature_batches(u: np.ndarray, v: np.ndarray, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Batches of pair features "u", "v" in file order, with "index" (-1 and zeros for padding rows)."""
    for start in range(0, len(u), batch_size):
        index = np.arange(start, start + batch_size)
        real = index < len(u)
        rows = np.where(real, index, 0)
        yield {"u": np.where(real[:, None], u[rows], 0.0), "v": np.where(real[:, None], v[rows], 0.0),
               "index": np.where(real, index, -1).astype(np.int32)}


def predict_split(predict_fn: Callable, params, batches: Iterable[dict], size: int, mesh: Mesh) -> np.ndarray:
    """Runs `predict_fn` over host eval batches, each placed on `mesh`, and returns its outputs per row
    (size rows, by `batch["index"]`), gathered from every process in a multi-process run."""
    out = None
    for batch in batches:
        index = np.asarray(batch["index"])
        placed = shard_batch({k: v for k, v in batch.items() if k != "index"}, mesh)
        values = multihost_utils.process_allgather(predict_fn(params, placed), tiled=True)
        if out is None:
            out = np.zeros((size,) + values.shape[1:], values.dtype)
        real = index >= 0
        out[index[real]] = values[real]
    return out


def pearson_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r of two equal-length vectors in float64 (nan when either is constant), as scipy.stats.pearsonr
    gives it; computed here because importing scipy.stats adds about a second to every command's start."""
    x, y = (np.asarray(v, np.float64) for v in (x, y))
    x, y = x - x.mean(), y - y.mean()
    norms = np.linalg.norm(x) * np.linalg.norm(y)
    if norms == 0:
        return float("nan")
    return float(np.clip(np.dot(x, y) / norms, -1.0, 1.0))


def task_metric(task: str, preds: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy for classification tasks, Pearson correlation for STS."""
    if task == "sts":
        return pearson_correlation(preds, labels)
    return float(np.mean(preds == labels))


def overall_score(metrics: dict[str, float]) -> float | None:
    """(sst_acc + para_acc + (sts_pearson + 1) / 2) / 3 when all three tasks are scored, else the mean of
    what is there (with STS mapped to 0-1 the same way)."""
    parts = [(metrics[t] + 1) / 2 if t == "sts" else metrics[t]
             for t in ("sst", "para", "sts", "cfimdb") if t in metrics]
    return float(np.mean(parts)) if parts else None


def write_predictions(path: Path, task: str, ids, preds: np.ndarray) -> None:
    """Writes a CS224N prediction file: a header line, then `id , prediction` per example."""
    path.parent.mkdir(parents=True, exist_ok=True)
    formatted = (f"{p:.4f}" if task == "sts" else str(int(p)) for p in preds)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f"id \t {PREDICTION_HEADERS[task]} \n")
            for example_id, p in zip(ids, formatted):
                f.write(f"{example_id} , {p} \n")
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def main(argv=None) -> int:
    """Re-scores dev with a run's best checkpoint and rewrites its predictions."""
    from .loop import RunError, evaluate_run

    parser = argparse.ArgumentParser(prog="python -m train.evaluate", description=main.__doc__)
    parser.add_argument("--checkpoint", required=True, metavar="RUN_DIR", help="a training run directory")
    parser.add_argument("--splits", default="dev,test", help="comma-separated splits to predict (default: dev,test)")
    args = parser.parse_args(argv)
    try:
        metrics = evaluate_run(Path(args.checkpoint), tuple(args.splits.split(",")))
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(" ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
