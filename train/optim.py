"""AdamW exactly as in the CS224N minBERT reference optimizer, as an optax chain.

The reference (``optimizer.py`` of the course's default project) updates each
parameter ``p`` with gradient ``g`` at step ``t = 1, 2, ...`` as

    m = b1*m + (1-b1)*g
    v = b2*v + (1-b2)*g*g
    alpha = lr * sqrt(1 - b2**t) / (1 - b1**t)    (alpha = lr if not correct_bias)
    p = p - alpha * m / (sqrt(v) + eps)
    p = p - lr * weight_decay * p                 (on the parameter AFTER the Adam step)

It differs from ``optax.adamw`` and ``torch.optim.AdamW`` in where ``eps`` sits
relative to the bias correction and in decaying the updated rather than the
pre-update parameter; docs/optimizer.md has the measured differences.
"""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class ScaleByMinbertAdamState(NamedTuple):
    """Step count and the first and second moment estimates."""

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def scale_by_minbert_adam(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6, correct_bias: bool = True
) -> optax.GradientTransformation:
    """Maps gradients to ``c_t * m / (sqrt(v) + eps)``, the reference Adam direction.

    ``c_t = sqrt(1 - b2**t) / (1 - b1**t)`` if ``correct_bias`` else 1. Unlike
    ``optax.scale_by_adam``, ``eps`` is added to ``sqrt(v)`` before the bias
    correction is applied. ``b1`` and ``b2`` must be Python floats.
    """
    # 1 - b**t computed as -expm1(t * log(b)) with log(b) in float64: in float32,
    # 1 - 0.999**t carries a relative error of about 5e-5 at t = 1.
    log_b1, log_b2 = math.log(b1), math.log(b2)

    def init_fn(params):
        return ScaleByMinbertAdamState(
            count=jnp.zeros([], jnp.int32),
            mu=jax.tree.map(jnp.zeros_like, params),
            nu=jax.tree.map(jnp.zeros_like, params),
        )

    def update_fn(updates, state, params=None):
        del params
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, updates)
        count = optax.safe_increment(state.count)
        if correct_bias:
            t = count.astype(jnp.result_type(float))
            scale = jnp.sqrt(-jnp.expm1(t * log_b2)) / -jnp.expm1(t * log_b1)
        else:
            scale = jnp.ones([])
        updates = jax.tree.map(
            lambda m, v: scale.astype(m.dtype) * (m / (jnp.sqrt(v) + eps)), mu, nu
        )
        return updates, ScaleByMinbertAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def _per_param(values: Any | Callable[[Any], Any], params: Any) -> Any:
    return values(params) if callable(values) else values


def scale_per_param(scales: Any | Callable[[Any], Any]) -> optax.GradientTransformation:
    """Multiplies each parameter's update by its own factor: ``scales`` is a pytree of floats matching the
    parameters, or a callable params -> such a pytree (e.g. ``layer_lr_scales``)."""

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("scale_per_param needs the parameters")
        factors = _per_param(scales, params)
        return jax.tree.map(lambda u, f: jnp.asarray(f, u.dtype) * u, updates, factors), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def add_decay_after_update(
    learning_rate: optax.ScalarOrSchedule, weight_decay: float, factors: Any | Callable[[Any], Any] | None = None
) -> optax.GradientTransformation:
    """Maps an update ``u`` to ``u - lr * f * weight_decay * (p + u)``.

    Applied to the final (already lr-scaled, sign-flipped) Adam update ``u``,
    this makes ``p + u_out`` equal the reference's ``p' - lr*wd*p'`` with
    ``p' = p + u``: decoupled decay of the parameter after the Adam step.
    ``learning_rate`` may be a float or a schedule of the step count; ``f`` is
    the parameter's entry in ``factors`` (a pytree of floats, or a callable
    params -> one), 1 for every parameter if None, 0 for one not decayed.
    """

    def init_fn(params):
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("add_decay_after_update needs the parameters")
        per_param = jax.tree.map(lambda _: 1.0, params) if factors is None else _per_param(factors, params)
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        updates = jax.tree.map(
            lambda u, p, f: u - jnp.asarray(lr * weight_decay * f, u.dtype) * (p + u), updates, params, per_param
        )
        return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


class ParamsEmaState(NamedTuple):
    """Update count and the running (not yet debiased) average of the parameters."""

    count: jax.Array
    ema: optax.Params


def track_params_ema(decay: float) -> optax.GradientTransformation:
    """Leaves the updates as they are and keeps an exponential moving average of the parameters they produce:
    after step t, ``ema_t = decay * ema_{t-1} + (1 - decay) * (p + u)`` from ``ema_0 = 0``. Put it last in a
    chain, where it sees the final updates; ``params_ema`` reads the average out of the optimizer state."""

    def init_fn(params):
        return ParamsEmaState(count=jnp.zeros([], jnp.int32), ema=jax.tree.map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("track_params_ema needs the parameters")
        ema = jax.tree.map(lambda e, p, u: decay * e + (1 - decay) * (p + u), state.ema, params, updates)
        return updates, ParamsEmaState(count=optax.safe_increment(state.count), ema=ema)

    return optax.GradientTransformation(init_fn, update_fn)


def params_ema(opt_state: Any, decay: float) -> Any:
    """The average that ``track_params_ema(decay)`` keeps in ``opt_state``, divided by ``1 - decay**t`` after t
    updates: it then weighs the trained parameters only, with no share left to the zeros it starts from."""
    states = [s for s in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, ParamsEmaState))
              if isinstance(s, ParamsEmaState)]
    if len(states) != 1:
        raise ValueError(f"expected one track_params_ema state in the optimizer state, found {len(states)}")
    # 1 - decay**t as -expm1(t * log(decay)), as for Adam's bias correction above.
    scale = 1 / -jnp.expm1(states[0].count.astype(jnp.result_type(float)) * math.log(decay))
    return jax.tree.map(lambda e: (scale * e).astype(e.dtype), states[0].ema)


def adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    correct_bias: bool = True,
    decay_mask: Any | Callable[[Any], Any] | None = None,
    lr_scales: Any | Callable[[Any], Any] | None = None,
) -> optax.GradientTransformation:
    """The CS224N minBERT AdamW (see the module docstring) as an optax chain.

    Args:
      learning_rate: a float, or an optax schedule called with the 0-based
        update count (the first update uses ``learning_rate(0)``).
      b1, b2, eps, correct_bias: as in the reference; floats, not arrays.
      weight_decay: decoupled decay, scaled by the learning rate and applied to
        the parameter after the Adam step.
      decay_mask: None to decay every parameter (the reference), else a pytree
        of bools matching the parameters, or a callable params -> such a pytree
        (e.g. ``decay_mask_no_layernorm_bias``); False leaves are not decayed.
      lr_scales: None for one learning rate (the reference), else a pytree of
        floats matching the parameters, or a callable params -> such a pytree
        (e.g. ``layer_lr_scales``): each parameter steps, and decays, as if the
        learning rate were ``learning_rate`` times its factor.
    """
    transforms = [
        scale_by_minbert_adam(b1, b2, eps, correct_bias),
        optax.scale_by_learning_rate(learning_rate),
    ]
    if lr_scales is not None:
        transforms.append(scale_per_param(lr_scales))
    if weight_decay:
        transforms.append(add_decay_after_update(learning_rate, weight_decay, _decay_factors(decay_mask, lr_scales)))
    return optax.chain(*transforms)


def _decay_factors(decay_mask, lr_scales) -> Callable[[Any], Any] | None:
    """The decay's per-parameter factors: the learning rate's factor where the mask decays, 0 where it does not."""
    if decay_mask is None and lr_scales is None:
        return None

    def factors(params):
        mask = jax.tree.map(lambda _: True, params) if decay_mask is None else _per_param(decay_mask, params)
        scales = jax.tree.map(lambda _: 1.0, params) if lr_scales is None else _per_param(lr_scales, params)
        return jax.tree.map(lambda scale, decayed: scale if decayed else 0.0, scales, mask)

    return factors


def warmup_schedule(
    lr: float, warmup_steps: int, total_steps: int, decay: str = "constant"
) -> optax.ScalarOrSchedule:
    """The learning rate for ``adamw``: a linear warm-up over ``warmup_steps`` updates, then ``decay``.

    As Hugging Face's ``get_linear_schedule_with_warmup`` (and ``get_constant_schedule_with_warmup``), the
    rate at the 0-based update count ``t`` is ``lr * t / warmup_steps`` for ``t < warmup_steps``, then ``lr``
    ("constant") or ``lr * (total_steps - t) / (total_steps - warmup_steps)``, reaching 0 at ``total_steps``
    ("linear"). ``adamw`` calls it with the count of updates already made, so update ``k = 1, 2, ...`` steps
    at ``lr * (k - 1) / warmup_steps``: the first update moves only Adam's moments, as in a torch run whose
    scheduler steps after each ``optimizer.step()``. With ``warmup_steps == 0`` this is the Python float
    ``lr`` or ``optax.linear_schedule(lr, 0.0, total_steps)``: the schedules without warm-up, unchanged.
    """
    if decay not in ("constant", "linear"):
        raise ValueError(f"warmup_schedule: decay must be 'constant' or 'linear', not {decay!r}")
    if warmup_steps == 0:
        return lr if decay == "constant" else optax.linear_schedule(lr, 0.0, total_steps)
    if not 0 < warmup_steps < total_steps:
        raise ValueError(f"warmup_schedule: warmup_steps must be in [0, total_steps), got {warmup_steps} of "
                         f"{total_steps}")

    def schedule(count):
        t = jnp.asarray(count, jnp.result_type(float))
        factor = jnp.minimum(t / warmup_steps, 1.0)
        if decay == "linear":
            # Before the peak the decay line lies above 1, so the minimum is the warm-up line.
            factor = jnp.maximum(jnp.minimum(factor, (total_steps - t) / (total_steps - warmup_steps)), 0.0)
        return lr * factor

    return schedule


def with_clipping(tx: optax.GradientTransformation, max_norm: float) -> optax.GradientTransformation:
    """``tx`` applied to the gradients scaled by ``min(1, max_norm / ||g||)``, ``||g||`` the L2 norm over every
    leaf of the pytree together (``optax.clip_by_global_norm``); ``tx`` itself if ``max_norm`` is 0.

    Clipping the combined gradient (after the sum or PCGrad) keeps one outlier batch from inflating Adam's
    second moment, which would shrink the steps after it. The clip keeps no state (``optax.EmptyState``) and
    ``params_ema`` finds the moving average by its type, so a ``track_params_ema`` after ``tx`` reads out the
    same way with or without it.
    """
    if max_norm < 0:
        raise ValueError(f"with_clipping: max_norm must be >= 0, got {max_norm}")
    return optax.chain(optax.clip_by_global_norm(max_norm), tx) if max_norm else tx


def _key_name(key) -> Any:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return getattr(key, attr)
    return key


def decay_mask_no_layernorm_bias(params: Any) -> Any:
    """Pytree of bools: False for biases and LayerNorm parameters, True elsewhere.

    A leaf is excluded when its own name is ``bias`` or any name on its path
    contains ``LayerNorm`` (flax/HF naming, e.g. ``.../LayerNorm/scale``).
    """

    def decay(path, _):
        names = [str(_key_name(k)) for k in path]
        return not (names[-1:] == ["bias"] or any("LayerNorm" in n for n in names))

    return jax.tree_util.tree_map_with_path(decay, params)


def layer_lr_scales(params: Any, decay: float) -> Any:
    """Pytree of floats for ``adamw(lr_scales=...)``: layer-wise learning-rate decay of a BERT under ``bert``.

    Each step down from the heads multiplies the rate by ``decay``: the heads and the pooler keep 1, encoder
    layer i of L gets ``decay ** (L - i)`` (the top layer ``decay``), and the embeddings ``decay ** (L + 1)``.
    Lower layers hold more general features, which fine-tuning on small data should move less.
    """
    encoder = params["bert"]["encoder"]
    num_layers = len(encoder)
    if sorted(encoder) != sorted(f"layer_{i}" for i in range(num_layers)):
        raise ValueError(f"layer_lr_scales: expected bert/encoder to hold layer_0 .. layer_{num_layers - 1}, "
                         f"found {', '.join(sorted(encoder))}")

    def depth(path, _):
        names = [str(_key_name(k)) for k in path]
        if names[0] != "bert" or names[1] == "pooler":
            return 0
        if names[1] == "embeddings":
            return num_layers + 1
        if names[1] == "encoder":
            return num_layers - int(names[2].removeprefix("layer_"))
        raise ValueError(f"layer_lr_scales: {'/'.join(names)} is not under bert/embeddings, bert/encoder or "
                         "bert/pooler")

    return jax.tree.map(lambda d: decay**d, jax.tree_util.tree_map_with_path(depth, params))
