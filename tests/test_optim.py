"""AdamW (train/optim.py) against an independent float64 NumPy implementation of the
CS224N reference algorithm, and the measured differences from optax.adamw and
torch.optim.AdamW (`PYTHONPATH=. .venv/bin/python tests/test_optim.py` prints them for
docs/optimizer.md)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from train.optim import (adamw, decay_mask_no_layernorm_bias, layer_lr_scales, params_ema, track_params_ema,
                         warmup_schedule, with_clipping)

_rng = np.random.default_rng(0)
X = _rng.normal(size=(64, 5))
Y = X @ _rng.normal(size=(5, 3)) + _rng.normal(size=3) + 0.1 * _rng.normal(size=(64, 3))
INIT = {"w": _rng.normal(size=(5, 3)), "b": _rng.normal(size=3)}


def warmup_linear_decay(count, xp=jnp):
    """1e-2 peak, 100 warm-up steps, linear decay to 0.5e-2 at step 1000."""
    t = xp.asarray(count, float)
    return 1e-2 * xp.minimum(1.0, (t + 1) / 100) * (1 - t / 2000)


def hf_warmup_rate(t, lr, warmup, total, decay):
    """Hugging Face's get_{constant,linear}_schedule_with_warmup at 0-based step t, in Python floats."""
    if t < warmup:
        return lr * t / warmup
    return lr if decay == "constant" else lr * max(0.0, (total - t) / (total - warmup))


def numpy_clip(g, max_norm):
    """g times min(1, max_norm / ||g||), the norm over all leaves of the dict g together, float64."""
    norm = np.sqrt(sum(np.sum(np.square(x)) for x in g.values()))
    return {k: x * min(1.0, max_norm / norm) for k, x in g.items()}


def numpy_grad(p, loss_scale=1.0):
    """Gradient of loss_scale * mean((X w + b - Y)**2), float64."""
    r = 2 * loss_scale * (X @ p["w"] + p["b"] - Y) / Y.size
    return {"w": X.T @ r, "b": r.sum(0)}


def jax_loss(p, loss_scale=1.0):
    x, y = jnp.asarray(X, p["w"].dtype), jnp.asarray(Y, p["w"].dtype)
    return loss_scale * jnp.mean((x @ p["w"] + p["b"] - y) ** 2)


def reference_adamw(steps, every, lr, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.0,
                    correct_bias=True, mask=None, loss_scale=1.0, lr_scales=None, warmup=None, clip=0.0):
    """The CS224N optimizer.py step, in float64 NumPy, each parameter at the learning rate times its factor in
    `lr_scales` (1 if None); parameters every `every` steps. `warmup` = (warmup steps, total steps, decay)
    schedules the rate as Hugging Face does (`hf_warmup_rate`); `clip` > 0 clips the gradient to that global
    norm first."""
    p = {k: v.copy() for k, v in INIT.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    snapshots = []
    for t in range(1, steps + 1):
        g = numpy_grad(p, loss_scale)
        if clip:
            g = numpy_clip(g, clip)
        for k in p:
            if warmup:
                rate = hf_warmup_rate(t - 1, lr, *warmup)
            else:
                rate = lr(t - 1, np) if callable(lr) else lr
            rate *= 1.0 if lr_scales is None else lr_scales[k]
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
    "warmup_constant": dict(lr=1e-2, weight_decay=0.1, warmup=(100, 1000, "constant")),
    "warmup_linear": dict(lr=1e-2, weight_decay=0.1, warmup=(100, 1000, "linear")),
    # The gradient's norm starts at 2.6 and falls below 1 after about 100 steps: both sides of the clip.
    "clip": dict(lr=1e-2, weight_decay=0.1, clip=1.0),
    "clip_warmup_linear": dict(lr=1e-2, weight_decay=0.1, warmup=(100, 1000, "linear"), clip=1.0),
}


def make_adamw(lr, mask=None, warmup=None, clip=0.0, **kw):
    return with_clipping(adamw(warmup_schedule(lr, *warmup) if warmup else lr, decay_mask=mask, **kw), clip)


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


@pytest.mark.parametrize("case", ["decay", "clip_warmup_linear"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_params_ema_matches_float64_average_of_the_trajectory(dtype, case):
    """track_params_ema after AdamW (with clipping in front of it in the second case): every 100 steps, the
    debiased average equals sum_s (1 - d) d^(t-s) p_s / (1 - d^t) over the float64 reference's parameters
    p_1 .. p_t, and the parameters themselves are unchanged."""
    decay, kw = 0.99, CASES[case]
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


def test_params_ema_reads_the_average_wherever_clipping_sits():
    """Clipping in front of the AdamW chain or of the whole chain, the moving average included: params_ema reads
    the same average out of either optimizer state (they nest the tracker's state at different positions)."""
    decay, kw = 0.99, CASES["clip_warmup_linear"]
    inner = optax.chain(make_adamw(**kw), track_params_ema(decay))
    outer = with_clipping(optax.chain(make_adamw(**{**kw, "clip": 0.0}), track_params_ema(decay)), kw["clip"])
    read = lambda p, state: params_ema(state, decay)  # noqa: E731
    a, b = run_optax(inner, 20, 20, read=read)[-1], run_optax(outer, 20, 20, read=read)[-1]
    assert max_diff(a, b) == 0.0


def test_cases_are_distinct():
    """Each option moves the trajectory far beyond the fp32 tolerance above."""
    finals = [reference_adamw(1000, 1000, **kw)[-1] for kw in CASES.values()]
    for i in range(len(finals)):
        for j in range(i):
            assert max_diff(finals[i], finals[j]) > 1e-3


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("decay", ["constant", "linear"])
def test_warmup_schedule_at_every_step(decay, dtype):
    """3 warm-up steps of 8, and 3 steps past the end: Hugging Face's rate at each 0-based step."""
    lr, warmup, total = 2e-3, 3, 8
    with jax.enable_x64(dtype == jnp.float64):
        schedule = warmup_schedule(lr, warmup, total, decay)
        got = [schedule(jnp.asarray(t, jnp.int32)) for t in range(total + 3)]
    want = [hf_warmup_rate(t, lr, warmup, total, decay) for t in range(total + 3)]
    assert all(g.dtype == dtype for g in got)
    np.testing.assert_allclose(np.array(got, np.float64), want, rtol=1e-6 if dtype == jnp.float32 else 1e-15,
                               atol=0)


def test_warmup_schedule_without_warmup_is_the_schedule_without_it():
    """Warm-up 0: the Python float for "constant", optax.linear_schedule's values bit for bit for "linear" (over
    13 steps, where lr * (13 - t) / 13 in float32 rounds differently from it at 7 steps)."""
    lr, total = 2e-3, 13
    assert warmup_schedule(lr, 0, total, "constant") is lr
    linear, today = warmup_schedule(lr, 0, total, "linear"), optax.linear_schedule(lr, 0.0, total)
    for t in range(total + 3):
        count = jnp.asarray(t, jnp.int32)
        assert np.asarray(linear(count)).tobytes() == np.asarray(today(count)).tobytes()
        np.testing.assert_allclose(float(linear(count)), lr * max(0.0, (total - t) / total), rtol=1e-6)
    for bad in [dict(warmup_steps=-1), dict(warmup_steps=total), dict(decay="cosine")]:
        with pytest.raises(ValueError, match="warmup_schedule"):
            warmup_schedule(**{"lr": lr, "warmup_steps": 3, "total_steps": total, "decay": "linear", **bad})


def test_warmup_first_updates_match_reference_step_by_step():
    """Update k steps at lr * (k - 1) / warmup: the first leaves the parameters as they are, then each of the
    6 updates (4 of warm-up, 2 of decay) matches the float64 reference."""
    kw = dict(lr=1e-2, weight_decay=0.1, warmup=(4, 6, "linear"))
    ref = reference_adamw(6, 1, **kw)
    with jax.enable_x64(True):
        got = run_optax(make_adamw(**kw), 6, 1, dtype=jnp.float64)
    assert max_diff(got[0], INIT) == 0.0
    assert max_diff(got[1], INIT) > 1e-4
    for r, g in zip(ref, got):
        assert max_diff(r, g) < 1e-12


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_clipping_scales_by_the_norm_of_the_whole_pytree(dtype):
    """Leaf norms 5 and 12, global norm 13: a threshold of 10 scales both leaves by 10/13 (a per-leaf clip would
    leave the first alone); 13 and above leave the gradient as it is (up to rounding at 13); and a random pytree
    of three leaves is clipped as the float64 NumPy statement says, above and below its norm."""
    def clip(g, max_norm):
        tx = with_clipping(optax.identity(), max_norm)
        updates, _ = tx.update(g, tx.init(g))
        return {k: np.asarray(u, np.float64) for k, u in updates.items()}

    with jax.enable_x64(dtype == jnp.float64):
        known = {"a": jnp.asarray([3.0, 4.0], dtype), "b": jnp.asarray([[12.0]], dtype)}
        np.testing.assert_allclose(clip(known, 10.0)["a"], [30 / 13, 40 / 13], rtol=1e-6)
        np.testing.assert_allclose(clip(known, 10.0)["b"], [[120 / 13]], rtol=1e-6)
        plain = {"a": np.array([3.0, 4.0]), "b": np.array([[12.0]])}
        assert max_diff(clip(known, 26.0), plain) == 0.0
        assert max_diff(clip(known, 13.0), plain) < 1e-6  # scaled by 13 / 13, rounded
        rng = np.random.default_rng(1)
        g = {"w": rng.normal(size=(4, 3)), "b": rng.normal(size=3), "s": rng.normal(size=())}
        norm = np.sqrt(sum(np.sum(x**2) for x in g.values()))
        for max_norm in [0.25 * norm, 0.9 * norm, 1.5 * norm]:
            got = clip({k: jnp.asarray(x, dtype) for k, x in g.items()}, max_norm)
            assert max_diff(got, numpy_clip(g, max_norm)) < (1e-6 if dtype == jnp.float32 else 1e-15)
    tx = adamw(1e-2)
    assert with_clipping(tx, 0.0) is tx
    with pytest.raises(ValueError, match="max_norm"):
        with_clipping(tx, -1.0)


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
