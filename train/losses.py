"""Per-task losses on the model's raw outputs, and predictions on each task's reporting scale."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from .config import CLASSIFICATION_TASKS, TrainConfig

__all__ = ["task_loss", "rdrop_loss", "predictions", "smoothed_cross_entropy", "squared_emd", "symmetric_kl"]


def _weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    # Padding rows have weight 0; a batch of padding only has loss 0 (and so zero gradients).
    return (values * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def smoothed_cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float) -> jax.Array:
    """Cross-entropy of the logits against the one-hot labels mixed with `smoothing` of the uniform distribution
    over the K classes: (1 - smoothing) CE(label) + smoothing * mean_k CE(k), per example."""
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if smoothing:
        # mean_k CE(k) = logsumexp(logits) - mean_k logits_k.
        loss = (1 - smoothing) * loss + smoothing * (jax.nn.logsumexp(logits, -1) - logits.mean(-1))
    return loss


def squared_emd(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per example, the squared earth mover's distance between the softmax over K ordered classes and the one-hot
    label: sum_k (P(class <= k) - [label <= k])^2. A prediction pays by how many classes its mass lies from the
    label, which cross-entropy ignores."""
    cumulative = jnp.cumsum(jax.nn.softmax(logits, -1), -1)
    target = (jnp.arange(logits.shape[-1]) >= labels[..., None]).astype(cumulative.dtype)
    return jnp.square(cumulative - target).sum(-1)


def task_loss(outputs: jax.Array, batch: dict, task: str, config: TrainConfig) -> jax.Array:
    """Mean loss over the real (weight 1) rows of a task batch.

    sst/cfimdb: cross-entropy (against smoothed labels with --label-smoothing), plus --ordinal-loss times
    `squared_emd`; para: binary cross-entropy on the logit; sts: with the linear head, BCE on (label > 2) or MSE
    on label / 5; with the cosine head, MSE between the cosine and the target.
    """
    labels, weights = batch["labels"], batch["weights"]
    if task in CLASSIFICATION_TASKS:
        per_example = smoothed_cross_entropy(outputs, labels, config.label_smoothing)
        if config.ordinal_loss:
            per_example = per_example + config.ordinal_loss * squared_emd(outputs, labels)
    elif task == "para":
        per_example = optax.sigmoid_binary_cross_entropy(outputs, labels.astype(jnp.float32))
    else:
        target = (labels > 2).astype(jnp.float32) if config.sts_target == "binary" else labels / 5.0
        if config.sts_head == "linear" and config.sts_target == "binary":
            per_example = optax.sigmoid_binary_cross_entropy(outputs, target)
        else:
            per_example = jnp.square(outputs - target)
    return _weighted_mean(per_example, weights)


def symmetric_kl(first: jax.Array, second: jax.Array) -> jax.Array:
    """Per example, the mean of KL(p || q) and KL(q || p) between the softmax distributions of two logit rows:
    (1/2) sum_k (p_k - q_k)(log p_k - log q_k)."""
    log_p, log_q = jax.nn.log_softmax(first, -1), jax.nn.log_softmax(second, -1)
    return 0.5 * ((jnp.exp(log_p) - jnp.exp(log_q)) * (log_p - log_q)).sum(-1)


def rdrop_loss(first: jax.Array, second: jax.Array, batch: dict, task: str, config: TrainConfig):
    """R-Drop (Liang et al. 2021) for a classification task, from its logits under two dropout masks: (the
    objective, the task loss it logs). The objective is the two passes' mean `task_loss` plus --rdrop times
    the mean `symmetric_kl` of the real rows."""
    loss = 0.5 * (task_loss(first, batch, task, config) + task_loss(second, batch, task, config))
    return loss + config.rdrop * _weighted_mean(symmetric_kl(first, second), batch["weights"]), loss


def predictions(outputs: jax.Array, task: str, config: TrainConfig) -> jax.Array:
    """Predictions as the CS224N files report them: class ids, 0/1 duplicates, similarity on 0-5."""
    if task in CLASSIFICATION_TASKS:
        return outputs.argmax(-1)
    if task == "para":
        return (outputs > 0).astype(jnp.int32)
    if config.sts_head == "linear" and config.sts_target == "binary":
        return 5.0 * jax.nn.sigmoid(outputs)
    return jnp.clip(5.0 * outputs, 0.0, 5.0)
