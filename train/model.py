"""The multi-task model: a BERT encoder, masked pooling, and one head per task.

Batches follow data/input_pipeline.py: a sentence-pair batch in bi-encoder form holds
sentence a in rows [0:B] and sentence b in rows [B:2B], so one encoder call embeds both.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bert_flax import BertConfig, BertModel
from bert_flax.modeling import Dropout

from .config import TrainConfig

__all__ = ["MultitaskBert", "pool", "cosine_similarity", "NUM_CLASSES"]

NUM_CLASSES = {"sst": 5, "cfimdb": 2}


def pool(encoder_output: dict, attention_mask: jax.Array, pooling: str) -> jax.Array:
    """Sentence embeddings: the pooler output on [CLS], or the masked mean or max of the last hidden states."""
    if pooling == "cls":
        return encoder_output["pooler_output"]
    hidden = encoder_output["last_hidden_state"]
    mask = attention_mask[..., None].astype(hidden.dtype)
    if pooling == "mean":
        return (hidden * mask).sum(1) / jnp.maximum(mask.sum(1), 1.0)
    # A fully padded row has no maximum: give it zeros rather than -inf.
    masked = jnp.where(mask > 0, hidden, jnp.finfo(hidden.dtype).min)
    return jnp.where(mask.sum(1) > 0, masked.max(1), 0.0)


def cosine_similarity(u: jax.Array, v: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Row-wise cosine similarity, safe for zero vectors."""
    dot = (u * v).sum(-1)
    return dot / jnp.maximum(jnp.linalg.norm(u, axis=-1) * jnp.linalg.norm(v, axis=-1), eps)


class MultitaskBert(nn.Module):
    """BERT plus task heads. `__call__(batch, task)` returns the task's raw output per example:
    class logits (sst, cfimdb), a paraphrase logit (para), or an STS score (sts: a logit or
    value for the linear head, the cosine for the cosine head).

    `encoder_chunks` > 1 encodes a batch's rows in that many independent encoder calls. The outputs are
    the same; on XLA:CPU the two chains of one program let one chunk's memory-bound work run beside the
    other's products: 2 chunks made a float32 step about 7% faster on a 2-core Intel Xeon and no faster on
    a 2-core AMD EPYC, and each program holds the encoder twice and compiles about 2x slower
    (docs/benchmarks.md). One chunk suits accelerators and short runs."""

    bert_config: BertConfig
    config: TrainConfig
    dtype: jnp.dtype = jnp.float32
    encoder_chunks: int = 1

    def setup(self):
        cfg = self.config
        self.bert = BertModel(self.bert_config, dtype=self.dtype)
        self.dropout = Dropout(cfg.dropout)
        self.sst_classifier = nn.Dense(NUM_CLASSES["sst"], name="sst_classifier")
        self.cfimdb_classifier = nn.Dense(NUM_CLASSES["cfimdb"], name="cfimdb_classifier")
        self.para_classifier = nn.Dense(1, name="para_classifier")
        self.sts_regressor = nn.Dense(1, name="sts_regressor")
        if cfg.shared_layer:
            self.pair_shared = nn.Dense(self.bert_config.hidden_size, name="pair_shared")

    def embed(self, batch: dict, pooling: str, deterministic: bool) -> jax.Array:
        """Sentence embeddings of every row of the batch by `pooling` (cls, mean or max), float32."""
        rows = batch["input_ids"].shape[0]
        bounds = np.linspace(0, rows, min(self.encoder_chunks, rows) + 1).round().astype(int)
        pooled = []
        for start, stop in zip(bounds[:-1], bounds[1:]):
            ids, mask, types = (batch[k][start:stop] for k in ("input_ids", "attention_mask", "token_type_ids"))
            out = self.bert(ids, mask, types, deterministic=deterministic)
            if self.config.option == "pretrain":
                out = jax.lax.stop_gradient(out)
            pooled.append(pool(out, mask, pooling))
        return jnp.concatenate(pooled).astype(jnp.float32)

    def pair_features(self, batch: dict, pooling: str, deterministic: bool = True) -> jax.Array:
        """Per row of a pair batch, the features its head reads: the embedding pooled by `pooling`, through the
        shared layer if configured (bi-encoding: a sentence's features; cross-encoding: the pair's)."""
        pooled = self.embed(batch, pooling, deterministic)
        if self.config.shared_layer:
            pooled = nn.relu(self.pair_shared(self.dropout(pooled, deterministic=deterministic)))
        return pooled

    def _pair_dense(self, task: str) -> nn.Dense:
        return self.para_classifier if task == "para" else self.sts_regressor

    def pair_head(self, u: jax.Array, v: jax.Array, task: str, deterministic: bool = True) -> jax.Array:
        """A bi-encoded pair task's output from the features of its sentences a (`u`) and b (`v`)."""
        if task == "sts" and self.config.sts_head == "cosine":
            return cosine_similarity(u, v)
        inputs = [u, v]
        if task == "para" and self.config.para_cos_feature:
            inputs.append(cosine_similarity(u, v)[:, None])
        return self._pair_dense(task)(self.dropout(jnp.concatenate(inputs, axis=-1), deterministic=deterministic))[:, 0]

    def __call__(self, batch: dict, task: str, deterministic: bool = True) -> jax.Array:
        def drop(x):
            return self.dropout(x, deterministic=deterministic)

        if task in NUM_CLASSES:
            classifier = self.sst_classifier if task == "sst" else self.cfimdb_classifier
            return classifier(drop(self.embed(batch, self.config.pooling_of(task), deterministic)))
        features = self.pair_features(batch, self.config.pooling_of(task), deterministic)
        if self.config.pair_mode(task) == "cross":
            return self._pair_dense(task)(drop(features))[:, 0]
        half = features.shape[0] // 2
        return self.pair_head(features[:half], features[half:], task, deterministic)

    def all_tasks(self, example_batches: dict[str, dict]):
        """Runs every task of `example_batches`: used with `init` so that each task's head is created."""
        return {t: self(b, t) for t, b in example_batches.items()}
