"""Reliability (issue 8): killed runs resume exactly, Ctrl-C checkpoints, a NaN loss stops training, and bad
input or a full disk gives a clear error that loses nothing.

Training runs are `python -m train.main` subprocesses on the tiny encoder and small data of conftest.py. They
share one working directory, so one JAX compilation cache (train.loop keeps it in .cache/jax under the working
directory); the uninterrupted reference run trains once per session.
"""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from bench.kill_resume import TIMING_FIELDS, Training, complete_steps
from tests.helpers import REPO
from data import tfds_builders
from data.tasks import MalformedRowWarning
from data import atomic
from train import checkpointing, evaluate, loop, main


def tiny_args(tiny_encoder, small_data, *more: str) -> list[str]:
    """Two epochs of three steps with PCGrad, a checkpoint every two steps; `more` flags override these."""
    return ["--preset", "cosfeat-pcgrad-mean", "--init-checkpoint", str(tiny_encoder), "--data-dir", str(small_data),
            "--epochs", "2", "--samples-per-task", "24", "--batch-size", "8", "--eval-batch-size", "32",
            "--max-length", "32", "--num-buckets", "1", "--lr", "1e-3", "--save-every-steps", "2", "--quiet", *more]


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    """The working directory of every training subprocess (it holds their shared compilation cache)."""
    return tmp_path_factory.mktemp("workdir")


def wait_for(training: Training, condition, what: str, timeout: float = 300) -> None:
    """Polls `condition` every millisecond; fails if the run ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if training.proc.poll() is not None:
            pytest.fail(f"the run ended (exit code {training.wait()}) before {what}:\n{training.output()}")
        if time.monotonic() > deadline:
            training.kill()
            pytest.fail(f"no {what} after {timeout} s:\n{training.output()}")
        time.sleep(0.001)


def finish(training: Training, timeout: float = 300) -> int:
    """Waits for the exit (killing the run after `timeout` seconds); returns the exit code."""
    code = training.wait(timeout)
    if code is None:
        training.kill()
        pytest.fail(f"the run did not end in {timeout} s:\n{training.output()}")
    return code


@pytest.fixture
def trainings():
    """Starts Training subprocesses and kills those still running when the test ends."""
    started = []

    def start(workdir, argv):
        started.append(Training(argv, workdir, workdir / f"stderr-{time.monotonic_ns()}.txt"))
        return started[-1]

    yield start
    for training in started:
        if training.proc.poll() is None:
            training.kill()


@pytest.fixture(scope="session")
def reference(workdir, tiny_encoder, small_data, tmp_path_factory) -> Path:
    """A run never stopped."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    training = Training(tiny_args(tiny_encoder, small_data, "--run-dir", str(run_dir)), workdir,
                        workdir / "stderr-reference.txt")
    assert finish(training) == 0, training.output()
    return run_dir


def steps(manager_dir: Path) -> set[int]:
    """The complete checkpoints of a checkpoint manager directory."""
    return set(complete_steps(manager_dir))


def position(manager_dir: Path) -> dict:
    """The JSON metadata of the newest complete checkpoint."""
    return json.loads((manager_dir / str(max(steps(manager_dir))) / "meta" / "metadata").read_text())


def checkpoint(manager_dir: Path) -> tuple[dict, dict]:
    """The state tree and the JSON metadata of the only complete checkpoint."""
    (step,) = steps(manager_dir)
    return jax.device_get(ocp.StandardCheckpointer().restore(manager_dir / str(step) / "state")), position(manager_dir)


def metric_lines(run_dir: Path) -> list[str]:
    """The lines of the run's metrics.jsonl (none before the first epoch ends)."""
    path = run_dir / "metrics.jsonl"
    return path.read_text().splitlines() if path.exists() else []


def assert_same_outcome(run_dir: Path, reference_dir: Path) -> None:
    """Same metrics (timings aside), final training state, best parameters and prediction files."""
    def metrics(d):
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS} for line in metric_lines(d)]

    assert metrics(run_dir) == metrics(reference_dir)
    for name in ("latest", "best"):
        (ours, our_meta), (theirs, their_meta) = (checkpoint(d / "checkpoints" / name)
                                                  for d in (run_dir, reference_dir))
        assert our_meta == their_meta
        assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(theirs)
        for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs)):
            np.testing.assert_array_equal(a, b)
    predictions = [{p.name: p.read_bytes() for p in (d / "predictions").iterdir()} for d in (run_dir, reference_dir)]
    assert predictions[0] == predictions[1]


def test_run_killed_five_times_resumes_to_the_uninterrupted_result(workdir, reference, tiny_encoder, small_data,
                                                                    tmp_path, trainings):
    run_dir = tmp_path / "run"
    latest, best = run_dir / "checkpoints" / "latest", run_dir / "checkpoints" / "best"

    def after_delay(seconds):
        seen = []

        def condition():
            if not seen and (run_dir / "config.json").exists():
                seen.append(time.monotonic())
            return bool(seen) and time.monotonic() - seen[0] >= seconds
        return condition

    def appears(names):
        # True when a name is there that was not at the previous poll: a temporary checkpoint directory left
        # by the previous kill is removed at start and written again under the same name.
        last = [names()]

        def condition():
            now = names()
            new, last[0] = now - last[0], now
            return bool(new)
        return condition

    def tmp_dirs(prefix=""):
        return lambda: {p.name for p in latest.glob(f"{prefix}*orbax-checkpoint-tmp*")}

    def uncovered_metrics_line():
        # The latest checkpoint's position counts finished epochs: one line more is a line it does not cover.
        return len(metric_lines(run_dir)) > (position(latest)["epoch"] if steps(latest) else 0)

    # (where the kill lands, when to kill, what must hold right after the kill)
    kills = [
        ("at a fixed delay, in set-up", lambda t: after_delay(1.0), lambda: not steps(latest)),
        ("during a step, right after a checkpoint", lambda t: appears(lambda: steps(latest)), None),
        ("during the dev evaluation", lambda t: lambda: any(re.match(r"epoch \d+: \d+ steps", x) for x in t.lines),
         lambda: not uncovered_metrics_line()),
        ("between the best and the latest checkpoint", lambda t: appears(lambda: steps(best)), uncovered_metrics_line),
        # Step 4 is in the middle of epoch 1: the last run resumes from the end-of-epoch checkpoint 3.
        ("during a checkpoint write", lambda t: appears(tmp_dirs("4.")), tmp_dirs()),
    ]
    argv = tiny_args(tiny_encoder, small_data, "--run-dir", str(run_dir))
    for where, when, landed in kills:
        training = trainings(workdir, argv)
        wait_for(training, when(training), f"the kill point {where!r}")
        training.kill()
        if landed is not None:
            assert landed(), f"the kill {where} came too late:\n{training.output()}"
        argv = ["--resume", str(run_dir), "--quiet"]
    training = trainings(workdir, argv)
    assert finish(training) == 0, training.output()
    assert not list(run_dir.glob("checkpoints/*/*orbax-checkpoint-tmp*"))
    assert_same_outcome(run_dir, reference)


def test_a_run_resumed_with_more_epochs_ends_as_the_longer_run(reference, tiny_encoder, small_data, tmp_path):
    """A finished one-epoch run extended with `--resume RUN --epochs 2` equals the two-epoch run never stopped."""
    run_dir = tmp_path / "run"
    assert main.main(tiny_args(tiny_encoder, small_data, "--run-dir", str(run_dir), "--epochs", "1")) == 0
    assert main.main(["--resume", str(run_dir), "--epochs", "2", "--quiet"]) == 0
    assert json.loads((run_dir / "config.json").read_text())["epochs"] == 2
    assert_same_outcome(run_dir, reference)


def test_ctrl_c_in_the_last_step_of_an_epoch_stops_at_its_checkpoint(workdir, tiny_encoder, small_data, tmp_path,
                                                                      trainings):
    run_dir = tmp_path / "run"
    training = trainings(workdir, tiny_args(tiny_encoder, small_data, "--run-dir", str(run_dir)))
    # The first checkpoint is taken after step 2 of 3: the signal comes in step 3 (or in the dev evaluation after it).
    wait_for(training, lambda: steps(run_dir / "checkpoints" / "latest"), "a first checkpoint")
    training.proc.send_signal(signal.SIGINT)
    assert finish(training) == 130, training.output()
    assert "Traceback" not in training.output()
    assert training.lines[-1] == ("interrupted: checkpoint saved at the end of epoch 0; "
                                  f"continue with --resume {run_dir}")
    _, saved = checkpoint(run_dir / "checkpoints" / "latest")
    assert (saved["epoch"], saved["next_step"], saved["global_step"]) == (1, 0, 3)
    assert len(metric_lines(run_dir)) == 1


# `python -c SLOW_EVALUATION ARGS` is `python -m train.main ARGS` with every prediction batch taken 0.3 s late (the
# predictions unchanged): an evaluation of the small data lasts seconds, as one of the real data lasts minutes.
SLOW_EVALUATION = """
import sys, time
from train import main, predictor
predict_split = predictor.predict_split
predictor.predict_split = lambda fn, params, batches, *rest: predict_split(
    fn, params, (time.sleep(0.3) or batch for batch in batches), *rest)
sys.exit(main.main(sys.argv[1:]))
"""


class SlowEvaluation(Training):
    """A training subprocess running SLOW_EVALUATION."""

    def __init__(self, argv: list[str], cwd: Path, stderr: Path):
        self.stderr, self.lines = stderr, []
        with open(stderr, "a") as err:
            self.proc = subprocess.Popen([sys.executable, "-c", SLOW_EVALUATION, *argv], cwd=cwd, text=True,
                                         stdout=subprocess.PIPE, stderr=err,
                                         env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"})
        self._reader = threading.Thread(target=self._read)
        self._reader.start()


def test_ctrl_c_during_an_evaluation_says_what_it_finishes_and_a_second_one_stops_at_once(
        workdir, reference, tiny_encoder, small_data, tmp_path):
    """The first Ctrl-C in epoch 0's dev evaluation says it finishes it; the second ends the process within
    seconds, without the end-of-epoch checkpoint, and the run resumes to the uninterrupted result."""
    run_dir = tmp_path / "run"
    training = SlowEvaluation(tiny_args(tiny_encoder, small_data, "--run-dir", str(run_dir)), workdir,
                              workdir / f"stderr-{time.monotonic_ns()}.txt")
    notice = ("finishing the dev evaluation of epoch 0; Ctrl-C again stops now (the run resumes from its last "
              "checkpoint)")
    try:
        # The quiet line of the first task's predictions: para's and sts's take 5 s more.
        wait_for(training, lambda: any(line.startswith("epoch 0 dev sst: ") for line in training.lines),
                 "epoch 0's dev evaluation")
        training.proc.send_signal(signal.SIGINT)
        wait_for(training, lambda: notice in training.stderr.read_text(), "the notice of the first Ctrl-C", timeout=10)
        training.proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        assert finish(training, timeout=60) == 130, training.output()
        assert time.monotonic() - sent < 3, training.output()
    finally:
        if training.proc.poll() is None:
            training.kill()
    assert f"interrupted; continue with --resume {run_dir}" in training.output()
    assert "Traceback" not in training.output()
    assert steps(run_dir / "checkpoints" / "latest") == {2}  # step 2's (--save-every-steps 2), not epoch 0's end
    resumed = Training(["--resume", str(run_dir), "--quiet"], workdir, workdir / f"stderr-{time.monotonic_ns()}.txt")
    assert finish(resumed) == 0, resumed.output()
    assert_same_outcome(run_dir, reference)


def test_ctrl_c_during_set_up_exits_130_and_says_how_to_resume(workdir, tiny_encoder, small_data, tmp_path,
                                                               trainings):
    run_dir = tmp_path / "run"
    training = trainings(workdir, tiny_args(tiny_encoder, small_data, "--run-dir", str(run_dir)))
    wait_for(training, lambda: (run_dir / "config.json").exists(), "config.json")
    training.proc.send_signal(signal.SIGINT)
    assert finish(training) == 130, training.output()
    assert f"interrupted; continue with --resume {run_dir}" in training.output()
    assert "Traceback" not in training.output()
    assert not steps(run_dir / "checkpoints" / "latest")


def test_nan_loss_stops_training_naming_task_and_step_and_keeps_the_last_checkpoint(tiny_encoder, small_data,
                                                                                   tmp_path, monkeypatch, capsys):
    make_grad_fns = loop.make_grad_fns

    def poisoned(model, config, total_steps):
        grad_fns, calls = make_grad_fns(model, config, total_steps), []

        def sts(params, batch, key, step):
            calls.append(1)
            loss, grads = grad_fns["sts"](params, batch, key, step)
            if len(calls) == 3:
                return loss * np.nan, jax.tree_util.tree_map(lambda g: g * np.nan, grads)
            return loss, grads
        return {**grad_fns, "sts": sts}

    monkeypatch.setattr(loop, "make_grad_fns", poisoned)
    run_dir = tmp_path / "run"
    argv = tiny_args(tiny_encoder, small_data, "--tasks", "sts", "--save-every-steps", "1", "--run-dir", str(run_dir))
    assert main.main(argv) == 1
    err = capsys.readouterr().err
    assert "error: the sts loss is nan at step 2: training stopped (the last good checkpoint is kept)" in err
    assert "Traceback" not in err
    state, saved = checkpoint(run_dir / "checkpoints" / "latest")
    assert (saved["global_step"], saved["next_step"]) == (2, 2)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(state["params"]))
    assert not (run_dir / "metrics.jsonl").exists()


def tensorstore_enospc(path: str) -> ValueError:
    """The error tensorstore (orbax's array writer) raises when the disk is full (as seen on a full tmpfs)."""
    return ValueError(f'RESOURCE_EXHAUSTED: Error writing "params" in OCDBT database at local file "{path}/": '
                      f'Failed writing: "{path}/d/0": Failed to write 4096 bytes to file 7: No space left on device '
                      "[os_error_code='28']")


@pytest.mark.parametrize("error", [
    lambda path: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path),
    tensorstore_enospc,
], ids=["OSError", "tensorstore"])
def test_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(tiny_encoder, small_data, tmp_path, monkeypatch,
                                                                     capsys, error):
    write = ocp.handlers.JsonCheckpointHandler._save_fn

    async def full_disk_at_step_2(self, item, directory):
        if f"{os.sep}latest{os.sep}2." in str(directory):
            raise error(str(directory))
        await write(self, item, directory)

    monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, "_save_fn", full_disk_at_step_2)
    run_dir = tmp_path / "run"
    argv = tiny_args(tiny_encoder, small_data, "--tasks", "sst", "--save-every-steps", "1", "--run-dir", str(run_dir))
    assert main.main(argv) == 1
    latest = (run_dir / "checkpoints" / "latest").resolve()
    err = capsys.readouterr().err
    assert (f"error: {latest}: cannot write checkpoint 2 (No space left on device); "
            "the previous checkpoint is kept") in err
    assert "Traceback" not in err
    state, saved = checkpoint(latest)
    assert (saved["global_step"], saved["next_step"]) == (1, 1)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(state["params"]))
    # The failed write's files take space on the full disk: the next run opening the checkpoints removes them.
    assert list(latest.glob("2.orbax-checkpoint-tmp*"))
    manager, _ = checkpointing.managers(run_dir)
    assert manager.latest_step() == 1
    assert not list(latest.glob("2.orbax-checkpoint-tmp*"))
    time.sleep(1)  # nothing of the failed write comes back
    assert not list(latest.glob("2.orbax-checkpoint-tmp*"))


class _FullDiskFile:
    """A file opened for writing on a full disk."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_while_writing_predictions_keeps_the_previous_files(reference, tmp_path, monkeypatch, capsys):
    run_dir = shutil.copytree(reference, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in (run_dir / "predictions").iterdir()}
    monkeypatch.setattr(atomic, "open", lambda *args, **kwargs: _FullDiskFile(open(*args, **kwargs)), raising=False)
    assert evaluate.main(["--checkpoint", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert (f"error: {run_dir / 'predictions' / 'sst-dev-output.csv'}: cannot write predictions "
            "(No space left on device); the previous file is kept") in err
    assert {p.name: p.read_bytes() for p in (run_dir / "predictions").iterdir()} == before


@pytest.fixture
def tfds_dir(tmp_path, monkeypatch):
    """Prepared data of the broken copies goes to a temporary directory."""
    monkeypatch.setattr(tfds_builders, "DEFAULT_DATA_DIR", tmp_path / "tfds")


def _rewrite(path: Path, edit) -> None:
    path.write_bytes(edit(path.read_bytes()))


DATA_BREAKAGES = {
    "missing": ("sts-dev.csv", lambda p: p.unlink(), "file not found"),
    "unreadable": ("sts-dev.csv", lambda p: (p.unlink(), p.mkdir()), "cannot read (Is a directory)"),
    "empty": ("sts-dev.csv", lambda p: p.write_bytes(b""), "empty file"),
    "non-UTF-8": ("sts-dev.csv", lambda p: _rewrite(p, lambda b: b.replace(b"\n", b"\n\xff", 1)),
                  "line 2: not valid UTF-8 (byte 0xff"),
    "wrong header": ("sts-train.csv", lambda p: _rewrite(p, lambda b: b.replace(b"similarity", b"score", 1)),
                     "line 1: no column 'similarity' (the label of task sts"),
}


@pytest.mark.parametrize("name", DATA_BREAKAGES)
def test_unusable_data_file_is_named(name, tiny_encoder, small_data, tmp_path, tfds_dir, capsys):
    file_name, breakage, message = DATA_BREAKAGES[name]
    data_dir = shutil.copytree(small_data, tmp_path / "data")
    breakage(data_dir / file_name)
    argv = tiny_args(tiny_encoder, data_dir, "--run-dir", str(tmp_path / "run"))
    assert main.main(argv) == 1
    err = capsys.readouterr().err
    assert f"error: {data_dir / file_name}: " in err and message in err, err
    assert "Traceback" not in err


def test_malformed_rows_are_skipped_with_a_warning_and_a_count(tiny_encoder, small_data, tmp_path, tfds_dir, capsys):
    data_dir = shutil.copytree(small_data, tmp_path / "data")
    path = data_dir / "sts-train.csv"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[2] = lines[2].rsplit("\t", 1)[0] + "\tsix\n"
    lines[5] = "not a row\n"
    path.write_text("".join(lines), encoding="utf-8")
    argv = tiny_args(tiny_encoder, data_dir, "--tasks", "sts", "--epochs", "1", "--samples-per-task", "8",
                     "--run-dir", str(tmp_path / "run"))
    with pytest.warns(MalformedRowWarning) as warned:
        assert main.main(argv) == 0
    messages = [str(w.message) for w in warned if str(path) in str(w.message)]
    assert messages == [f"{path}: line 3 (id {lines[2].split(chr(9))[1]}): label 'six' is not a number; row skipped",
                        f"{path}: line 6: 1 fields, expected 5; row skipped",
                        f"{path}: skipped 2 malformed row(s) of 96; 94 loaded"]
    out, err = capsys.readouterr()
    assert "best dev: " in out
    assert "Generating" not in err  # --quiet: preparing the fresh data folder drew no progress bars


def _resave_params(encoder_dir: Path, edit) -> None:
    params = ocp.StandardCheckpointer().restore(encoder_dir / "params")
    edit(params["pooler"]["dense"])
    shutil.rmtree(encoder_dir / "params")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(encoder_dir / "params", params)
    checkpointer.wait_until_finished()


CHECKPOINT_BREAKAGES = {
    "missing directory": (shutil.rmtree, "checkpoint directory not found"),
    "no config.json": (lambda d: (d / "config.json").unlink(), "no config.json in checkpoint directory"),
    "config.json not JSON": (lambda d: (d / "config.json").write_text("{"), "config.json: not valid JSON"),
    "no vocab.txt": (lambda d: (d / "vocab.txt").unlink(), "no vocab.txt in checkpoint directory"),
    "vocabulary too large": (lambda d: _rewrite(d / "vocab.txt", lambda b: b + b"extra1\nextra2\n"),
                             "vocab.txt: 30524 word pieces, more than the config's vocab_size 30522"),
    "missing tensor": (lambda d: _resave_params(d, lambda dense: dense.pop("bias")),
                       "missing tensor pooler/dense/bias (32,)"),
    "unknown tensor": (lambda d: _resave_params(d, lambda dense: dense.update(scale=np.ones(32, np.float32))),
                       "unknown tensor pooler/dense/scale (32,)"),
    "misshapen tensor": (lambda d: _resave_params(d, lambda dense: dense.update(kernel=np.ones((32, 16), np.float32))),
                         "misshapen tensor pooler/dense/kernel: (32, 16), expected (32, 32)"),
}


@pytest.mark.parametrize("name", CHECKPOINT_BREAKAGES)
def test_unusable_init_checkpoint_is_named(name, tiny_encoder, small_data, tmp_path, capsys):
    breakage, message = CHECKPOINT_BREAKAGES[name]
    encoder_dir = shutil.copytree(tiny_encoder, tmp_path / "encoder")
    breakage(encoder_dir)
    argv = tiny_args(encoder_dir, small_data, "--run-dir", str(tmp_path / "run"))
    assert main.main(argv) == 1
    err = capsys.readouterr().err
    assert f"error: {encoder_dir}" in err and message in err, err
    assert "Traceback" not in err


def test_resume_of_what_is_not_a_run_is_refused(tmp_path, capsys):
    assert main.main(["--resume", str(tmp_path / "nowhere")]) == 1
    assert f"error: --resume {tmp_path / 'nowhere'}: not a run directory (no config.json)" in capsys.readouterr().err
    (tmp_path / "config.json").write_text('{"tasks": ["sst"], "learning_rate": 1}')
    assert main.main(["--resume", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"error: --resume {tmp_path}: config.json does not hold a run's settings (" in err
    assert "learning_rate" in err and "Traceback" not in err


def test_new_run_in_a_run_directory_is_refused(tiny_encoder, small_data, tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    assert main.main(tiny_args(tiny_encoder, small_data, "--run-dir", str(tmp_path))) == 1
    assert (f"error: {tmp_path} holds a run already: continue it with --resume {tmp_path} "
            "or choose another --run-dir") in capsys.readouterr().err
    assert (tmp_path / "config.json").read_text() == "{}"

