"""PCGrad gradient surgery (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning").

Every projected gradient is a linear combination of the original task gradients,
because Algorithm 1 only ever subtracts multiples of the original ``g_j``. So the
surgery runs on the T x T Gram matrix of the shared gradients, tracking for each
task the coefficients of its projected gradient, and the parameter-sized work is
the T(T+1)/2 dot products plus one weighted sum per leaf: no projected copy of a
gradient pytree is ever materialised. docs/optimizer.md has the timings.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp


def projection_order(key: jax.Array, num_tasks: int) -> jax.Array:
    """The order in which ``pcgrad`` projects, an int array of shape (T, T-1).

    Row i is a random permutation of the tasks other than i, drawn from its
    own subkey of ``key``: the order task i's gradient is projected in.
    """
    others = jnp.array([[j for j in range(num_tasks) if j != i] for i in range(num_tasks)],
                       dtype=jnp.int32).reshape(num_tasks, num_tasks - 1)
    keys = jax.random.split(key, num_tasks)
    return jax.vmap(jax.random.permutation)(keys, others)


def _shared_leaves(shared, tree) -> list[bool]:
    treedef = jax.tree.structure(tree)
    if shared is None:
        return [True] * treedef.num_leaves
    if callable(shared):
        shared = jax.tree_util.tree_map_with_path(lambda path, _: bool(shared(path)), tree)
    return [bool(s) for s in treedef.flatten_up_to(shared)]


def _dot(xs: Sequence[jax.Array], ys: Sequence[jax.Array]) -> jax.Array:
    """Dot product of two lists of leaves, accumulated in at least float32."""
    total = jnp.zeros([], jnp.float32)
    for x, y in zip(xs, ys):
        # HIGHEST: a float32 dot may otherwise run in TF32 on GPUs.
        total = total + jnp.vdot(x, y, precision=jax.lax.Precision.HIGHEST,
                                 preferred_element_type=jnp.promote_types(x.dtype, jnp.float32))
    return total


def _gram(task_leaves: Sequence[Sequence[jax.Array]]) -> jax.Array:
    num_tasks = len(task_leaves)
    dots = {(i, j): _dot(task_leaves[i], task_leaves[j])
            for i in range(num_tasks) for j in range(i, num_tasks)}
    return jnp.stack([jnp.stack([dots[min(i, j), max(i, j)] for j in range(num_tasks)])
                      for i in range(num_tasks)])


def _surgery_weights(gram: jax.Array, order: jax.Array) -> jax.Array:
    """Weights w such that sum_i g_i^PC = sum_k w_k g_k (Algorithm 1 in coefficients)."""
    num_tasks = gram.shape[0]
    sq_norm = jnp.diagonal(gram)
    # A zero g_j has a zero Gram column, so it never conflicts; the guard keeps
    # the untaken 0/0 out of the arithmetic (NaN checks, differentiation).
    safe_sq_norm = jnp.where(sq_norm > 0, sq_norm, 1)
    weights = jnp.zeros(num_tasks, gram.dtype)
    for i in range(num_tasks):
        coeffs = jax.nn.one_hot(i, num_tasks, dtype=gram.dtype)
        for p in range(num_tasks - 1):
            j = order[i, p]
            dot = jnp.sum(coeffs * gram[:, j])
            step = jnp.where(dot < 0, dot / safe_sq_norm[j], 0)
            coeffs = coeffs - step * jax.nn.one_hot(j, num_tasks, dtype=gram.dtype)
        weights = weights + coeffs
    return weights


def _weighted_sum(weights: jax.Array, xs: Sequence[jax.Array]) -> jax.Array:
    return sum(w.astype(x.dtype) * x for w, x in zip(weights, xs))


def pcgrad(
    task_grads: Sequence[Any],
    key: jax.Array,
    shared: Any | Callable[[tuple], bool] | None = None,
    reduction: str = "sum",
) -> tuple[Any, dict[str, jax.Array]]:
    """Combines per-task gradients with PCGrad surgery on the shared parameters.

    For each task i, in the random order ``projection_order(key, T)[i]`` over
    the other tasks j: if ``g_i^PC . g_j < 0`` then
    ``g_i^PC -= (g_i^PC . g_j) / |g_j|^2 * g_j``, with the ORIGINAL g_j and dot
    products and norms taken over all shared leaves together. The result is
    the sum (or mean) of the projected gradients on shared leaves, and the
    plain sum (or mean) of the task gradients on the others (task heads).

    Args:
      task_grads: T >= 1 gradient pytrees with the same structure.
      key: PRNG key for the projection order.
      shared: which leaves are shared: None (all), a pytree of Python bools with
        the gradients' structure, or a predicate on the leaf's key path (the
        tuple from ``jax.tree_util.tree_flatten_with_path``). Static under jit.
      reduction: "sum" (as in the paper) or "mean" over tasks.

    Returns:
      (combined gradients, stats) where stats["cosine"] is the T x T matrix of
      cosine similarities of the original shared gradients (0 where one of them
      is zero) and stats["num_conflicts"] the number of unordered task pairs
      with a negative dot product.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    num_tasks = len(task_grads)
    treedef = jax.tree.structure(task_grads[0])
    if any(jax.tree.structure(g) != treedef for g in task_grads):
        raise ValueError("all task gradients must have the same pytree structure")
    leaves = [jax.tree.leaves(g) for g in task_grads]
    is_shared = _shared_leaves(shared, task_grads[0])

    gram = _gram([[x for x, s in zip(task, is_shared) if s] for task in leaves])
    scale = 1.0 if reduction == "sum" else 1.0 / num_tasks
    shared_w = _surgery_weights(gram, projection_order(key, num_tasks)) * scale
    plain_w = jnp.full(num_tasks, scale, gram.dtype)
    combined = [
        _weighted_sum(shared_w if s else plain_w, [leaves[k][n] for k in range(num_tasks)])
        for n, s in enumerate(is_shared)
    ]

    sq_norm = jnp.diagonal(gram)
    denom = jnp.sqrt(sq_norm[:, None] * sq_norm[None, :])
    cosine = jnp.where(denom > 0, gram / jnp.where(denom > 0, denom, 1), 0)
    num_conflicts = jnp.sum(jnp.triu(gram < 0, k=1))
    return jax.tree.unflatten(treedef, combined), {"cosine": cosine, "num_conflicts": num_conflicts}
