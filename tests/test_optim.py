"""AdamW (train/optim.py) against an independent float64 NumPy implementation of the
CS224N reference algorithm, and the measured differences from optax.adamw and
torch.optim.AdamW (`PYTHONPATH=. .venv/bin/python tests/test_optim.py` prints them for
docs/optimizer.md)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from train.optim import adamw, decay_mask_no_layernorm_bias, layer_lr_scales, params_ema, track_params_ema

_rng = np.random.default_rng(0)
X = _rng.normal(size=(64, 5))
Y = X @ _rng.normal(size=(5, 3)) + _rng.normal(size=3) + 0.1 * _rng.normal(size=(64, 3))
INIT = {"w": _rng.normal(size=(5, 3)), "b": _rng.normal(size=3)}


def warmup_linear_decay(count, xp=jnp):
    """1e-2 peak, 100 warm-up steps, linear decay to 0.5e-2 at step 1000."""
    t = xp.asarray(count, float)
    return 1e-2 * xp.minimum(1.0, (t + 1) / 100) * (1 - t / 2000)


def numpy_grad(p, loss_scale=1.0):
    """Gradient of loss_scale * mean((X w + b - Y)**2), float64."""
    r = 2 * loss_scale * (X @ p["w"] + p["b"] - Y) / Y.size
    return {"w": X.T @ r, "b": r.sum(0)}


def jax_loss(p, loss_scale=1.0):
    x, y = jnp.asarray(X, p["w"].dtype), jnp.asarray(Y, p["w"].dtype)
    return loss_scale * jnp.mean((x @ p["w"] + p["b"] - y) ** 2)


def reference_adamw(steps, every, lr, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.0,
                    correct_bias=True, mask=None, loss_scale=1.0, lr_scales=None):
    """The CS224N optimizer.py step, in float64 NumPy, each parameter at the learning rate times its factor in
    `lr_scales` (1 if None); parameters every `every` steps."""
    p = {k: v.copy() for k, v in INIT.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    snapshots = []
    for t in range(1, steps + 1):
        g = numpy_grad(p, loss_scale)
        for k in p:
            rate = (lr(t - 1, np) if callable(lr) else lr) * (1.0 if lr_scales is None else lr_scales[k])
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] * g[k]
            alpha = rate * np.sqrt(1 - b2**t) / (1 - b1**t) if correct_bias else rate
            p[k] = p[k] - alpha * m[k] / (np.sqrt(v[k]) + eps)
            if mask is None or mask[k]:
                p[k] = p[k] - rate * weight_decay * p[k]
        if t % every == 0:
            snapshots.append({k: x.copy() for k, x in p.items()})
    return snapshots


def run_optax(opt, steps, every, dtype=jnp.float32, loss_scale=1.0, read=lambda params, state: params):
    """Train INIT with `opt` on the regression problem; `read(params, state)` (the parameters) every `every` steps."""

    def body(carry, _):
        p, state = carry
        updates, state = opt.update(jax.grad(jax_loss)(p, loss_scale), state, p)
        return (optax.apply_updates(p, updates), state), None

    chunk = jax.jit(lambda c: jax.lax.scan(body, c, None, length=every)[0])
    params = {k: jnp.asarray(v, dtype) for k, v in INIT.items()}
    carry = (params, opt.init(params))
    snapshots = []
    for _ in range(steps // every):
        carry = chunk(carry)
        snapshots.append({k: np.asarray(v, np.float64) for k, v in read(*carry).items()})
    return snapshots


def run_torch(steps, lr, b1, b2, eps, weight_decay, loss_scale):
    """torch.optim.AdamW in float64 on the same problem; final parameters."""
    import torch

    p = {k: torch.tensor(v) for k, v in INIT.items()}
    opt = torch.optim.AdamW(list(p.values()), lr=lr, betas=(b1, b2), eps=eps,
                            weight_decay=weight_decay)
    for _ in range(steps):
        g = numpy_grad({k: x.numpy() for k, x in p.items()}, loss_scale)
        for k in p:
            p[k].grad = torch.from_numpy(g[k])
        opt.step()
    return {k: x.numpy() for k, x in p.items()}


def max_diff(a, b):
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


CASES = {
    "no_decay": dict(lr=1e-2),
    "decay": dict(lr=1e-2, weight_decay=0.1),
    "no_bias_correction": dict(lr=1e-2, weight_decay=0.1, correct_bias=False),
    "schedule": dict(lr=warmup_linear_decay, weight_decay=0.1),
    "mask": dict(lr=1e-2, weight_decay=0.1, mask={"w": True, "b": False}),
    "lr_scales": dict(lr=1e-2, weight_decay=0.1, lr_scales={"w": 0.5, "b": 0.25}),
    "lr_scales_mask_schedule": dict(lr=warmup_linear_decay, weight_decay=0.1, mask={"w": False, "b": True},
                                    lr_scales={"w": 0.5, "b": 0.25}),
}


def make_adamw(lr, mask=None, **kw):
    return adamw(lr, decay_mask=mask, **kw)


@pytest.mark.parametrize("case", CASES)
def test_float32_matches_float64_reference(case):
    kw = CASES[case]
    ref = reference_adamw(1000, 100, **kw)
    got = run_optax(make_adamw(**kw), 1000, 100)
    for r, g in zip(ref, got):
        # About 16 fp32 ulps of the largest parameter (~1.5); measured up to 1.6e-6.
        assert max_diff(r, g) < 2e-6


@pytest.mark.parametrize("case", CASES)
def test_float64_chain_matches_reference(case):
    kw = CASES[case]
    ref = reference_adamw(1000, 100, **kw)
    with jax.enable_x64(True):
        got = run_optax(make_adamw(**kw), 1000, 100, dtype=jnp.float64)
    for r, g in zip(ref, got):
        assert max_diff(r, g) < 1e-12


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_params_ema_matches_float64_average_of_the_trajectory(dtype):
    """track_params_ema after AdamW: every 100 steps, the debiased average equals sum_s (1 - d) d^(t-s) p_s /
    (1 - d^t) over the float64 reference's parameters p_1 .. p_t, and the parameters themselves are unchanged."""
    decay, kw = 0.99, CASES["decay"]
    trajectory = reference_adamw(1000, 1, **kw)
    want = []
    for t in range(100, 1001, 100):
        weights = (1 - decay) * decay ** np.arange(t - 1, -1, -1) / (1 - decay**t)
        want.append({k: np.tensordot(weights, np.stack([p[k] for p in trajectory[:t]]), 1) for k in INIT})
    opt = optax.chain(make_adamw(**kw), track_params_ema(decay))
    with jax.enable_x64(dtype == jnp.float64):
        got = run_optax(opt, 1000, 100, dtype=dtype, read=lambda p, state: params_ema(state, decay))
        params = run_optax(opt, 1000, 100, dtype=dtype)
    tolerance = 2e-6 if dtype == jnp.float32 else 1e-12
    assert max(max_diff(w, g) for w, g in zip(want, got)) < tolerance
    assert max(max_diff(r, p) for r, p in zip(trajectory[99::100], params)) < tolerance
    # The average lags the parameters by far more than the tolerance: the test tells the two apart.
    assert max_diff(want[0], trajectory[99]) > 100 * tolerance


def test_cases_are_distinct():
    """Each option moves the trajectory far beyond the fp32 tolerance above."""
    finals = [reference_adamw(1000, 1000, **kw)[-1] for kw in CASES.values()]
    for i in range(len(finals)):
        for j in range(i):
            assert max_diff(finals[i], finals[j]) > 1e-3


def test_decay_mask_no_layernorm_bias():
    params = {
        "embeddings": {"word_embeddings": {"embedding": 1.0}, "LayerNorm": {"scale": 1.0, "bias": 1.0}},
        "layer_0": {"query": {"kernel": 1.0, "bias": 1.0}, "output_LayerNorm": {"scale": 1.0}},
        "heads": [{"kernel": 1.0, "bias": 1.0}],
    }
    assert decay_mask_no_layernorm_bias(params) == {
        "embeddings": {"word_embeddings": {"embedding": True}, "LayerNorm": {"scale": False, "bias": False}},
        "layer_0": {"query": {"kernel": True, "bias": False}, "output_LayerNorm": {"scale": False}},
        "heads": [{"kernel": True, "bias": False}],
    }


def test_callable_mask_equals_tree_mask():
    callable_mask = lambda p: {"w": True, "b": False}  # noqa: E731
    a = run_optax(adamw(1e-2, weight_decay=0.1, decay_mask=callable_mask), 50, 50)[-1]
    b = run_optax(make_adamw(**CASES["mask"]), 50, 50)[-1]
    assert max_diff(a, b) == 0.0


def test_callable_lr_scales_equal_tree_lr_scales():
    kw = CASES["lr_scales_mask_schedule"]
    a = run_optax(make_adamw(**{**kw, "lr_scales": lambda p: kw["lr_scales"]}), 50, 50)[-1]
    b = run_optax(make_adamw(**kw), 50, 50)[-1]
    assert max_diff(a, b) == 0.0


def test_layer_lr_scales_decay_from_the_heads_down():
    leaf = {"kernel": 1.0, "bias": 1.0}
    params = {
        "bert": {"embeddings": {"word_embeddings": {"embedding": 1.0}, "LayerNorm": {"scale": 1.0}},
                 "encoder": {f"layer_{i}": {"attention": {"self": {"query": leaf}}} for i in range(3)},
                 "pooler": {"dense": leaf}},
        "sst_classifier": leaf,
    }
    d = 0.5
    assert layer_lr_scales(params, d) == {
        "bert": {"embeddings": {"word_embeddings": {"embedding": d**4}, "LayerNorm": {"scale": d**4}},
                 "encoder": {f"layer_{i}": {"attention": {"self": {"query": {"kernel": d ** (3 - i),
                                                                             "bias": d ** (3 - i)}}}}
                             for i in range(3)},
                 "pooler": {"dense": {"kernel": 1.0, "bias": 1.0}}},
        "sst_classifier": {"kernel": 1.0, "bias": 1.0},
    }
    with pytest.raises(ValueError, match="bert/adapter/w is not under bert/embeddings"):
        layer_lr_scales({**params, "bert": {**params["bert"], "adapter": {"w": 1.0}}}, d)
    with pytest.raises(ValueError, match="found layer_0, layer_2"):
        layer_lr_scales({"bert": {"encoder": {"layer_0": leaf, "layer_2": leaf}}}, d)


# Settings for the comparison with optax.adamw / torch.optim.AdamW, all with the same
# hyperparameters, over 10 steps. "eps": small gradients (loss scaled by 1e-5), no
# decay, so only the eps placement differs. "decay": eps=0, so only the decay order
# differs. "both": the reference's default lr and eps with a weight decay of 0.01.
COMPARISONS = {
    "eps": dict(lr=1e-3, eps=1e-6, weight_decay=0.0, loss_scale=1e-5),
    "decay": dict(lr=1e-2, eps=0.0, weight_decay=0.1, loss_scale=1.0),
    "both": dict(lr=1e-3, eps=1e-6, weight_decay=0.01, loss_scale=1.0),
}


def compare_with_optax_and_torch(lr, eps, weight_decay, loss_scale, steps=10):
    """Max |difference| in the parameters after `steps` steps, keyed by pair."""
    hp = dict(b1=0.9, b2=0.999, eps=eps, weight_decay=weight_decay)
    ref = reference_adamw(steps, steps, lr, loss_scale=loss_scale, **hp)[-1]
    ours32 = run_optax(adamw(lr, **hp), steps, steps, loss_scale=loss_scale)[-1]
    with jax.enable_x64(True):
        ours64 = run_optax(adamw(lr, **hp), steps, steps, jnp.float64, loss_scale)[-1]
        theirs = run_optax(optax.adamw(lr, **hp), steps, steps, jnp.float64, loss_scale)[-1]
    torch_p = run_torch(steps, lr, loss_scale=loss_scale, **hp)
    return {
        "ours_fp32_vs_ref": max_diff(ours32, ref),
        "ours_fp64_vs_ref": max_diff(ours64, ref),
        "optax_vs_ref": max_diff(theirs, ref),
        "torch_vs_ref": max_diff(torch_p, ref),
        "torch_vs_optax": max_diff(torch_p, theirs),
    }


@pytest.mark.parametrize("name", COMPARISONS)
def test_differs_from_optax_and_torch(name):
    d = compare_with_optax_and_torch(**COMPARISONS[name])
    assert d["ours_fp64_vs_ref"] < 1e-12
    assert d["ours_fp32_vs_ref"] < 1e-6
    assert d["optax_vs_ref"] > 1e-6
    assert d["torch_vs_ref"] > 1e-6
    assert d["torch_vs_optax"] < 1e-12  # the two libraries implement the same algorithm


if __name__ == "__main__":
    for name, kw in COMPARISONS.items():
        print(name, {k: f"{v:.2e}" for k, v in compare_with_optax_and_torch(**kw).items()})
    for name, kw in CASES.items():
        ref = reference_adamw(1000, 100, **kw)
        got32 = run_optax(make_adamw(**kw), 1000, 100)
        with jax.enable_x64(True):
            got64 = run_optax(make_adamw(**kw), 1000, 100, dtype=jnp.float64)
        print(name, "fp32 %.2e  fp64 %.2e" % (
            max(max_diff(r, g) for r, g in zip(ref, got32)),
            max(max_diff(r, g) for r, g in zip(ref, got64))))
