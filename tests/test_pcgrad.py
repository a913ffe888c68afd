"""PCGrad (train/pcgrad.py) against the paper's picture and a literal float64 NumPy
implementation of Algorithm 1."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train.pcgrad import pcgrad, projection_order

SHAPES = {"emb": (6,), "encoder": {"w": (4, 3), "b": (3,)}, "heads": {"h": (3, 2)}}
HEADS_NOT_SHARED = {"emb": True, "encoder": {"w": True, "b": True}, "heads": {"h": False}}
# Eager pcgrad dispatches many tiny ops, each compiled on first use: jit is faster here.
jit_pcgrad = jax.jit(pcgrad, static_argnames=("shared", "reduction"))


def not_head(path):
    return path[0].key != "heads"


def random_tree(rng):
    return jax.tree.map(lambda s: rng.normal(size=s), SHAPES, is_leaf=lambda x: isinstance(x, tuple))


def conflicting_tasks(num_tasks, seed=0):
    """Float64 NumPy gradient pytrees; each task pulls against the previous ones."""
    rng = np.random.default_rng(seed)
    tasks = [random_tree(rng)]
    for _ in range(num_tasks - 1):
        pull = jax.tree.map(lambda *xs: -0.8 * sum(xs) / len(xs), *tasks)
        tasks.append(jax.tree.map(lambda a, b: a + 0.6 * b, pull, random_tree(rng)))
    return tasks


def reference_pcgrad(task_grads, order, shared, reduction="sum"):
    """Algorithm 1 on the flattened shared gradients, float64, projecting in `order`."""
    leaves = [[np.asarray(x, np.float64) for x in jax.tree.leaves(g)] for g in task_grads]
    mask = jax.tree.leaves(shared)
    flat = [np.concatenate([x.ravel() for x, s in zip(task, mask) if s]) for task in leaves]
    projected = []
    for i, g in enumerate(flat):
        g = g.copy()
        for j in order[i]:
            dot = g @ flat[j]
            if dot < 0:
                g -= dot / (flat[j] @ flat[j]) * flat[j]
        projected.append(g)
    scale = 1.0 if reduction == "sum" else 1.0 / len(task_grads)
    shared_sum, offset, out = scale * sum(projected), 0, []
    for n, s in enumerate(mask):
        if s:
            size = leaves[0][n].size
            out.append(shared_sum[offset:offset + size].reshape(leaves[0][n].shape))
            offset += size
        else:
            out.append(scale * sum(task[n] for task in leaves))
    return jax.tree.unflatten(jax.tree.structure(task_grads[0]), out)


def to_f32(tasks):
    return [jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), t) for t in tasks]


def assert_trees_close(got, want, rtol, atol):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g, np.float64), w, rtol=rtol, atol=atol)


def test_two_task_picture():
    g1, g2 = jnp.array([1.0, 0.0]), jnp.array([-1.0, 1.0])
    combined, stats = jit_pcgrad([g1, g2], jax.random.key(0))
    # g1 - (g1.g2)/|g2|^2 g2 = (1,0) + (-1,1)/2 = (0.5, 0.5), orthogonal to g2;
    # g2 - (g2.g1)/|g1|^2 g1 = (-1,1) + (1,0) = (0, 1), orthogonal to g1.
    np.testing.assert_allclose(combined, [0.5, 1.5], rtol=1e-7)
    np.testing.assert_allclose(stats["cosine"], [[1, -0.5**0.5], [-0.5**0.5, 1]], rtol=1e-6)
    assert stats["num_conflicts"] == 1


def test_projection_order_is_a_permutation_of_the_other_tasks():
    orders = {tuple(map(tuple, np.asarray(projection_order(jax.random.key(s), 4)))) for s in range(20)}
    for order in orders:
        for i, row in enumerate(order):
            assert sorted(row) == [j for j in range(4) if j != i]
    assert len(orders) > 10  # random, not fixed


def test_two_tasks_match_reference():
    tasks = conflicting_tasks(2)
    combined, stats = jit_pcgrad(to_f32(tasks), jax.random.key(0), shared=not_head)
    assert stats["num_conflicts"] == 1
    want = reference_pcgrad(tasks, [[1], [0]], HEADS_NOT_SHARED)
    assert_trees_close(combined, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_three_tasks_follow_projection_order(seed):
    tasks, key = conflicting_tasks(3, seed), jax.random.key(seed)
    order = np.asarray(projection_order(key, 3))
    want = reference_pcgrad(tasks, order, HEADS_NOT_SHARED)
    other_order = reference_pcgrad(tasks, order[:, ::-1], HEADS_NOT_SHARED)
    order_effect = max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(other_order)))
    assert order_effect > 1e-2  # the example is one where the order matters

    combined, stats = jit_pcgrad(to_f32(tasks), key, shared=not_head)
    assert_trees_close(combined, want, rtol=1e-5, atol=1e-6)
    with jax.enable_x64(True):
        combined64, _ = jit_pcgrad(tasks, key, shared=not_head)
    assert_trees_close(combined64, want, rtol=1e-12, atol=1e-12)

    flat = [np.concatenate([x.ravel() for x, s in zip(jax.tree.leaves(t), jax.tree.leaves(HEADS_NOT_SHARED)) if s])
            for t in tasks]
    gram = np.array([[a @ b for b in flat] for a in flat])
    norms = np.sqrt(np.diag(gram))
    np.testing.assert_allclose(stats["cosine"], gram / np.outer(norms, norms), rtol=1e-5, atol=1e-6)
    assert stats["num_conflicts"] == np.sum(np.triu(gram < 0, k=1)) > 0


def test_no_conflict_gives_plain_sum():
    rng = np.random.default_rng(3)
    base = random_tree(rng)
    tasks = to_f32([jax.tree.map(lambda b, n: b + 0.1 * n, base, random_tree(rng)) for _ in range(3)])
    combined, stats = jit_pcgrad(tasks, jax.random.key(0))
    assert stats["num_conflicts"] == 0
    for got, *xs in zip(jax.tree.leaves(combined), *map(jax.tree.leaves, tasks)):
        np.testing.assert_array_equal(got, sum(xs))


def test_heads_get_the_plain_sum():
    tasks = to_f32(conflicting_tasks(3))
    by_predicate, _ = pcgrad(tasks, jax.random.key(0), shared=not_head)
    by_tree, _ = pcgrad(tasks, jax.random.key(0), shared=HEADS_NOT_SHARED)
    all_shared, _ = pcgrad(tasks, jax.random.key(0))
    heads = [t["heads"]["h"] for t in tasks]
    np.testing.assert_array_equal(by_predicate["heads"]["h"], sum(heads))
    assert not np.allclose(all_shared["heads"]["h"], sum(heads))
    for a, b in zip(jax.tree.leaves(by_predicate), jax.tree.leaves(by_tree)):
        np.testing.assert_array_equal(a, b)


def test_jit_traces_once():
    traces = 0

    @jax.jit
    def step(task_grads, key):
        nonlocal traces
        traces += 1
        return pcgrad(task_grads, key, shared=not_head)

    for s in range(3):
        tasks, key = conflicting_tasks(3, seed=s), jax.random.key(s)
        combined, _ = step(to_f32(tasks), key)
        want = reference_pcgrad(tasks, np.asarray(projection_order(key, 3)), HEADS_NOT_SHARED)
        assert_trees_close(combined, want, rtol=1e-5, atol=1e-6)
    assert traces == 1


@jax.debug_nans(True)  # eager ops raise on any NaN, even one a where would drop
def test_zero_gradient_task():
    tasks = conflicting_tasks(3)
    tasks[1] = jax.tree.map(np.zeros_like, tasks[1])
    key = jax.random.key(0)
    combined, stats = pcgrad(to_f32(tasks), key, shared=not_head)
    want = reference_pcgrad(tasks, np.asarray(projection_order(key, 3)), HEADS_NOT_SHARED)
    assert_trees_close(combined, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(stats["cosine"][1], 0)
    assert stats["num_conflicts"] == 1

    zeros = to_f32([jax.tree.map(np.zeros_like, tasks[1])] * 3)
    combined, stats = pcgrad(zeros, key)
    for x in jax.tree.leaves(combined) + jax.tree.leaves(stats):
        assert np.all(np.asarray(x) == 0)


def test_mean_reduction():
    tasks, key = conflicting_tasks(3), jax.random.key(0)
    combined, _ = jit_pcgrad(to_f32(tasks), key, shared=not_head, reduction="mean")
    want = reference_pcgrad(tasks, np.asarray(projection_order(key, 3)), HEADS_NOT_SHARED, "mean")
    assert_trees_close(combined, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        pcgrad(to_f32(tasks), key, reduction="max")
