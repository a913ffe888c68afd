"""The bfloat16 computation path against float32 on the packaged MiniLM: the training step's task gradients
(a classifier, a cross-encoded pair, a cosine regressor; dropout on, R-Drop in the loss).

The bound. bfloat16 keeps 8 mantissa bits, a relative rounding error of up to 2^-9 per value. The encoder rounds
every activation and every incoming gradient once per layer part (the products accumulate in float32), so a
gradient computed through its 6 layers carries the sum of some tens of such roundings, partly cancelling. The test
states the bound as a multiple of 2^-8 (0.0039) on norms of whole gradients, where single values are noisier
(measured on the 2-core AMD EPYC: 0.9-1.2% for the whole gradient, 0.03-1.6% per group, under 0.11% for the loss):
- relative error of each task's whole gradient, ||g_bf16 - g_f32|| / ||g_f32|| <= 8 x 2^-8 (3.1%);
- relative error of each parameter group's gradient (an encoder layer, the embeddings, a head) <= 16 x 2^-8;
- relative error of the loss <= 4 x 2^-8.
The dropout masks are the same in both dtypes (they hash element indices, bert_flax.modeling.Dropout), so the two
computations differ by rounding only. A gradient routed wrongly (a transposed product, a lost term) is off by
its own size, far beyond the bound.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import tiny_config
from train.run import Run

EPS = 2.0**-8


def _task_gradients(run, dtype, params, batches):
    """Each task's (loss, gradient) at update 1 of 4, the run's model computing in `dtype`."""
    from train.step import make_grad_fns

    config = dataclasses.replace(run.config, dtype=dtype)
    model = run.model.clone(config=config, dtype=jnp.dtype(dtype))
    grad_fns = make_grad_fns(model, config, total_steps=4)
    return {task: grad_fns[task](params, batches[task], jax.random.key(i, impl="rbg"), jnp.int32(1))
            for i, task in enumerate(config.tasks)}


def _groups(grads) -> dict[str, np.ndarray]:
    """The gradient flattened per parameter group: each encoder layer, the embeddings, the pooler and each head."""
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    groups: dict[str, list[np.ndarray]] = {}
    for path, leaf in flat:
        keys = [getattr(key, "key", str(key)) for key in path]
        name = "/".join(keys[:3] if keys[1:2] == ["encoder"] else keys[:2])
        groups.setdefault(name, []).append(np.asarray(leaf, np.float64).ravel())
    return {name: np.concatenate(leaves) for name, leaves in groups.items()}


@pytest.fixture(scope="module")
def recipe_config(minilm_flax_dir, small_data):
    """The distillation recipe's heads and losses (cross-encoded paraphrase, cosine STS, mean pooling, R-Drop)."""
    return tiny_config(minilm_flax_dir, small_data, batch_size=16, max_length=64, pooling="mean",
                       pair_encoding="para=cross", regression_head="cosine", regression_target="scaled",
                       rdrop=1.0, pcgrad=True)


def test_bfloat16_task_gradients_match_float32_within_the_stated_bound(recipe_config):
    run = Run(recipe_config, recipe_config.init_checkpoint)
    params = run.init_params()
    batches, _ = next(run.train_steps(0))
    float32 = _task_gradients(run, "float32", params, batches)
    bfloat16 = _task_gradients(run, "bfloat16", params, batches)
    for task in recipe_config.tasks:
        (loss32, grads32), (loss16, grads16) = float32[task], bfloat16[task]
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(grads16))
        assert float(loss16) != float(loss32), task  # the model did compute in bfloat16
        assert abs(float(loss16) - float(loss32)) <= 4 * EPS * abs(float(loss32)), task
        groups32, groups16 = _groups(grads32), _groups(grads16)
        assert groups32.keys() == groups16.keys()
        whole32, whole16 = (np.concatenate(list(groups.values())) for groups in (groups32, groups16))
        error = np.linalg.norm(whole16 - whole32) / np.linalg.norm(whole32)
        assert error <= 8 * EPS, (task, error)
        for name in groups32:
            if not groups32[name].any():  # a part the task does not use (the pooler under mean pooling)
                assert not groups16[name].any(), (task, name)
                continue
            group_error = np.linalg.norm(groups16[name] - groups32[name]) / np.linalg.norm(groups32[name])
            assert group_error <= 16 * EPS, (task, name, group_error)
