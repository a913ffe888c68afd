"""Predictions of a model for whole tokenized splits: length-sorted batches, sharded over the devices, with a
progress bar per task and split (train/feedback.py)."""

from __future__ import annotations

import functools
from typing import Callable, Iterable, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from data.input_pipeline import EncodedSplit, length_sorted_batches, shard_batch

from .config import TrainConfig
from .feedback import progress
from .losses import predictions
from .model import MultitaskBert

__all__ = ["Predictor", "predict_split"]


class Predictor:
    """A model's jitted prediction functions: `predictor(params, task, encoded, buckets)` gives the predictions
    for every example of a tokenized split, in file order, on the task's reporting scale. With
    `swapped` (the same cross-encoded pairs, sentences swapped), the predictions are taken from the mean of
    the model's outputs on both orders.

    A bi-encoded pair task encodes each sentence once, in length-sorted batches of sentences
    (`EncodedSplit.sentences`), then runs its head on the two sentences' features: a batch of pairs
    would pad both sentences of a pair to the longer one's bucket.

    Each call shows a progress bar over its batches, named "<split> <task>" unless given a `label`; with
    `quiet`, a line when it ends instead (train/feedback.py).
    """

    def __init__(self, model: MultitaskBert, config: TrainConfig, mesh: Mesh, batch_size: int | None = None,
                 quiet: bool = False):
        self.mesh = mesh
        self.batch_size = batch_size or config.eval_batch_size
        self.quiet = quiet

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
                 swapped: EncodedSplit | None = None, label: str | None = None) -> np.ndarray:
        return np.asarray(predictions(self.outputs(params, task, encoded, buckets, swapped, label), task,
                                      self.config))

    def outputs(self, params, task: str, encoded: EncodedSplit, buckets: np.ndarray,
                swapped: EncodedSplit | None = None, label: str | None = None) -> np.ndarray:
        """The model's raw outputs (logits or scores) for every example, in file order; with `swapped`, the mean
        over both orders."""
        orders = [encoded] if swapped is None else [encoded, swapped]
        # Batches of each order: the sentences', then the heads' on their features (bi), or the examples'.
        batches = len(orders) * (self._batch_count(2 * len(encoded)) + self._batch_count(len(encoded))
                                 if encoded.mode == "bi" else self._batch_count(len(encoded)))
        with progress(label or f"{encoded.split} {task}", batches, "batch", f"{len(encoded)} examples",
                      self.quiet) as bar:
            outputs = [self._split_outputs(params, task, order, buckets, bar) for order in orders]
        return outputs[0] if swapped is None else (outputs[0] + outputs[1]) / 2

    def _batch_count(self, rows: int) -> int:
        return -(-rows // self.batch_size)

    def _split_outputs(self, params, task: str, encoded: EncodedSplit, buckets: np.ndarray, bar) -> np.ndarray:
        if encoded.mode == "bi":
            sentences = encoded.sentences()
            batches = _ticking(length_sorted_batches(sentences, buckets, self.batch_size), bar)
            features = predict_split(self._features[self.config.pooling_of(task)], params, batches, len(sentences),
                                     self.mesh)
            batches = _feature_batches(features[: len(encoded)], features[len(encoded) :], self.batch_size)
        else:
            batches = length_sorted_batches(encoded, buckets, self.batch_size)
        return predict_split(self._outputs[task], params, _ticking(batches, bar), len(encoded), self.mesh)


def _ticking(batches: Iterable[dict], bar) -> Iterator[dict]:
    """The batches, advancing `bar` by one as each is taken."""
    for batch in batches:
        bar.update(1)
        yield batch


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
