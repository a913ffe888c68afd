"""The multi-task model: a BERT encoder, masked pooling, and one head per task.

Heads follow each task's kind (data/tasks.py). Batches follow data/input_pipeline.py: a sentence-pair batch
in bi-encoder form holds sentence a in rows [0:B] and sentence b in rows [B:2B], so one encoder call embeds
both.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bert_flax import BertConfig, BertModel
from bert_flax.modeling import Dropout
from data.tasks import TaskSpec

from .config import TrainConfig

__all__ = ["MultitaskBert", "pool", "cosine_similarity", "head_name"]


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


def head_name(spec: TaskSpec) -> str:
    """The parameter collection of a task's head: <task>_regressor for scores, <task>_classifier otherwise."""
    return f"{spec.name}_{'regressor' if spec.is_regression else 'classifier'}"


class MultitaskBert(nn.Module):
    """BERT plus one head per task of the config. `__call__(batch, task)` returns the task's raw output per
    example: K class logits, one logit (two-class pair tasks), or a score (pair-regression: a logit or value for
    the linear head, the cosine for the cosine head).

    `encoder_chunks` > 1 encodes a batch's rows in that many independent encoder calls, with the same outputs
    (docs/benchmarks.md says where it pays)."""

    bert_config: BertConfig
    config: TrainConfig
    dtype: jnp.dtype = jnp.float32
    encoder_chunks: int = 1

    def setup(self):
        cfg = self.config
        self.bert = BertModel(self.bert_config, dtype=self.dtype)
        self.dropout = Dropout(cfg.dropout)
        specs = [cfg.spec(task) for task in cfg.tasks]
        kernel_init = nn.initializers.zeros if cfg.zero_heads else nn.linear.default_kernel_init
        self.heads = {spec.name: nn.Dense(spec.output_size, kernel_init=kernel_init, name=head_name(spec))
                      for spec in specs if cfg.regression_head_of(spec.name) != "cosine"}
        if cfg.shared_layer and any(spec.is_pair for spec in specs):
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

    def _head(self, features: jax.Array, task: str, deterministic: bool) -> jax.Array:
        out = self.heads[task](self.dropout(features, deterministic=deterministic))
        return out if self.config.spec(task).has_class_logits else out[:, 0]

    def pair_head(self, u: jax.Array, v: jax.Array, task: str, deterministic: bool = True) -> jax.Array:
        """A bi-encoded pair task's output from the features of its sentences a (`u`) and b (`v`)."""
        if self.config.regression_head_of(task) == "cosine":
            return cosine_similarity(u, v)
        inputs = [u, v]
        if self.config.uses_cos_feature(task):
            inputs.append(cosine_similarity(u, v)[:, None])
        return self._head(jnp.concatenate(inputs, axis=-1), task, deterministic)

    def __call__(self, batch: dict, task: str, deterministic: bool = True) -> jax.Array:
        pooling = self.config.pooling_of(task)
        if not self.config.spec(task).is_pair:
            return self._head(self.embed(batch, pooling, deterministic), task, deterministic)
        features = self.pair_features(batch, pooling, deterministic)
        if self.config.pair_mode(task) == "cross":
            return self._head(features, task, deterministic)
        half = features.shape[0] // 2
        return self.pair_head(features[:half], features[half:], task, deterministic)

    def all_tasks(self, example_batches: dict[str, dict]):
        """Runs every task of `example_batches`: used with `init` so that each task's head is created."""
        return {t: self(b, t) for t, b in example_batches.items()}
