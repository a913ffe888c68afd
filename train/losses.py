"""Per-task losses on the model's raw outputs, and predictions on each task's reporting scale."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from .config import TrainConfig

__all__ = ["task_loss", "distillation_loss", "gold_share", "rdrop_loss", "predictions", "smoothed_cross_entropy",
           "squared_emd", "symmetric_kl", "cosent"]


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


def cosent(scores: jax.Array, labels: jax.Array, weights: jax.Array, scale: float = 20.0) -> jax.Array:
    """CoSENT (Su 2022) over a batch of pair scores: log(1 + sum over ordered pairs of real rows with
    label_i > label_j of exp(scale * (score_j - score_i))). It charges every pair the batch ranks against its
    labels, whatever the scores' offset and spread, so its gradient does not fade as the squared error's does
    once the scores sit near their targets; 20 is the paper's scale for cosines."""
    scores = scores.astype(jnp.float32)
    real = weights > 0
    ranked = (labels[:, None] > labels[None, :]) & real[:, None] & real[None, :]
    margins = jnp.where(ranked, scale * (scores[None, :] - scores[:, None]), -jnp.inf)
    return jax.nn.logsumexp(jnp.concatenate([jnp.zeros(1, jnp.float32), margins.ravel()]))


def _regression_scale(config: TrainConfig, task: str) -> tuple[float, float]:
    low, high = config.spec(task).label_range
    return low, high - low


def _per_example_loss(outputs: jax.Array, labels: jax.Array, task: str, config: TrainConfig) -> jax.Array:
    spec = config.spec(task)
    if spec.has_class_logits:
        per_example = smoothed_cross_entropy(outputs, labels, config.label_smoothing)
        if config.ordinal_loss:
            per_example = per_example + config.ordinal_loss * squared_emd(outputs, labels)
        return per_example
    if not spec.is_regression:
        return optax.sigmoid_binary_cross_entropy(outputs, labels.astype(jnp.float32))
    if config.regression_target_of(task) == "binary":
        target = (labels > spec.threshold).astype(jnp.float32)
        if config.regression_head_of(task) == "linear":
            return optax.sigmoid_binary_cross_entropy(outputs, target)
        return jnp.square(outputs - target)
    low, width = _regression_scale(config, task)
    return jnp.square(outputs - (labels - low) / width if low else outputs - labels / width)


def _batch_loss(outputs: jax.Array, labels: jax.Array, weights: jax.Array, task: str, config: TrainConfig):
    loss = _weighted_mean(_per_example_loss(outputs, labels, task, config), weights)
    if config.ranking_loss and config.spec(task).is_regression:
        loss = loss + config.ranking_loss * cosent(outputs, labels, weights)
    return loss


def task_loss(outputs: jax.Array, batch: dict, task: str, config: TrainConfig) -> jax.Array:
    """Mean loss over the real (weight 1) rows of a task batch, by the task's kind (data/tasks.py).

    Class logits: cross-entropy (against smoothed labels with --label-smoothing), plus --ordinal-loss times
    `squared_emd`; a two-class pair task's one logit: binary cross-entropy; pair-regression: with the linear head
    on the binary target, BCE on (label > the task's threshold); otherwise squared error between the output and
    the label mapped from its range to 0-1; plus, for pair-regression, --ranking-loss times `cosent` of the batch.
    """
    return _batch_loss(outputs, batch["labels"], batch["weights"], task, config)


def distillation_loss(outputs: jax.Array, batch: dict, task: str, config: TrainConfig) -> jax.Array:
    """Mean loss over the real rows against the teacher's targets (batch["teacher"], data/teachers.py): the
    cross-entropy to its class distribution (a two-class pair task: binary cross-entropy to its probability of
    class 1), or for scores the task's own loss (`task_loss`) with the teacher's score as the label."""
    teacher, spec = batch["teacher"], config.spec(task)
    if spec.is_regression:
        return _batch_loss(outputs, teacher, batch["weights"], task, config)
    if spec.has_class_logits:
        per_example = optax.softmax_cross_entropy(outputs, teacher)
    else:
        per_example = optax.sigmoid_binary_cross_entropy(outputs, teacher[:, 1])
    return _weighted_mean(per_example, batch["weights"])


def gold_share(config: TrainConfig, step: jax.Array, total_steps: int) -> jax.Array:
    """The gold loss's share of a distilled task's objective at update `step` (0-based): 1 - --teacher-weight, or
    with --teacher-annealing rising linearly from 0 at the first update to 1 at the last (Clark et al. 2019)."""
    if config.teacher_annealing:
        return jnp.clip(step / max(total_steps - 1, 1), 0.0, 1.0)
    return jnp.asarray(1.0 - config.teacher_weight)


def symmetric_kl(first: jax.Array, second: jax.Array) -> jax.Array:
    """Per example, the mean of KL(p || q) and KL(q || p) between the softmax distributions of two logit rows:
    (1/2) sum_k (p_k - q_k)(log p_k - log q_k)."""
    log_p, log_q = jax.nn.log_softmax(first, -1), jax.nn.log_softmax(second, -1)
    return 0.5 * ((jnp.exp(log_p) - jnp.exp(log_q)) * (log_p - log_q)).sum(-1)


def rdrop_loss(first: jax.Array, second: jax.Array, batch: dict, task: str, config: TrainConfig):
    """R-Drop (Liang et al. 2021) for a task with class logits, from its logits under two dropout masks: (the
    objective, the task loss it logs). The objective is the two passes' mean `task_loss` plus --rdrop times
    the mean `symmetric_kl` of the real rows."""
    loss = 0.5 * (task_loss(first, batch, task, config) + task_loss(second, batch, task, config))
    return loss + config.rdrop * _weighted_mean(symmetric_kl(first, second), batch["weights"]), loss


def predictions(outputs: jax.Array, task: str, config: TrainConfig) -> jax.Array:
    """Predictions on the task's reporting scale: class ids, or scores in its label range."""
    spec = config.spec(task)
    if spec.has_class_logits:
        return outputs.argmax(-1)
    if not spec.is_regression:
        return (outputs > 0).astype(jnp.int32)
    low, width = _regression_scale(config, task)
    if config.regression_head_of(task) == "linear" and config.regression_target_of(task) == "binary":
        return low + width * jax.nn.sigmoid(outputs)
    return jnp.clip(low + width * outputs, low, low + width)
