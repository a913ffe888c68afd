"""Distillation from teacher files: the losses against float64 NumPy, the annealed gold share per step, teacher
files made from runs and refused when they do not fit, a killed student that resumes to the same numbers, and
cross-fitted teachers (runs that each hold out a fold of the rows they then predict)."""

import dataclasses
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data import input_pipeline
from data.tasks import DataError
from data.teachers import read_teacher, write_teacher
from tests.helpers import InterruptAfter, cosent_float64, tiny_config
from train import cli, loop, main, teach
from train.config import ConfigError
from train.losses import distillation_loss, gold_share
from train.run import Run, RunError, load_run
from train.step import make_grad_fns


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("regression_target,ranking_loss", [("scaled", 0.0), ("binary", 0.0), ("scaled", 0.2)])
def test_distillation_losses_equal_float64_statements(tiny_encoder, small_data, regression_target, ranking_loss):
    config = tiny_config(tiny_encoder, small_data, tasks=("sst", "para", "sts"), regression_target=regression_target,
                         ranking_loss=ranking_loss)
    rng = np.random.default_rng(0)
    weights = np.array([1, 1, 0, 1, 1, 0], np.float32)
    # sst: cross-entropy to the teacher's distribution over the real rows.
    logits, probs = rng.normal(size=(6, 5)), rng.dirichlet(np.ones(5), 6)
    expected = (-(probs * _log_softmax(logits)).sum(-1) * weights).sum() / weights.sum()
    got = distillation_loss(jnp.asarray(logits, jnp.float32), {"teacher": jnp.asarray(probs, jnp.float32),
                                                               "weights": weights}, "sst", config)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # para: binary cross-entropy of the one logit to the teacher's probability of class 1.
    logit, p = rng.normal(size=6), rng.uniform(size=6)
    expected = ((np.logaddexp(0, logit) - p * logit) * weights).sum() / weights.sum()
    got = distillation_loss(jnp.asarray(logit, jnp.float32), {"teacher": jnp.asarray(np.stack([1 - p, p], -1),
                            jnp.float32), "weights": weights}, "para", config)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # sts (linear head): the task's own loss with the teacher's 0-5 score as the label (with --ranking-loss, CoSENT
    # ranks the batch by the teacher's scores).
    out, score = rng.normal(size=6), rng.uniform(0, 5, size=6)
    if regression_target == "scaled":
        per_example = (out - score / 5) ** 2
    else:
        target = (score > 2).astype(np.float64)
        per_example = np.logaddexp(0, out) - target * out
    expected = (per_example * weights).sum() / weights.sum()
    if ranking_loss:
        expected += ranking_loss * cosent_float64(out, score, weights)
    got = distillation_loss(jnp.asarray(out, jnp.float32), {"teacher": jnp.asarray(score, jnp.float32),
                                                            "weights": weights}, "sts", config)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_teacher_annealing_gold_share_is_exact_at_every_step(tiny_encoder, small_data):
    annealed = tiny_config(tiny_encoder, small_data, teacher_annealing=True)
    total = 7
    for step in range(total):
        assert float(gold_share(annealed, jnp.asarray(step), total)) == pytest.approx(step / (total - 1), abs=1e-7)
    assert float(gold_share(annealed, jnp.asarray(0), total)) == 0.0
    assert float(gold_share(annealed, jnp.asarray(total - 1), total)) == 1.0
    fixed = tiny_config(tiny_encoder, small_data, teacher_weight=0.3)
    assert float(gold_share(fixed, jnp.asarray(5), total)) == pytest.approx(0.7)


def test_objective_mixes_gold_and_distillation_by_the_share(tiny_encoder, small_data):
    """The gradient with teacher weight w is (1 - w) times the gold-only gradient plus w times the
    distillation-only one (same batch and dropout), and the logged loss stays the gold loss."""
    base = tiny_config(tiny_encoder, small_data, tasks=("sst",))
    run = Run(base, tiny_encoder)
    params = run.init_params()
    batch = next(run.train_steps(0))[0]["sst"]
    batch = {**batch, "teacher": jnp.asarray(np.random.default_rng(1).dirichlet(np.ones(5), len(batch["weights"])),
                                             jnp.float32)}
    key = jax.random.key(0, impl="rbg")

    def grads(weight):
        grad_fn = make_grad_fns(run.model, dataclasses.replace(base, teacher_weight=weight))["sst"]
        loss, g = grad_fn(params, batch, key, 0)
        return float(loss), jax.device_get(g)

    (gold_loss, gold), (_, distilled), (mixed_loss, mixed) = grads(0.0), grads(1.0), grads(0.25)
    assert mixed_loss == gold_loss
    for a, b, m in zip(*(jax.tree_util.tree_leaves(t) for t in (gold, distilled, mixed))):
        np.testing.assert_allclose(m, 0.75 * a + 0.25 * b, rtol=1e-4, atol=1e-6)
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree_util.tree_leaves(gold),
                                                     jax.tree_util.tree_leaves(distilled)))


@pytest.fixture(scope="module")
def teacher_run(tiny_encoder, small_data, tmp_path_factory):
    """A finished sst+sts run to teach from."""
    run_dir = tmp_path_factory.mktemp("teacher") / "run"
    loop.train(tiny_config(tiny_encoder, small_data, tasks=("sst", "sts"), epochs=1), run_dir, quiet=True)
    return run_dir


def test_teacher_files_from_runs_and_an_ensemble(teacher_run, tmp_path):
    single = teach.make_teacher("sst", [teacher_run], tmp_path / "sst.npz")
    assert single.shape == (96, 5) and np.allclose(single.sum(-1), 1, atol=1e-5)
    ensemble = teach.make_teacher("sts", [teacher_run, teacher_run], tmp_path / "sts.npz")
    run, params = load_run(teacher_run)
    alone = teach.teacher_targets(run, params, "sts")
    np.testing.assert_allclose(ensemble, alone, rtol=1e-6)  # the mean of two equal runs
    assert ensemble.shape == (96,) and ensemble.min() >= 0 and ensemble.max() <= 5
    ids = run.data["sts"].split("train").ids
    np.testing.assert_array_equal(read_teacher(tmp_path / "sts.npz", run.config.spec("sts"), ids), ensemble)
    assert teach.main(["--task", "para", "--out", str(tmp_path / "p.npz"), str(teacher_run)]) == 1


def test_teacher_files_that_do_not_fit_are_refused_by_name(teacher_run, tmp_path, tiny_encoder, small_data, capsys):
    run, _ = load_run(teacher_run)
    spec, ids = run.config.spec("sst"), run.data["sst"].split("train").ids
    good = np.full((len(ids), 5), 0.2, np.float32)
    cases = {
        "count.npz": (ids[:-1], good[:-1], "training rows need (96, 5)"),
        "ids.npz": (ids[::-1], good, "made for other training rows"),
        "shape.npz": (ids, good[:, :3], "targets of shape (96, 3)"),
    }
    for name, (file_ids, targets, message) in cases.items():
        write_teacher(tmp_path / name, spec, file_ids, targets, ["x"])
        with pytest.raises(DataError, match=re.escape(message)):
            read_teacher(tmp_path / name, spec, ids)
    write_teacher(tmp_path / "sts.npz", run.config.spec("sts"), run.data["sts"].split("train").ids,
                  np.ones(96), ["x"])
    with pytest.raises(DataError, match="made for task sts"):
        read_teacher(tmp_path / "sts.npz", spec, ids)
    argv = ["--tasks", "sst", "--teacher", f"sst={tmp_path / 'ids.npz'}", "--epochs", "1", "--samples-per-task", "8",
            "--batch-size", "8", "--run-dir", str(tmp_path / "R"), "--init-checkpoint", str(tiny_encoder),
            "--data-dir", str(small_data), "--max-length", "32", "--quiet"]
    assert main.main(argv) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'ids.npz'}: made for other training rows" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "R").exists()  # a failed start leaves nothing behind


def test_a_killed_student_resumes_to_the_same_numbers(teacher_run, tiny_encoder, small_data, tmp_path, monkeypatch):
    for task in ("sst", "sts"):
        teach.make_teacher(task, [teacher_run], tmp_path / f"{task}.npz")
    student = tiny_config(tiny_encoder, small_data, tasks=("sst", "sts"), teacher_annealing=True, pcgrad=True, ema=0.5,
                   teachers=f"sst={tmp_path / 'sst.npz'},sts={tmp_path / 'sts.npz'}")
    loop.train(student, tmp_path / "whole", quiet=True)
    monkeypatch.setattr(loop, "_InterruptFlag", lambda: InterruptAfter(steps=4))
    assert loop.train(student, tmp_path / "killed", quiet=True) == {}
    monkeypatch.undo()
    assert main.main(["--resume", str(tmp_path / "killed"), "--quiet"]) == 0

    def records(d):
        return [{k: v for k, v in json.loads(line).items() if k not in ("step_time_s", "examples_per_s")}
                for line in (d / "metrics.jsonl").read_text().splitlines()]

    assert records(tmp_path / "killed") == records(tmp_path / "whole")
    ours, reference = (jax.device_get(load_run(tmp_path / d)[1]) for d in ("killed", "whole"))
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(reference)):
        np.testing.assert_array_equal(a, b)


def test_a_holdout_leaves_out_one_fold_of_rows_chosen_by_id(small_data):
    ids = [f"row{i}" for i in range(300)]
    folds = input_pipeline.fold_of(ids, 3)
    assert set(folds) == {0, 1, 2} and all(60 < np.sum(folds == k) < 140 for k in range(3))
    shuffled = np.random.default_rng(0).permutation(300)
    np.testing.assert_array_equal(input_pipeline.fold_of([ids[i] for i in shuffled], 3), folds[shuffled])
    for swap in (False, True):
        full = input_pipeline.TaskData("para", mode="cross", data_dir=small_data, source_dir=small_data,
                                       swap_pairs=swap, max_length=32)
        train_ids = full.split("train").ids
        kept = set()
        for k in (1, 2, 3):
            data = input_pipeline.TaskData("para", mode="cross", data_dir=small_data, source_dir=small_data,
                                           swap_pairs=swap, max_length=32, holdout=(k, 3))
            held = {i for i, out in zip(train_ids, data.held_out_mask()) if out}
            assert held == {i for i, f in zip(train_ids, input_pipeline.fold_of(train_ids, 3)) if f == k - 1}
            assert held and set(data.train.ids) == set(train_ids) - held
            rows = np.flatnonzero(~data.held_out_mask())
            rows = np.concatenate([rows, len(train_ids) + rows]) if swap else rows  # the swapped copies follow
            np.testing.assert_array_equal(data.train.input_ids[:, :-1], full.train.input_ids[:, rows])
            kept |= held
        assert kept == set(train_ids)


@pytest.mark.parametrize("value", ["sst=0/3", "sst=4/3", "sst=1/1", "sst=1", "para=1/2", "sst=a/b"])
def test_a_holdout_that_does_not_exist_is_refused_by_name(value, tiny_encoder, small_data):
    with pytest.raises(ConfigError, match=re.escape(f"--holdout {value!r}")):
        tiny_config(tiny_encoder, small_data, tasks=("sst", "sts"), holdout=value)


def test_a_cross_fitted_teacher_predicts_each_row_from_the_run_that_held_it_out(teacher_run, tiny_encoder, small_data,
                                                                               tmp_path):
    folds = []
    for k in (1, 2):
        run_dir = tmp_path / f"fold{k}"
        config = tiny_config(tiny_encoder, small_data, tasks=("sst", "sts"), epochs=1, holdout=f"sst={k}/2", seed=k)
        loop.train(config, run_dir, quiet=True)
        folds.append(run_dir)
    teacher = teach.make_teacher("sst", folds, tmp_path / "sst.npz")
    expected = np.zeros_like(teacher)
    for run_dir in folds:
        run, params = load_run(run_dir)
        data = run.data["sst"]
        assert len(data.train) < len(data.split("train"))  # the held-out rows were not trained on
        expected[data.held_out_mask()] = teach.teacher_targets(run, params, "sst")[data.held_out_mask()]
    np.testing.assert_allclose(teacher, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(teacher.sum(-1), 1, atol=1e-5)
    with pytest.raises(RunError, match=r"no run held out \d+ of sst's 96 training rows"):
        teach.make_teacher("sst", folds[:1], tmp_path / "half.npz")
    with pytest.raises(RunError, match="mixes runs that hold out a fold"):
        teach.make_teacher("sst", [*folds, teacher_run], tmp_path / "mixed.npz")
    assert not (tmp_path / "half.npz").exists() and not (tmp_path / "mixed.npz").exists()
    # The other task of the fold runs saw all its rows: an ordinary teacher.
    assert teach.make_teacher("sts", folds, tmp_path / "sts.npz").shape == (96,)


def test_holdouts_on_the_command_line(tiny_encoder, small_data):
    config, _ = cli.parse_args(["--tasks", "sst,sts", "--holdout", "sst=1/3", "--holdout", "sts=5/5",
                                "--init-checkpoint", str(tiny_encoder), "--data-dir", str(small_data)])
    assert config.holdout == "sst=1/3,sts=5/5" and config.holdouts() == {"sst": (1, 3), "sts": (5, 5)}
