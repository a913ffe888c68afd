"""The training step: one jitted gradient function per task, and one jitted update.

A step calls `grad_fns[task](params, batch, rng, state.step)` for each task (each compiled once per
batch shape of its own task, so bucketed lengths of different tasks do not multiply into
a compile per combination), then `update(state, task_grads, key)`, which combines the
gradient pytrees by sum or PCGrad and applies the AdamW chain. Dispatch is asynchronous:
gradients stay on the devices and nothing returns to the host between the calls.

With --grad-accumulation N, the stream's batches are N x B rows (B = --batch-size): the very batches of
--batch-size N x B, so the run has the same steps, data order, padded lengths and resume positions as that run.
Each task's gradient function splits its batch into N micro-batches of B rows and accumulates their gradients
on the devices (`micro_batches`), in the memory of one micro-batch; the update then combines and applies them
once. (Taking N consecutive stream batches instead would change the step count and the data order.)
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from .config import TrainConfig
from .losses import distillation_loss, gold_share, rdrop_loss, task_loss
from .model import MultitaskBert
from .optim import (adamw, decay_mask_no_layernorm_bias, layer_lr_scales, params_ema, track_params_ema,
                    warmup_schedule, with_clipping)
from .pcgrad import pcgrad

__all__ = ["TrainState", "learning_rate", "make_optimizer", "make_grad_fns", "micro_batches", "make_update",
           "placed_state", "train_step", "is_shared_param", "evaluated_params"]

# Parameters used by more than one task; everything else is one task's head.
SHARED_MODULES = ("bert", "pair_shared")


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training and must be checkpointed."""

    step: jax.Array
    params: Any
    opt_state: Any


def is_shared_param(path: tuple) -> bool:
    """PCGrad predicate: True for encoder (and shared pair layer) parameters."""
    first = path[0]
    return getattr(first, "key", first) in SHARED_MODULES


def make_optimizer(config: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """The CS224N AdamW over a run of `total_steps` updates: its rate warmed up and scheduled (`learning_rate`),
    decayed layer by layer with --layer-lr-decay, after clipping the combined gradient's global norm to
    --max-grad-norm; with --option pretrain the encoder gets no update at all (not even decay, and its gradient
    does not count in the clipped norm); with --ema, followed by the tracker of the parameters' moving average."""
    mask = decay_mask_no_layernorm_bias if config.decay_mask == "no-layernorm-bias" else None
    scales = None if config.layer_lr_decay == 1 else functools.partial(layer_lr_scales, decay=config.layer_lr_decay)
    tx = adamw(learning_rate(config, total_steps), weight_decay=config.weight_decay, decay_mask=mask,
               lr_scales=scales)
    tx = with_clipping(tx, config.max_grad_norm)
    if config.option == "pretrain":
        labels = lambda params: {k: "frozen" if k == "bert" else "trained" for k in params}  # noqa: E731
        tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
    return optax.chain(tx, track_params_ema(config.ema)) if config.ema else tx


def learning_rate(config: TrainConfig, total_steps: int) -> float | optax.Schedule:
    """The learning rate of each update, an optax schedule of the update count (a float when constant without
    warmup): linear warmup over --warmup-steps (or --warmup-ratio of the run), then --lr-schedule."""
    warmup = config.warmup_steps or round(config.warmup_ratio * total_steps)
    return warmup_schedule(config.lr, warmup, total_steps, config.lr_schedule)


def evaluated_params(state: TrainState, config: TrainConfig) -> Any:
    """The parameters a run evaluates and keeps as its best: their moving average with --ema, else themselves."""
    return params_ema(state.opt_state, config.ema) if config.ema else state.params


def make_grad_fns(model: MultitaskBert, config: TrainConfig, total_steps: int = 1) -> dict[str, Callable]:
    """Per task: jitted (params, batch, dropout_rng, step) -> (loss, gradient pytree of the objective times the
    task's --loss-weights multiplier); the loss returned is always the gold task loss (`task_loss`).

    With --rdrop a batch of a task with class logits runs twice in one call (its rows repeated, so each copy
    draws its own dropout mask) and the objective is R-Drop's. With a --teacher for the task, the objective is
    `gold_share` (of the 0-based update `step`, of `total_steps`) times that, plus the rest times the
    `distillation_loss` to the teacher's targets, which the batch carries: no teacher runs during a step.

    With --grad-accumulation N, the batch holds N micro-batches (`micro_batches`); micro-batch k draws its
    dropout from fold_in(dropout_rng, k). The loss and gradient are those of the mean over the batch's real rows:
    each micro-batch's mean weighted by its share of the real rows (padding rows have weight 0); a term over pairs
    of rows (--ranking-loss) pairs the rows of each micro-batch.

    `step` is an int32 scalar array, as TrainState.step: a Python int is another argument type to jit, so a call
    with one compiles (or loads from the cache) a second program for the same shapes."""

    def task_grad(params, batch, rng, step, *, task):
        rdrop = config.rdrop > 0 and config.spec(task).has_class_logits

        def loss_fn(p):
            inputs = jax.tree_util.tree_map(lambda x: jnp.concatenate([x, x]), batch) if rdrop else batch
            outputs = model.apply({"params": p}, inputs, task, deterministic=False, rngs={"dropout": rng})
            passes = jnp.split(outputs, 2) if rdrop else [outputs]
            if rdrop:
                objective, loss = rdrop_loss(*passes, batch, task, config)
            else:
                objective = loss = task_loss(outputs, batch, task, config)
            if "teacher" in batch:
                share = gold_share(config, step, total_steps)
                distilled = sum(distillation_loss(o, batch, task, config) for o in passes) / len(passes)
                objective = share * objective + (1 - share) * distilled
            return config.loss_weight(task) * objective, loss

        (_, loss), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, grads

    def accumulated_grad(params, batch, rng, step, *, task):
        def add(totals, k_and_micro):
            k, micro = k_and_micro
            loss, grads = task_grad(params, micro, jax.random.fold_in(rng, k), step, task=task)
            rows = micro["weights"].sum()
            return jax.tree_util.tree_map(lambda total, x: total + rows * x.astype(total.dtype), totals,
                                          (loss, grads)), None

        zeros = (jnp.zeros((), jnp.float32), jax.tree_util.tree_map(jnp.zeros_like, params))
        n = config.grad_accumulation
        totals, _ = jax.lax.scan(add, zeros, (jnp.arange(n), micro_batches(batch, n)))
        rows = jnp.maximum(batch["weights"].sum(), 1.0)  # a batch of padding only: loss and gradients 0
        return jax.tree_util.tree_map(lambda total: total / rows, totals)

    grad = task_grad if config.grad_accumulation == 1 else accumulated_grad
    return {task: jax.jit(functools.partial(grad, task=task)) for task in config.tasks}


def micro_batches(batch: dict, n: int) -> dict:
    """A batch of n x B rows as n micro-batches of B rows, stacked on a new leading axis: micro-batch k holds
    the rows k, k + n, k + 2n, ... A device holds a block of whole groups of n rows (B divides by the device
    count), so every micro-batch spreads over the devices as the batch does and no row moves. The token arrays
    of bi-encoded pairs (2 x n x B rows: sentences a, then b) are split alike in each half."""
    rows = batch["weights"].shape[0]

    def split(x):
        if x.shape[0] == rows:
            return jnp.moveaxis(x.reshape(rows // n, n, *x.shape[1:]), 1, 0)
        halves = jnp.moveaxis(x.reshape(2, rows // n, n, *x.shape[1:]), 2, 0)
        return halves.reshape(n, 2 * rows // n, *x.shape[1:])

    return jax.tree_util.tree_map(split, batch)


def make_update(config: TrainConfig, tx: optax.GradientTransformation) -> Callable:
    """Jitted (state, task_grads, key) -> (new state, stats); combines by sum or PCGrad, then steps."""

    def update(state: TrainState, task_grads: tuple, key: jax.Array):
        if config.pcgrad:
            grads, stats = pcgrad(task_grads, key, shared=is_shared_param)
        else:
            grads, stats = jax.tree_util.tree_map(lambda *g: sum(g), *task_grads), {}
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), stats

    return jax.jit(update, donate_argnums=(0,))


def train_step(state: TrainState, batches: dict, key: jax.Array, grad_fns: dict[str, Callable],
               update: Callable) -> tuple[TrainState, dict, dict]:
    """One multi-task step: each task's gradient (in the order of `grad_fns`, task i's dropout from
    fold_in(key, i)), then the update (its PCGrad key fold_in(key, number of tasks)). Returns the new state,
    {task: loss} and the update's statistics, all still on the devices."""
    losses, grads = {}, []
    for i, (task, grad_fn) in enumerate(grad_fns.items()):
        losses[task], task_grads = grad_fn(state.params, batches[task], jax.random.fold_in(key, i), state.step)
        grads.append(task_grads)
    state, stats = update(state, tuple(grads), jax.random.fold_in(key, len(grads)))
    return state, losses, stats


def init_state(params, tx: optax.GradientTransformation) -> TrainState:
    """A fresh TrainState at step 0."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def placed_state(params, tx: optax.GradientTransformation, sharding) -> TrainState:
    """`init_state` with every leaf placed by `sharding` (the step counter too): the update's output shardings then
    match its inputs, so it compiles once, and the gradient functions meet the shardings of every later step."""
    return jax.jit(functools.partial(init_state, tx=tx), out_shardings=sharding)(params)
