"""Multi-task model and training CLI on a tiny random encoder and a small copy of the task data."""

import ctypes
import dataclasses
import io
import itertools
import json
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import SMALL_ROWS
from tests.helpers import DATA_DIR, InterruptAfter, REPO, cosent_float64, devices_env, tiny_config
from train import cli as train_config
from data.tasks import registry
from train import epochs, evaluate, loop, main, metrics, predict
from train.evaluate import evaluate_run
from train.run import Run, RunError, load_run, read_metrics
from train.step import make_update
from data.input_pipeline import shard_batch
from train.cli import PRESETS
from train.config import TrainConfig

def test_presets_expand_to_the_reference_rows():
    config, _ = train_config.parse_args(["--preset", "cosfeat-pcgrad-mean"])
    settings = (config.regression_head, config.cos_feature, config.pcgrad, config.pooling)
    assert settings == ("cosine", "para", True, "mean")
    config, _ = train_config.parse_args(["--preset", "shared-pcgrad", "--no-pcgrad", "--lr", "2e-5"])
    assert config.shared_layer and not config.pcgrad and config.lr == 2e-5
    assert train_config.parse_args(["--preset", "baseline-6041"])[0].samples_per_task == 6041
    baseline = train_config.parse_args(["--preset", "baseline-10000"])[0]
    assert (baseline.pooling, baseline.regression_head, baseline.pcgrad, baseline.shared_layer) == (
        "cls", "linear", False, False)
    assert set(PRESETS) == {"baseline-6041", "baseline-10000", "shared-pcgrad", "cosine-pcgrad",
                            "cosine-pcgrad-mean", "cosfeat-pcgrad-mean"}
    defaults = TrainConfig()
    assert (defaults.dropout, defaults.lr, defaults.epochs, defaults.samples_per_task) == (0.3, 1e-5, 10, 10_000)


def test_pool_batches_flag_reaches_the_stream(tiny_encoder, small_data):
    assert train_config.parse_args(["--pool-batches", "3"])[0].pool_batches == 3
    streams = {pool: Run(tiny_config(tiny_encoder, small_data, pool_batches=pool, samples_per_task=64),
                              tiny_encoder).stream() for pool in (1, 8)}
    assert {pool: stream.pool_batches for pool, stream in streams.items()} == {1: 1, 8: 8}
    # The same drawn examples, batched from length-sorted pools of one batch or of all eight.
    plans = {pool: stream.plan(0)["sst"] for pool, stream in streams.items()}
    rows = {pool: sorted(np.concatenate(plan.rows).tolist()) for pool, plan in plans.items()}
    assert rows[1] == rows[8]
    assert sum(plans[8].lengths) < sum(plans[1].lengths)


@pytest.mark.parametrize("argv, message", [
    (["--preset", "nope"], "--preset 'nope' does not exist"),
    (["--pooling", "avg"], "--pooling 'avg': choose cls, mean or max, then TASK=MODE items"),
    (["--pooling", "mean,max"], "--pooling 'mean,max': choose cls, mean or max"),
    (["--pooling", "sst=cls,mean"], "--pooling 'sst=cls,mean': choose cls, mean or max"),
    (["--pooling", "mean,sst=avg"], "--pooling 'mean,sst=avg': choose cls, mean or max"),
    (["--tasks", "sst,para", "--pooling", "mean,sts=cls"], "with TASK among the run's tasks it applies to (sst,para)"),
    (["--tasks", "sst,qqp"], "--tasks sst,qqp: choose distinct tasks among sst, para, sts, cfimdb"),
    (["--pair-encoding", "cross", "--regression-head", "cosine"],
     "--pair-encoding cross: a cross-encoded pair has no sentence"),
    (["--pair-encoding", "para=cross", "--cos-feature", "para"],
     "--pair-encoding para=cross: a cross-encoded pair has no"),
    (["--pair-encoding", "sts=tri"], "--pair-encoding 'sts=tri': choose bi or cross, then TASK=MODE"),
    (["--swap-pairs", "--tasks", "sst,para"],
     "--swap-pairs: no task of the run encodes"),
    (["--loss-weights", "sts=0"], "--loss-weights 'sts=0': choose TASK=W[,TASK=W] with TASK among the run's tasks"),
    (["--tasks", "sst", "--loss-weights", "sts=2"], "--loss-weights 'sts=2': choose TASK=W"),
    (["--epochs", "0"], "--epochs must be positive"),
    (["--pool-batches", "0"], "--pool-batches must be positive"),
    (["--encoder-chunks", "0"], "--encoder-chunks must be positive"),
    (["--label-smoothing", "1"], "--label-smoothing 1.0: must be in [0, 1)"),
    (["--layer-lr-decay", "0"], "--layer-lr-decay 0.0: must be in (0, 1]"),
    (["--layer-lr-decay", "1.2"], "--layer-lr-decay 1.2: must be in (0, 1]"),
    (["--layer-lr-decay", "0.8", "--option", "pretrain"], "--layer-lr-decay: --option pretrain freezes the encoder"),
    (["--reinit-layers", "-1"], "--reinit-layers -1: must be 0 (none) or more"),
    (["--reinit-layers", "1", "--option", "pretrain"], "--reinit-layers: --option pretrain freezes the encoder"),
    (["--rdrop", "-1"], "--rdrop -1.0: must be 0 (off) or a positive weight"),
    (["--rdrop", "inf"], "--rdrop inf: must be 0 (off) or a positive weight"),
    (["--rdrop", "1", "--tasks", "para,sts"],
     "--rdrop: applies to tasks with class logits, and --tasks para,sts has none"),
    (["--ordinal-loss", "-0.5"], "--ordinal-loss -0.5: must be 0 (off) or a positive weight"),
    (["--ordinal-loss", "1", "--tasks", "sts"],
     "--ordinal-loss: applies to tasks with class logits, and --tasks sts has none"),
    (["--ranking-loss", "-0.1"], "--ranking-loss -0.1: must be 0 (off) or a positive weight"),
    (["--ranking-loss", "0.1", "--tasks", "sst,para"],
     "--ranking-loss: applies to pair-regression tasks, and --tasks sst,para has none"),
    (["--lr", "-1"], "--lr -1.0: must be positive"),
    (["--save-every-steps", "-5"], "--save-every-steps -5: must be 0"),
    (["--grad-accumulation", "0"], "--grad-accumulation must be positive, not 0"),
    (["--eval-every-steps", "-1"], "--eval-every-steps -1: must be 0 (each epoch's end only) or positive"),
    (["--eval-max-examples", "-3"], "--eval-max-examples -3: must be 0 (all of them) or positive"),
    (["--early-stopping-patience", "-2"], "--early-stopping-patience -2: must be 0 (never stop early) or positive"),
    (["--max-length", "2"], "--max-length 2: must be at least 8"),
    (["--weight-decay", "-0.1"], "--weight-decay -0.1: must be 0 or positive"),
    (["--select-by", "cfimdb"], "--select-by 'cfimdb': choose overall or a task of the run (sst,para,sts)"),
    (["--cos-feature", "sts"], "--cos-feature 'sts': name pair-classification tasks"),
    (["--regression-head", "sst=cosine"], "--regression-head 'sst=cosine': choose linear or cosine, then TASK=MODE"),
    (["--task-file", "no/such.toml"], "no/such.toml: task file not found"),
    (["--resume", "runs/a", "--run-dir", "runs/b"], "a resumed run stays in its own directory"),
])
def test_bad_flags_are_named(argv, message, capsys):
    assert main.main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def expected_modules(config: TrainConfig) -> set[str]:
    heads = {"sst": "sst_classifier", "cfimdb": "cfimdb_classifier", "para": "para_classifier"}
    if config.regression_head == "linear":
        heads["sts"] = "sts_regressor"
    modules = {"bert", *(heads[t] for t in config.tasks if t in heads)}
    if config.shared_layer and {"para", "sts"} & set(config.tasks):
        modules.add("pair_shared")
    return modules


COMBINATIONS = [
    dict(),
    dict(pooling="max", regression_target="scaled", shared_layer=True, weight_decay=0.01,
         decay_mask="no-layernorm-bias", lr_schedule="linear", layer_lr_decay=0.8),
    dict(pooling="mean", regression_head="cosine", regression_target="scaled", shared_layer=True, pcgrad=True,
         sampling="annealed", ranking_loss=0.02),
    dict(pair_encoding="cross", regression_target="scaled", shared_layer=True, pcgrad=True, sampling="proportional"),
    dict(option="pretrain", pcgrad=True, tasks=("sst", "para"), ema=0.9),
    dict(tasks=("cfimdb",), pooling="max", sampling="min", label_smoothing=0.1),
    dict(dtype="bfloat16", pooling="mean", regression_head="cosine", cos_feature="para", pcgrad=True),
    dict(pair_encoding="para=cross", pooling="mean,sst=cls", regression_head="cosine", shared_layer=True, pcgrad=True,
         swap_pairs=True, rdrop=0.5, ordinal_loss=0.5),
]


@pytest.mark.parametrize("overrides", COMBINATIONS,
                         ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
def test_every_combination_builds_and_takes_a_step(tiny_encoder, small_data, overrides):
    from train.step import evaluated_params, init_state, make_grad_fns, make_optimizer, make_update

    config = tiny_config(tiny_encoder, small_data, **overrides)
    run = Run(config, tiny_encoder)
    for task in {"para", "sts"} & set(config.tasks):
        ids = run.data[task].train.ids  # with --swap-pairs, a cross task's pairs twice
        half = len(ids) // 2
        assert (ids[:half] == ids[half:]) == (config.swap_pairs and config.pair_mode(task) == "cross")
    tx = make_optimizer(config, total_steps=4)
    state = init_state(run.init_params(), tx)
    before = jax.device_get(state.params)
    batches, _ = next(run.train_steps(0))
    grad_fns = make_grad_fns(run.model, config)
    losses, grads = zip(*(grad_fns[t](state.params, batches[t], jax.random.key(i, impl="rbg"), state.step)
                          for i, t in enumerate(config.tasks)))
    state, stats = make_update(config, tx)(state, tuple(grads), jax.random.key(9))
    after = jax.device_get(state.params)
    assert all(np.isfinite(float(loss)) and float(loss) > 0 for loss in losses)
    assert set(after) == expected_modules(config)
    assert all(leaf.dtype == np.float32 for leaf in jax.tree_util.tree_leaves(after))  # bfloat16 computes only
    encoder_moved = max(float(np.abs(a - b).max()) for a, b in
                        zip(jax.tree_util.tree_leaves(after["bert"]), jax.tree_util.tree_leaves(before["bert"])))
    heads_moved = max(float(np.abs(a - b).max()) for k in after if k != "bert" for a, b in
                      zip(jax.tree_util.tree_leaves(after[k]), jax.tree_util.tree_leaves(before[k])))
    assert heads_moved > 0
    assert (encoder_moved == 0) == (config.option == "pretrain")
    assert bool(stats) == config.pcgrad
    # After one update the debiased moving average (--ema) is the updated parameters themselves.
    jax.tree_util.tree_map(lambda e, a: np.testing.assert_allclose(e, a, rtol=1e-6, atol=1e-9),
                           jax.device_get(evaluated_params(state, config)), after)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
def test_smoothed_cross_entropy_matches_float64_soft_targets(smoothing):
    """Against -sum_k q_k log softmax(x)_k with q = (1 - s) one_hot(y) + s / K, in float64 NumPy."""
    from scipy.special import log_softmax

    from train.losses import smoothed_cross_entropy

    rng = np.random.default_rng(3)
    logits, labels = rng.normal(scale=4.0, size=(64, 5)), rng.integers(0, 5, size=64)
    log_probs = log_softmax(logits, axis=-1)
    targets = (1 - smoothing) * np.eye(5)[labels] + smoothing / 5
    want = -(targets * log_probs).sum(-1)
    got = np.asarray(smoothed_cross_entropy(jax.numpy.asarray(logits, np.float32), labels, smoothing), np.float64)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)
    if smoothing:  # far from the unsmoothed loss: the test tells them apart
        assert np.abs(want + log_probs[np.arange(64), labels]).max() > 0.1


def test_ordinal_loss_matches_float64():
    """sst's task loss with --ordinal-loss against NumPy float64: the mean, over rows of weight 1, of the
    cross-entropy plus alpha times sum_k (cumulative softmax_k - [label <= k])^2."""
    from scipy.special import log_softmax, softmax

    from train.losses import squared_emd, task_loss

    rng = np.random.default_rng(7)
    logits, labels = rng.normal(scale=3.0, size=(16, 5)), rng.integers(0, 5, size=16)
    weights = (np.arange(16) < 12).astype(np.float32)  # 4 padding rows
    emd = ((np.cumsum(softmax(logits, -1), -1) - (np.arange(5) >= labels[:, None])) ** 2).sum(-1)
    cross_entropy = -log_softmax(logits, -1)[np.arange(16), labels]
    real = weights == 1
    got = task_loss(jax.numpy.asarray(logits, np.float32), {"labels": labels, "weights": weights}, "sst",
                    TrainConfig(ordinal_loss=0.6))
    np.testing.assert_allclose(float(got), (cross_entropy + 0.6 * emd)[real].mean(), rtol=1e-6)
    assert 0.6 * emd[real].mean() > 0.1  # far from the plain cross-entropy: the test tells them apart
    # All mass one class off the label costs 1, two classes off 2: cross-entropy charges both the same.
    confident = jax.numpy.asarray(np.log(np.eye(5)[[1, 2]] + 1e-12), np.float32)
    np.testing.assert_allclose(np.asarray(squared_emd(confident, np.array([0, 0]))), [1.0, 2.0], rtol=1e-5)


def test_cosent_matches_float64():
    """sts's task loss with --ranking-loss against NumPy float64: the mean squared error over rows of weight 1,
    plus alpha times log(1 + sum over real (i, j) with label_i > label_j of exp(20 (score_j - score_i)));
    ties and padding rows add no pair."""
    from train.losses import cosent, task_loss

    rng = np.random.default_rng(3)
    scores, labels = rng.uniform(-1, 1, size=16), rng.integers(0, 6, size=16).astype(np.float64)  # ties
    weights = (np.arange(16) < 13).astype(np.float32)  # 3 padding rows
    want = cosent_float64(scores, labels, weights)
    got = cosent(jnp.asarray(scores, jnp.float32), jnp.asarray(labels, jnp.float32), weights)
    np.testing.assert_allclose(float(got), want, rtol=1e-6)
    config = TrainConfig(pooling="mean", regression_head="cosine", regression_target="scaled", ranking_loss=0.3)
    real = weights == 1
    got = task_loss(jnp.asarray(scores, jnp.float32), {"labels": labels, "weights": weights}, "sts", config)
    np.testing.assert_allclose(float(got), ((scores - labels / 5) ** 2)[real].mean() + 0.3 * want, rtol=1e-6)
    # Scores ranked as the labels, 0.5 apart per label step, cost nearly nothing; ranked in reverse, about 20 times
    # the widest gap (2.5, between the 2 real rows labelled 0 and the 4 labelled 5) plus the log of those 8 pairs.
    ranked = jnp.asarray(labels / 2, jnp.float32)
    assert float(cosent(ranked, labels, weights)) < 0.01
    assert float(cosent(-ranked, labels, weights)) == pytest.approx(50 + np.log(8), rel=1e-4)


def test_cosent_of_padding_only_is_zero_with_zero_gradient():
    from train.losses import cosent

    loss, grad = jax.value_and_grad(cosent)(jnp.ones(4), jnp.arange(4.0), jnp.zeros(4))
    assert float(loss) == 0 and np.all(np.asarray(grad) == 0)


def test_rdrop_loss_matches_float64():
    """The R-Drop objective against NumPy float64: the two passes' mean cross-entropy plus alpha times the mean,
    over rows of weight 1, of (KL(p || q) + KL(q || p)) / 2."""
    from scipy.special import log_softmax

    from train.losses import rdrop_loss

    rng = np.random.default_rng(5)
    first, second = rng.normal(scale=2.0, size=(2, 16, 5))
    labels, weights = rng.integers(0, 5, size=16), (np.arange(16) < 13).astype(np.float32)  # 3 padding rows
    config = TrainConfig(rdrop=0.7)
    log_p, log_q = log_softmax(first, -1), log_softmax(second, -1)
    real = weights == 1
    cross_entropy = -(log_p[real, labels[real]].mean() + log_q[real, labels[real]].mean()) / 2
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1) + (np.exp(log_q) * (log_q - log_p)).sum(-1)
    batch = {"labels": labels, "weights": weights}
    objective, loss = rdrop_loss(*(jax.numpy.asarray(x, np.float32) for x in (first, second)), batch, "sst", config)
    np.testing.assert_allclose(float(loss), cross_entropy, rtol=1e-6)
    np.testing.assert_allclose(float(objective), cross_entropy + 0.7 * kl[real].mean() / 2, rtol=1e-6)
    assert 0.7 * kl[real].mean() / 2 > 0.1  # the KL term is far from zero here: the test tells it apart


def test_sts_correlation_matches_scipy():
    """The STS metric against scipy.stats.pearsonr: float32 scores of several scales and offsets, a perfect and a
    reversed ranking, and nan for a constant prediction."""
    import warnings

    from scipy.stats import pearsonr

    rng = np.random.default_rng(7)
    labels = rng.uniform(0, 5, size=300)
    for preds in (labels + rng.normal(scale=2.0, size=300), 1e4 + 1e-3 * labels + rng.normal(scale=1e-3, size=300),
                  -labels, 2 * labels + 1):
        preds = preds.astype(np.float32)
        np.testing.assert_allclose(metrics.task_metric(registry()["sts"], preds, labels),
                                   pearsonr(preds, labels).statistic, rtol=1e-12, atol=1e-15)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(metrics.task_metric(registry()["sts"], np.full(300, 2.5, np.float32), labels))


def test_rdrop_without_dropout_gives_the_plain_gradient(tiny_encoder, small_data):
    """With every dropout rate 0 the two passes agree, so the KL term and its gradient vanish and the R-Drop
    gradient is the plain one: the repeated rows are the same examples. With dropout (the same key) they differ,
    so the R-Drop path was taken; and its gradient moves with alpha, so the KL term reaches it."""
    from train.model import MultitaskBert
    from train.step import make_grad_fns

    plain = tiny_config(tiny_encoder, small_data, tasks=("sst",), dropout=0.0)
    run = Run(plain, tiny_encoder)
    params, batch, key = run.init_params(), next(run.train_steps(0))[0]["sst"], jax.random.key(0, impl="rbg")
    no_dropout = dataclasses.replace(run.bert_config, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)

    def grad(dropout: bool, rdrop: float):
        config = dataclasses.replace(plain, dropout=0.3 if dropout else 0.0, rdrop=rdrop)
        model = MultitaskBert(run.bert_config if dropout else no_dropout, config)
        loss, grads = make_grad_fns(model, config)["sst"](params, batch, key, 0)
        return float(loss), jax.tree_util.tree_leaves(grads)

    (loss, grads), (rdrop_loss, rdrop_grads) = grad(False, 0.0), grad(False, 1.0)
    np.testing.assert_allclose(rdrop_loss, loss, rtol=1e-6)
    scale = max(float(np.abs(g).max()) for g in grads)
    for g, r in zip(grads, rdrop_grads):
        np.testing.assert_allclose(r, g, rtol=1e-5, atol=np.finfo(np.float32).eps * scale)
    (_, dropout_grads), (_, rdrop_dropout_grads) = grad(True, 0.0), grad(True, 1.0)
    assert max(float(np.abs(d - r).max()) for d, r in zip(dropout_grads, rdrop_dropout_grads)) > 1e-3 * scale
    _, cross_entropy_only_grads = grad(True, 1e-9)  # the same repeated rows and dropout masks, the KL term ~ 0
    assert max(float(np.abs(c - r).max()) for c, r in zip(cross_entropy_only_grads, rdrop_dropout_grads)) > 1e-3 * scale


def test_loss_weights_scale_a_task_gradient_and_not_its_loss(tiny_encoder, small_data):
    from train.step import make_grad_fns

    plain = tiny_config(tiny_encoder, small_data, tasks=("sst", "sts"))
    weighted = dataclasses.replace(plain, loss_weights="sts=2.5")
    run = Run(plain, tiny_encoder)
    params, batches, key = run.init_params(), next(run.train_steps(0))[0], jax.random.key(0, impl="rbg")
    assert (weighted.loss_weight("sst"), weighted.loss_weight("sts")) == (1.0, 2.5)
    loss, grads = make_grad_fns(run.model, plain)["sts"](params, batches["sts"], key, 0)
    weighted_loss, weighted_grads = make_grad_fns(run.model, weighted)["sts"](params, batches["sts"], key, 0)
    assert float(weighted_loss) == float(loss)
    # Float32 rounding of the backward pass, whose sums round relative to the gradients' scale: an entry near zero
    # by cancellation (-1.8e-6, off by 1.4e-9 on an AMD EPYC; the largest entry is 0.54) keeps an absolute error,
    # held here to one float32 epsilon of that scale (6.5e-8).
    scale = max(float(np.abs(g).max()) for g in jax.tree_util.tree_leaves(grads))
    for g, w in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(weighted_grads)):
        np.testing.assert_allclose(w, 2.5 * g, rtol=1e-5, atol=np.finfo(np.float32).eps * scale)


def test_swapped_pairs_predict_from_the_mean_output_of_both_orders(tiny_encoder, small_data):
    """With --swap-pairs a cross-encoded task's predictions come from its head's output averaged over
    [CLS] a [SEP] b [SEP] and [CLS] b [SEP] a [SEP] (here STS's logit, reported as 5 * sigmoid)."""
    from data.input_pipeline import _make_batch

    config = tiny_config(tiny_encoder, small_data, tasks=("sts",), pair_encoding="cross", swap_pairs=True)
    run = Run(config, tiny_encoder)
    params, data, rows = run.init_params(), run.data["sts"], np.arange(6)

    def head_output(split):  # the first rows as one batch, padded to their longest
        batch = _make_batch(split, rows, int(split.lengths[0, rows].max()), with_index=False)
        return np.asarray(run.model.apply({"params": params}, batch, "sts"), np.float64)

    # The random tiny encoder's sentence features differ little: a steeper head, centred, makes the order visible.
    head = params["sts_regressor"]
    params = {**params, "sts_regressor": {"kernel": head["kernel"] * 100, "bias": head["bias"] * 100}}
    params["sts_regressor"]["bias"] -= head_output(data.split("dev")).mean()
    given, swapped = head_output(data.split("dev")), head_output(data.split("dev", swapped=True))
    expected = 5 / (1 + np.exp(-(given + swapped) / 2))
    assert np.abs(5 / (1 + np.exp(-given)) - expected).max() > 1e-3  # the order changes the output
    np.testing.assert_allclose(run.predict(params, "dev")["sts"][rows], expected, rtol=1e-5)


def test_per_task_pooling_gives_each_task_the_outputs_of_its_pooling(tiny_encoder, small_data):
    config = tiny_config(tiny_encoder, small_data, pooling="mean,sst=cls,sts=max", dropout=0.0)
    assert [config.pooling_of(t) for t in ("sst", "para", "sts")] == ["cls", "mean", "max"]
    assert train_config.parse_args(["--pooling", "sst=max"])[0].pooling_of("para") == "cls"  # the default stays cls
    run = Run(config, tiny_encoder)
    params = run.init_params()
    batches = next(run.train_steps(0))[0]
    for task, pooling in (("sst", "cls"), ("para", "mean"), ("sts", "max")):
        alone = run.model.clone(config=dataclasses.replace(config, pooling=pooling))
        got, want = (np.asarray(model.apply({"params": params}, batches[task], task)) for model in (run.model, alone))
        np.testing.assert_array_equal(got, want)
        # ...and not those of another pooling: the choice reaches the task.
        other = run.model.clone(config=dataclasses.replace(config, pooling="mean" if pooling != "mean" else "cls"))
        assert np.abs(np.asarray(other.apply({"params": params}, batches[task], task)) - want).max() > 1e-4


def test_encoder_chunks_give_the_same_outputs_and_gradients(tiny_encoder, small_data):
    """Encoding a batch's rows in groups (3 here, of unequal sizes) changes only how XLA schedules the work."""
    from train.losses import task_loss

    assert train_config.parse_args(["--encoder-chunks", "3"])[0].encoder_chunks == 3
    config = tiny_config(tiny_encoder, small_data, pooling="mean", regression_head="cosine", cos_feature="para")
    run = Run(config, tiny_encoder)
    params = run.init_params()
    batch = next(run.train_steps(0))[0]["para"]  # bi-encoded pairs: sentences a, then b, in one batch

    def outputs_and_gradients(model):
        def loss(p):
            outputs = model.apply({"params": p}, batch, "para")
            return task_loss(outputs, batch, "para", config), outputs
        (_, outputs), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        return outputs, jax.tree_util.tree_leaves(grads)

    assert run.model.encoder_chunks == 1
    want_outputs, want_grads = outputs_and_gradients(run.model)
    got_outputs, got_grads = outputs_and_gradients(run.model.clone(encoder_chunks=3))
    np.testing.assert_allclose(got_outputs, want_outputs, rtol=1e-6, atol=1e-6)
    # A weight gradient sums over the rows, per chunk and then the chunks: float32 rounding of the gradients'
    # scale (a bias whose gradient is zero in exact arithmetic, such as the key's, holds rounding noise only).
    scale = max(float(np.abs(want).max()) for want in want_grads)
    for got, want in zip(got_grads, want_grads):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("overrides", [dict(pooling="max", shared_layer=True),
                                       dict(pooling="mean", regression_head="cosine", cos_feature="para"),
                                       dict(pair_encoding="para=cross", pooling="mean", regression_head="cosine"),
                                       dict(pooling="cls,para=mean,sts=max", cos_feature="para")])
def test_sentence_level_predictions_match_the_pair_batches(tiny_encoder, small_data, overrides):
    """The Predictor encodes a bi-encoded pair's sentences apart, each padded to its own length; the
    predictions must be those of the model on whole pair batches."""
    from data import length_sorted_batches
    from train.losses import predictions

    config = tiny_config(tiny_encoder, small_data, **overrides)
    run = Run(config, tiny_encoder)
    params = run.init_params()
    for task in ("para", "sts"):
        data = run.data[task]
        encoded = data.split("dev")
        expected = np.zeros(len(encoded))
        for batch in length_sorted_batches(encoded, data.buckets, config.eval_batch_size):
            index = batch.pop("index")
            outputs = run.model.apply({"params": params}, batch, task)
            expected[index[index >= 0]] = np.asarray(predictions(outputs, task, config))[index >= 0]
        got = run.predictor(params, task, encoded, data.buckets)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


UPDATES = []  # the jitted update that finished_run trained with
PREDICTED = []  # (split, parameters) of each Run.predict call of finished_run
EVALUATED = []  # (trained parameters, parameters evaluated) of each epoch of finished_run (--ema 0.5)


@pytest.fixture(scope="module")
def finished_run(tiny_encoder, small_data, tmp_path_factory):
    """A two-epoch run of the cosine-features + PCGrad + mean pooling setup, through the CLI."""
    run_dir = tmp_path_factory.mktemp("runs") / "full"
    argv = ["--preset", "cosfeat-pcgrad-mean", "--init-checkpoint", str(tiny_encoder), "--data-dir", str(small_data),
            "--epochs", "2", "--samples-per-task", "24", "--batch-size", "8", "--eval-batch-size", "32",
            "--max-length", "32", "--num-buckets", "2", "--lr", "1e-3", "--ema", "0.5", "--run-dir", str(run_dir),
            "--quiet"]
    predict, evaluated_params = Run.predict, epochs.evaluated_params

    def recorded_evaluated_params(state, config):
        params = evaluated_params(state, config)
        EVALUATED.append(jax.device_get((state.params, params)))
        return params

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "make_update", lambda *args: UPDATES.append(make_update(*args)) or UPDATES[-1])
        patch.setattr(Run, "predict", lambda self, params, split, *args:
                      PREDICTED.append((split, jax.device_get(params))) or predict(self, params, split, *args))
        patch.setattr(epochs, "evaluated_params", recorded_evaluated_params)
        assert main.main(argv) == 0
    return run_dir


def test_run_writes_every_output(finished_run):
    config = json.loads((finished_run / "config.json").read_text())
    assert config["preset"] == "cosfeat-pcgrad-mean" and config["pcgrad"] and config["cos_feature"] == "para"
    records = read_metrics(finished_run)
    assert [r["epoch"] for r in records] == [0, 1]
    for record in records:
        assert set(record["loss"]) == {"sst", "para", "sts"}
        assert set(record["dev"]) == {"sst", "para", "sts", "overall"}
        assert (0 <= record["pcgrad_conflict_rate"] <= 1
                and set(record["pcgrad_cosine"]) == {"sst-para", "sst-sts", "para-sts"})
        assert record["examples_per_s"] > 0 and record["step_time_s"] > 0
        dev = record["dev"]
        assert dev["overall"] == pytest.approx((dev["sst"] + dev["para"] + (dev["sts"] + 1) / 2) / 3)
    headers = {"sst": "Predicted_Sentiment", "para": "Predicted_Is_Paraphrase", "sts": "Predicted_Similarity"}
    for task, header in headers.items():
        for split in ("dev", "test"):
            lines = (finished_run / "predictions" / f"{task}-{split}-output.csv").read_text().splitlines()
            assert lines[0] == f"id \t {header} "
            assert len(lines) == 1 + SMALL_ROWS
            example_id, prediction = lines[1].split(" , ")
            assert example_id and float(prediction) >= 0
    assert (finished_run / "curves.png").stat().st_size > 1000
    assert (finished_run / "best_encoder" / "params").is_dir()


def test_single_task_cfimdb_run_predicts_dev_only(tiny_encoder, small_data, tmp_path):
    # The shipped CFIMDB data has train and dev files and no test file.
    argv = ["--tasks", "cfimdb", "--init-checkpoint", str(tiny_encoder), "--data-dir", str(small_data), "--epochs", "1",
            "--samples-per-task", "16", "--batch-size", "8", "--eval-batch-size", "32", "--max-length", "32",
            "--num-buckets", "2", "--run-dir", str(tmp_path / "run"), "--quiet"]
    assert main.main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "run" / "predictions").iterdir()) == ["cfimdb-dev-output.csv"]
    assert set(read_metrics(tmp_path / "run")[0]["dev"]) == {"cfimdb", "overall"}


def test_dev_is_predicted_once_per_epoch_and_test_once(finished_run):
    # The best epoch's dev predictions are written when it is scored, not predicted again at the end.
    assert [split for split, _ in PREDICTED] == ["dev", "dev", "test"]


def test_dev_is_scored_and_kept_with_the_moving_average_of_the_parameters(finished_run):
    """--ema: each epoch predicts dev with the average, not the parameters it trains, and keeps it as the best
    checkpoint (test_dev_predictions_reproduce_the_best_metrics re-scores that checkpoint)."""
    assert len(EVALUATED) == 2
    for (split, predicted), (trained, averaged) in zip(PREDICTED, EVALUATED):
        assert split == "dev"
        jax.tree_util.tree_map(np.testing.assert_array_equal, predicted, averaged)
        assert max(float(np.abs(t - a).max()) for t, a in
                   zip(jax.tree_util.tree_leaves(trained), jax.tree_util.tree_leaves(averaged))) > 1e-4


def test_the_update_compiles_once_per_run(finished_run):
    assert len(UPDATES) == 1 and UPDATES[0]._cache_size() == 1


def test_dev_predictions_reproduce_the_best_metrics(finished_run):
    records = read_metrics(finished_run)
    best = max(records, key=lambda r: r["dev"]["overall"])["dev"]
    scores = evaluate_run(finished_run, ("dev",))
    assert scores["dev_overall"] == pytest.approx(best["overall"], abs=1e-6)
    labels = {}
    for line in (DATA_DIR / "ids-sst-dev.csv").read_text(encoding="utf-8").splitlines()[1 : SMALL_ROWS + 1]:
        fields = line.split("\t")
        labels[fields[1]] = int(fields[-1])
    preds = dict(line.rstrip().split(" , ") for line in
                 (finished_run / "predictions" / "sst-dev-output.csv").read_text().splitlines()[1:])
    accuracy = np.mean([int(preds[i]) == labels[i] for i in labels])
    assert accuracy == pytest.approx(best["sst"])


def test_predict_cli(finished_run, capsys):
    assert predict.main(["--checkpoint", str(finished_run), "A gripping film."]) == 0
    out = capsys.readouterr().out
    assert "sst: " in out and "(p: negative 0." in out and "positive 0." in out
    assert predict.main(["--checkpoint", str(finished_run), "How do I learn?", "How can I learn?"]) == 0
    out = capsys.readouterr().out
    assert "para: paraphrase probability 0." in out and "sts: " in out and " on 0-5" in out


def test_evaluate_cli_rewrites_predictions(finished_run, capsys):
    target = finished_run / "predictions" / "sts-test-output.csv"
    original = target.read_text()
    target.unlink()
    assert evaluate.main(["--checkpoint", str(finished_run)]) == 0
    assert "dev_overall=" in capsys.readouterr().out
    assert target.read_text() == original


def test_interrupted_run_resumes_to_the_same_numbers(finished_run, tiny_encoder, small_data, tmp_path, monkeypatch,
                                                     capsys):
    saved = TrainConfig.from_json(finished_run / "config.json")
    run_dir = tmp_path / "resumed"
    monkeypatch.setattr(loop, "_InterruptFlag", lambda: InterruptAfter(steps=5))
    assert loop.train(saved, run_dir, quiet=True) == {}
    assert "interrupted: checkpoint saved" in capsys.readouterr().out
    monkeypatch.undo()
    assert main.main(["--resume", str(run_dir), "--quiet"]) == 0
    assert read_metrics(run_dir) == [
        {**r, "step_time_s": r2["step_time_s"], "examples_per_s": r2["examples_per_s"]}
        for r, r2 in zip(read_metrics(finished_run), read_metrics(run_dir))
    ] or pytest.fail("metrics differ")
    ours, reference = (jax.device_get(load_run(d)[1]) for d in (run_dir, finished_run))
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(reference)):
        np.testing.assert_array_equal(a, b)


def test_resume_refuses_contradicting_flags(finished_run, tmp_path, capsys):
    assert main.main(["--resume", str(finished_run), "--lr", "0.5"]) == 1
    assert "--lr 0.5 (the run has 0.001)" in capsys.readouterr().err
    assert main.main(["--resume", str(finished_run), "--epochs", "1"]) == 1
    assert "--epochs 1 (the run has 2)" in capsys.readouterr().err
    saved = json.loads((finished_run / "config.json").read_text())
    spanning = (({"sampling": "annealed"}, "annealed sampling"), ({"lr_schedule": "linear"}, "--lr-schedule linear"))
    for setting, named in spanning:
        (tmp_path / "config.json").write_text(json.dumps(saved | setting))
        assert main.main(["--resume", str(tmp_path), "--epochs", "3"]) == 1
        assert f"a run with {named} cannot be extended" in capsys.readouterr().err


def test_layer_lr_decay_scales_each_layer_update_of_the_model(tiny_encoder, small_data):
    """The first update with --layer-lr-decay 0.5 is the plain one times 0.5 per layer down from the heads, on the
    model's own parameter names: the pooler and the heads keep their rate. (train/optim.py's tests check the
    decayed rates, weight decay included, against the float64 reference.)"""
    from train.step import init_state, make_optimizer

    plain = tiny_config(tiny_encoder, small_data)
    params = Run(plain, tiny_encoder).init_params()
    grads = jax.tree.map(lambda p: jax.numpy.full_like(p, 0.1), params)
    updates = []
    for config in (plain, dataclasses.replace(plain, layer_lr_decay=0.5)):
        tx = make_optimizer(config, total_steps=1)
        updates.append(jax.device_get(tx.update(grads, init_state(params, tx).opt_state, params)[0]))
    layers = len(params["bert"]["encoder"])
    factors = {"embeddings": 0.5 ** (layers + 1), "pooler": 1.0,
               **{f"layer_{i}": 0.5 ** (layers - i) for i in range(layers)}}
    leaves = zip(jax.tree_util.tree_leaves_with_path(updates[1]), jax.tree_util.tree_leaves(updates[0]))
    for (path, update), plain_update in leaves:
        names = [k.key for k in path]
        part = names[2] if names[:2] == ["bert", "encoder"] else names[1]
        factor = factors[part] if names[0] == "bert" else 1.0
        np.testing.assert_allclose(update, factor * plain_update, rtol=1e-6, err_msg="/".join(names))
    assert layers >= 2 and np.abs(plain_update).max() > 0


def test_reinit_layers_draws_the_top_layers_afresh_and_keeps_the_rest(tiny_encoder, small_data, tmp_path):
    """--reinit-layers 1 replaces the top layer of a 2-layer encoder by BERT's initialisation, seeded; the lower
    layer, the embeddings, the pooler and the heads are those of a run without it."""
    from bert_flax import from_pretrained, load_config, save_pretrained

    # The tiny encoder with every tensor moved off its initial value (biases 0, LayerNorm 1), so a kept bias or
    # LayerNorm differs from a re-initialised one.
    _, params = from_pretrained(tiny_encoder)
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(lambda x: np.asarray(x) + rng.normal(0.0, 0.1, x.shape).astype(np.float32), params)
    encoder = save_pretrained(tmp_path / "encoder", load_config(tiny_encoder), params, tiny_encoder / "vocab.txt",
                              lowercase=True)
    plain = tiny_config(encoder, small_data)
    config = dataclasses.replace(plain, reinit_layers=1)
    configs = (config, config, plain, dataclasses.replace(config, seed=plain.seed + 1))
    fresh, again, kept, other_seed = (jax.device_get(Run(c, encoder).init_params()) for c in configs)

    def check(path, value, value_again, kept_value, other_seed_value):
        names = [k.key for k in path]
        name = "/".join(names)
        np.testing.assert_array_equal(value, value_again, name)
        if names[:3] != ["bert", "encoder", "layer_1"]:
            np.testing.assert_array_equal(value, kept_value, name)
        elif names[-1] == "kernel":
            assert not np.allclose(value, kept_value) and not np.allclose(value, other_seed_value), name
            assert abs(value.std() - 0.02) < 0.003 and abs(value.mean()) < 0.003, name
        else:
            np.testing.assert_array_equal(value, np.ones_like(value) if names[-1] == "scale" else 0 * value, name)
            assert not np.allclose(value, kept_value), name

    jax.tree_util.tree_map_with_path(check, fresh, again, kept, other_seed)
    with pytest.raises(RunError, match="--reinit-layers 3: the encoder in .* has 2 layers"):
        Run(dataclasses.replace(plain, reinit_layers=3), encoder)


def test_zero_heads_start_at_zero_and_leave_the_encoder_still_at_the_first_step(tiny_encoder, small_data):
    """--zero-heads: every head starts at zero and the rest as without it; on the first batch of each task the
    encoder's gradient is exactly zero (it flows back through the zero head) and the head's is not."""
    from train.model import head_name
    from train.step import make_grad_fns

    plain = tiny_config(tiny_encoder, small_data)
    config = dataclasses.replace(plain, zero_heads=True)
    run, plain_run = Run(config, tiny_encoder), Run(plain, tiny_encoder)
    initial = run.init_params()
    params, plain_params = jax.device_get(initial), jax.device_get(plain_run.init_params())
    heads = [name for name in params if name != "bert"]
    assert sorted(heads) == ["para_classifier", "sst_classifier", "sts_regressor"]
    for name in heads:
        leaves, plain_leaves = (jax.tree_util.tree_leaves(p[name]) for p in (params, plain_params))
        for leaf, plain_leaf in zip(leaves, plain_leaves):
            assert not np.any(leaf) and leaf.shape == plain_leaf.shape, name
        assert np.any(plain_params[name]["kernel"]), name
    jax.tree_util.tree_map(np.testing.assert_array_equal, params["bert"], plain_params["bert"])
    batches, key = next(run.train_steps(0))[0], jax.random.key(0, impl="rbg")
    for task, grad_fn in make_grad_fns(run.model, config).items():
        _, grads = grad_fn(initial, batches[task], key, 0)
        assert not any(np.any(g) for g in jax.tree_util.tree_leaves(grads["bert"])), task
        assert np.abs(np.asarray(grads[head_name(config.spec(task))]["kernel"])).max() > 1e-4, task


def test_linear_schedule_decays_to_zero_at_the_last_step():
    from train.step import make_optimizer

    tx = make_optimizer(TrainConfig(lr=1e-3, lr_schedule="linear"), total_steps=4)
    params = {"w": jax.numpy.ones(3)}
    state = tx.init(params)
    steps = []
    for _ in range(5):
        # A constant gradient makes the bias-corrected Adam direction 1 (to eps / 3.2): each update is -lr_t.
        updates, state = tx.update({"w": jax.numpy.full(3, 100.0)}, state, params)
        steps.append(float(updates["w"][0]))
    np.testing.assert_allclose(steps, [-1e-3, -7.5e-4, -5e-4, -2.5e-4, 0.0], rtol=1e-5, atol=1e-12)


TWO_DEVICE_SCRIPT = """
import json, sys, jax
from train.config import TrainConfig
from train.run import Run
from train.step import init_state, make_grad_fns, make_optimizer
config = TrainConfig(**json.loads(sys.argv[1]))
run = Run(config, config.init_checkpoint)
state = init_state(run.init_params(), make_optimizer(config, total_steps=1))
batches, _ = next(run.train_steps(0))
grad_fns = make_grad_fns(run.model, config)
print(json.dumps({"devices": jax.device_count(),
                  "losses": [float(grad_fns[t](state.params, batches[t], jax.random.key(0), state.step)[0])
                             for t in config.tasks]}))
"""


def run_script_on_devices(count, config) -> subprocess.CompletedProcess:
    """TWO_DEVICE_SCRIPT in a fresh process with `count` forced CPU devices."""
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
    return subprocess.run([sys.executable, "-c", TWO_DEVICE_SCRIPT, json.dumps(values)], env=devices_env(count),
                          capture_output=True, text=True, cwd=REPO)


def run_on_devices(count, config):
    result = run_script_on_devices(count, config)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_two_devices_give_the_same_loss_as_one(tiny_encoder, small_data):
    config = tiny_config(tiny_encoder, small_data, dropout=0.0, pcgrad=True, tasks=("sst", "para"))
    one, two = run_on_devices(1, config), run_on_devices(2, config)
    assert (one["devices"], two["devices"]) == (1, 2)
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)


def test_batch_not_divisible_by_devices_is_refused(tiny_encoder, small_data):
    result = run_script_on_devices(2, tiny_config(tiny_encoder, small_data, batch_size=7))
    assert result.returncode != 0
    assert "--batch-size 7 and --eval-batch-size 32 must divide by the device count 2" in result.stderr


def test_compilation_cache_keeps_programs_that_compile_quickly(tmp_path):
    """enable_compilation_cache writes every compiled program to disk, even one that compiles in milliseconds (a
    fresh process: JAX sets up its cache once per process)."""
    code = ("import sys, jax\nfrom pathlib import Path\nfrom train.run import enable_compilation_cache\n"
            "enable_compilation_cache(Path(sys.argv[1]))\n"
            "jax.jit(lambda x: x * 3 + 1)(jax.numpy.arange(5.0)).block_until_ready()\n")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "cache")], env=devices_env(1),
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert list((tmp_path / "cache").iterdir())


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallopt"), reason="glibc's malloc only")
def test_freed_memory_is_reused_without_page_faults():
    """After keep_freed_memory a freed 48 MiB block (over glibc's 32 MiB mmap ceiling) comes back from the heap, in
    the main thread and in a new thread alike: filling it again takes no page faults, where by default each fill
    faults once per 4 KiB page (a thread's block: its own arena, unmapped once all of it is free)."""
    code = ("import ctypes, resource, threading\nfrom train.run import keep_freed_memory\n"
            "libc = ctypes.CDLL(None)\nlibc.malloc.restype = ctypes.c_void_p\n"
            "libc.malloc.argtypes = [ctypes.c_size_t]\nlibc.free.argtypes = [ctypes.c_void_p]\n"
            "def faults_of_fills(fills=2):\n"
            "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "    for _ in range(fills):\n"
            "        block = libc.malloc(48 << 20)\n        ctypes.memset(block, 1, 48 << 20)\n"
            "        libc.free(block)\n"
            "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before\n"
            "def in_a_thread(fills=2):\n"
            "    out = []\n    thread = threading.Thread(target=lambda: out.append(faults_of_fills(fills)))\n"
            "    thread.start()\n    thread.join()\n    return out[0]\n"
            "by_default = faults_of_fills(1)\nkeep_freed_memory()\n"
            "faults_of_fills(1)\n"
            "print(by_default, faults_of_fills(), in_a_thread() + in_a_thread())\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    by_default, main_thread, threads = map(int, result.stdout.split())
    if by_default < 1000:
        pytest.skip(f"{by_default} page faults by default: this kernel maps such blocks with huge pages")
    assert main_thread < 100 and threads < 100, (by_default, main_thread, threads)


def test_micro_batches_split_every_row_once_and_bi_pairs_alike():
    """Micro-batch k of a batch of n x B rows holds rows k, k + n, ...; the a and b sentences of a bi-encoded
    pair (rows i and n x B + i of the token arrays) stay together."""
    from train.step import micro_batches

    rows, n = 8, 2
    batch = {"weights": np.arange(rows, dtype=np.float32), "teacher": np.arange(rows * 3).reshape(rows, 3),
             "input_ids": np.concatenate([np.arange(rows), 100 + np.arange(rows)])[:, None] * np.ones((1, 4), int)}
    micro = jax.device_get(micro_batches(batch, n))
    for k in range(n):
        np.testing.assert_array_equal(micro["weights"][k], np.arange(k, rows, n))
        np.testing.assert_array_equal(micro["teacher"][k], batch["teacher"][k::n])
        np.testing.assert_array_equal(micro["input_ids"][k][:, 0], np.concatenate([np.arange(k, rows, n),
                                                                                  100 + np.arange(k, rows, n)]))


@pytest.mark.parametrize("pcgrad", [False, True], ids=["sum", "pcgrad"])
def test_grad_accumulation_makes_the_update_of_the_larger_batch(tiny_encoder, small_data, pcgrad):
    """--grad-accumulation 2 with --batch-size 4 on a batch of 8 rows gives each task the loss and gradient of
    --batch-size 8 on the same rows, and so the same update (PCGrad or sum, clipping, then AdamW once). The
    micro-batches hold 4 and 1 real rows (the others are padding): a plain mean of their gradients would differ.
    Dropout is off: the two ways draw different masks."""
    import optax

    from train.model import MultitaskBert
    from train.optim import ScaleByMinbertAdamState
    from train.step import init_state, make_grad_fns, make_optimizer, train_step

    whole = tiny_config(tiny_encoder, small_data, tasks=("sst", "para"), dropout=0.0, pcgrad=pcgrad,
                        max_grad_norm=0.05, batch_size=8)
    accumulated = dataclasses.replace(whole, batch_size=4, grad_accumulation=2)
    run = Run(accumulated, tiny_encoder)
    bert_config = dataclasses.replace(run.bert_config, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    host = next(run.stream().epoch(0))
    assert all(len(b["weights"]) == 8 for b in host.values())  # the stream's batches are 2 x 4 rows
    for b in host.values():
        b["weights"] = np.array([1, 1, 1, 0, 1, 0, 1, 0], np.float32)  # rows 0, 2, 4, 6 and 1 of micro-batch 0, 1
    batches = shard_batch(host, run.mesh)
    key, results = jax.random.key(0, impl="rbg"), []
    for config in (whole, accumulated):
        params, model = run.init_params(), MultitaskBert(bert_config, config)  # fresh: the update donates them
        grad_fns, tx = make_grad_fns(model, config), make_optimizer(config, total_steps=1)
        grads = {t: grad_fns[t](params, batches[t], key, 0) for t in config.tasks}
        state, _, _ = train_step(init_state(params, tx), batches, key, grad_fns, make_update(config, tx))
        results.append(jax.device_get((grads, state.opt_state)))
    (want_grads, want_opt), (got_grads, got_opt) = results
    for task in whole.tasks:
        np.testing.assert_allclose(got_grads[task][0], want_grads[task][0], rtol=1e-6)
    # Float32 rounding relative to each tree's scale (the sums run in another order).
    for want, got in ((want_grads, got_grads), (want_opt, got_opt)):
        leaves = jax.tree_util.tree_leaves(want)
        scale = max(float(np.abs(leaf).max()) for leaf in leaves)
        for w, g in zip(leaves, jax.tree_util.tree_leaves(got)):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * scale)
    # The combined gradient was clipped: AdamW's first moment, 0.1 of it after one update, has 0.1 of the norm.
    (adam,) = [s for s in jax.tree_util.tree_leaves(want_opt, is_leaf=lambda s: isinstance(s, ScaleByMinbertAdamState))
               if isinstance(s, ScaleByMinbertAdamState)]
    assert float(optax.tree.norm(adam.mu)) == pytest.approx(0.1 * 0.05, rel=1e-4)


# Two epochs of three steps: --grad-accumulation 2 of --batch-size 4 makes the stream's batches 8 rows.
OPTIONS = ["--grad-accumulation", "2", "--batch-size", "4", "--eval-every-steps", "2", "--eval-max-examples", "10"]
OPTIONS_PREDICTED = []  # (split, {task: number of predictions}) of each Run.predict call of options_run
OPTIONS_RESULT = {}  # the dev metrics that options_run's training returned


def options_argv(tiny_encoder, small_data, run_dir, *more) -> list[str]:
    return ["--tasks", "sst,sts", "--init-checkpoint", str(tiny_encoder), "--data-dir", str(small_data), "--epochs",
            "2", "--samples-per-task", "24", "--eval-batch-size", "32", "--max-length", "32", "--num-buckets", "1",
            "--lr", "1e-3", "--run-dir", str(run_dir), "--quiet", *OPTIONS, *more]


@pytest.fixture(scope="module")
def options_run(tiny_encoder, small_data, tmp_path_factory):
    """A run with the options of OPTIONS, from its command line."""
    run_dir = tmp_path_factory.mktemp("runs") / "options"
    config, _ = train_config.parse_args(options_argv(tiny_encoder, small_data, run_dir))
    predict = Run.predict

    def recorded_predict(self, params, split, *args):
        preds = predict(self, params, split, *args)
        OPTIONS_PREDICTED.append((split, {task: len(p) for task, p in preds.items()}))
        return preds

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Run, "predict", recorded_predict)
        OPTIONS_RESULT.update(loop.train(config, run_dir, quiet=True))
    return run_dir


def test_eval_every_steps_evaluates_within_epochs_and_keeps_the_best_of_all(options_run):
    records = read_metrics(options_run)
    # Steps 2 and 4 within the epochs, 3 and 6 at their ends (step 6 is both: evaluated once).
    assert [(r["epoch"], r["step"], r["epoch_progress"]) for r in records] == [
        (0, 2, pytest.approx(2 / 3)), (0, 3, 1), (1, 4, pytest.approx(4 / 3)), (1, 6, 2)]
    assert all(set(r["loss"]) == {"sst", "sts"} and set(r["dev"]) == {"sst", "sts", "overall"} for r in records)
    best = max(records, key=lambda r: r["dev"]["overall"])
    _, meta = load_run_meta(options_run)
    assert (meta["step"], meta["dev"]) == (best["step"], best["dev"])


def load_run_meta(run_dir):
    from train.run import best_params

    run, _ = load_run(run_dir)
    return best_params(run_dir, run)


def test_grad_accumulation_runs_the_steps_of_the_larger_batches(options_run):
    """--grad-accumulation 2 --batch-size 4: three steps of 8 rows per task an epoch, not six of 4."""
    ends = [r for r in read_metrics(options_run) if "examples_per_s" in r]
    assert [(r["steps"], r["examples"]) for r in ends] == [(3, 48), (3, 48)]


def test_eval_max_examples_scores_the_first_examples_and_the_best_on_the_whole_dev_set(options_run, tmp_path,
                                                                                      capsys):
    """Dev is predicted on 10 examples per task at each of the 4 evaluations; at the end, the best checkpoint on
    all of dev (its scores the run's result), and test once."""
    assert OPTIONS_PREDICTED == [("dev", {"sst": 10, "sts": 10})] * 4 + [
        ("dev", {"sst": SMALL_ROWS, "sts": SMALL_ROWS}), ("test", {"sst": SMALL_ROWS, "sts": SMALL_ROWS})]
    for task in ("sst", "sts"):
        lines = (options_run / "predictions" / f"{task}-dev-output.csv").read_text().splitlines()
        assert len(lines) == 1 + SMALL_ROWS
    whole = {k.removeprefix("dev_"): v for k, v in evaluate_run(options_run, ("dev",)).items()}
    assert OPTIONS_RESULT == whole
    assert max(r["dev"]["overall"] for r in read_metrics(options_run)) != whole["overall"]
    # Its outputs redone (resumed when finished), the run's result is still that of the whole dev set.
    capsys.readouterr()
    assert main.main(["--resume", str(shutil.copytree(options_run, tmp_path / "run")), "--quiet"]) == 0
    assert f"best dev: {' '.join(f'{k}={v:.4f}' for k, v in whole.items())}" in capsys.readouterr().out.splitlines()


def test_a_run_killed_between_an_evaluation_and_its_checkpoint_resumes_to_the_same_outcome(
        options_run, tiny_encoder, small_data, tmp_path, monkeypatch):
    """Killed (in-process) after the step-4 evaluation wrote its metrics line and maybe its best checkpoint, before
    the latest checkpoint that follows: the resumed run drops that line, repeats the evaluation, and ends as the
    run never stopped."""
    class Killed(BaseException):
        pass

    save = epochs.save_checkpoint

    def killed_at_step_4(manager, step, tree, meta):
        if "latest" in str(manager.directory) and step == 4:
            raise Killed
        save(manager, step, tree, meta)

    run_dir = tmp_path / "run"
    monkeypatch.setattr(epochs, "save_checkpoint", killed_at_step_4)
    with pytest.raises(Killed):
        main.main(options_argv(tiny_encoder, small_data, run_dir))
    monkeypatch.undo()
    assert [r["step"] for r in read_metrics(run_dir)] == [2, 3, 4]
    assert main.main(["--resume", str(run_dir), "--quiet"]) == 0

    def timeless(records):
        return [{k: v for k, v in r.items() if k not in ("step_time_s", "examples_per_s")} for r in records]

    assert timeless(read_metrics(run_dir)) == timeless(read_metrics(options_run))
    ours, reference = (jax.device_get(load_run(d)[1]) for d in (run_dir, options_run))
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(reference)):
        np.testing.assert_array_equal(a, b)
    assert {p.name: p.read_bytes() for p in (run_dir / "predictions").iterdir()} == {
        p.name: p.read_bytes() for p in (options_run / "predictions").iterdir()}


def test_early_stopping_ends_the_run_after_patience_evaluations_without_improvement(
        tiny_encoder, small_data, tmp_path, monkeypatch, capsys):
    """Scripted overall scores 0.5, 0.6, 0.55, 0.58 at steps 1 to 4 with --early-stopping-patience 2: the run stops
    after the fourth evaluation (within epoch 1 of 3), then finishes from the best (the second) as usual. Resumed,
    it says it had finished and trains no further."""
    scores, score = itertools.chain([0.5, 0.6, 0.55, 0.58], itertools.repeat(0.9)), Run.score

    def scripted(self, split, preds):
        metrics = score(self, split, preds)
        return {**metrics, "overall": next(scores)} if split == "dev" else metrics

    monkeypatch.setattr(Run, "score", scripted)
    run_dir = tmp_path / "run"
    argv = ["--tasks", "sst", "--init-checkpoint", str(tiny_encoder), "--data-dir", str(small_data), "--epochs", "3",
            "--samples-per-task", "24", "--batch-size", "8", "--eval-batch-size", "32", "--max-length", "32",
            "--num-buckets", "1", "--eval-every-steps", "1", "--early-stopping-patience", "2", "--run-dir",
            str(run_dir), "--quiet"]
    assert main.main(argv) == 0
    out = capsys.readouterr().out
    assert [(r["step"], r["dev"]["overall"]) for r in read_metrics(run_dir)] == [(1, 0.5), (2, 0.6), (3, 0.55),
                                                                                 (4, 0.58)]
    assert ("stopping early: 2 evaluations in a row without a better overall score than 0.6000 (epoch 0 step 2)"
            in out.splitlines())
    assert "best dev: sst=" in out
    _, meta = load_run_meta(run_dir)
    assert (meta["step"], meta["dev"]["overall"]) == (2, 0.6)
    assert sorted(p.name for p in (run_dir / "predictions").iterdir()) == ["sst-dev-output.csv", "sst-test-output.csv"]
    assert (run_dir / "curves.png").exists()
    (run_dir / "curves.png").unlink()
    assert main.main(["--resume", str(run_dir), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert (f"{run_dir} had finished (stopped early at step 4); redoing its final outputs from the best checkpoint: "
            "predictions, best_encoder/ and curves.png") in out.splitlines()
    assert len(read_metrics(run_dir)) == 4 and (run_dir / "curves.png").exists()


def test_resuming_a_finished_run_says_so_and_redoes_its_outputs(finished_run, tmp_path, capsys):
    run_dir = shutil.copytree(finished_run, tmp_path / "run")
    (run_dir / "curves.png").unlink()
    (run_dir / "predictions" / "sts-test-output.csv").unlink()
    assert main.main(["--resume", str(run_dir), "--quiet"]) == 0
    assert (f"{run_dir} had finished (trained its 2 epochs); redoing its final outputs from the best checkpoint: "
            "predictions, best_encoder/ and curves.png") in capsys.readouterr().out.splitlines()
    assert read_metrics(run_dir) == read_metrics(finished_run)
    assert (run_dir / "curves.png").exists()
    assert ((run_dir / "predictions" / "sts-test-output.csv").read_bytes()
            == (finished_run / "predictions" / "sts-test-output.csv").read_bytes())


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self):
        return True


@pytest.mark.parametrize("case", ["terminal", "terminal --quiet", "log file"])
def test_evaluation_shows_a_progress_bar_per_task_and_split_or_plain_lines(finished_run, case, capsys, monkeypatch):
    """train.evaluate draws a bar per task and split on a terminal; with --quiet, or when stderr is not a terminal
    (a log file), a plain line each instead, and no bar."""
    if case.startswith("terminal"):
        monkeypatch.setattr(sys, "stderr", _Terminal())
    argv = ["--checkpoint", str(finished_run)] + (["--quiet"] if case.endswith("--quiet") else [])
    assert evaluate.main(argv) == 0
    out, err = capsys.readouterr()
    err = sys.stderr.getvalue() if case.startswith("terminal") else err
    plain_lines = [line for line in out.splitlines() if re.fullmatch(r"(dev|test) \w+: 96 examples in \d+\.\d s", line)]
    if case == "terminal":
        assert not plain_lines
        for split in ("dev", "test"):
            for task in ("sst", "para", "sts"):
                assert re.search(rf"{split} {task}: +\d+%\|", err), err
    else:
        assert [line.split(":")[0] for line in plain_lines] == [f"{split} {task}" for split in ("dev", "test")
                                                                for task in ("sst", "para", "sts")]
        assert "100%" not in err and "\x1b" not in err


def test_a_checkpoint_from_before_evaluations_within_epochs_counts_one_per_finished_epoch():
    """Resuming a run whose latest checkpoint has no `evaluations` keeps its metrics.jsonl lines, one per epoch."""
    from train.progress import Progress

    saved = dataclasses.asdict(Progress(epoch=2, next_step=1, global_step=7))
    del saved["evaluations"]
    assert Progress.restored(saved) == Progress(epoch=2, next_step=1, global_step=7, evaluations=2)
    assert Progress.restored({**saved, "evaluations": 5}).evaluations == 5
