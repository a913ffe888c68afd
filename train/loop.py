"""The training loop: epochs of multi-task steps, an evaluation at each epoch's end, checkpoints and logs.

The whole state of a run between two steps is a TrainState (train/step.py) and a `Progress` record; both go
into the latest checkpoint, so a run killed anywhere resumes from its last checkpoint to the same numbers.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import time
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from data import disable_progress_bars
from data.atomic import atomic_write

from . import checkpointing
from .config import TrainConfig
from .distributed import any_process, barrier, is_main_process, main_process_first, process_count
from .run import Run, RunError, ensure_init_checkpoint, enable_compilation_cache, finish_run
from .step import (TrainState, evaluated_params, init_state, learning_rate, make_grad_fns, make_optimizer,
                   make_update, train_step)
from .tensorboard import EventLog

__all__ = ["Progress", "train"]


@dataclasses.dataclass
class Progress:
    """Where a run stands between two steps, and the running sums of its epoch (kept in the checkpoint, so a
    resumed epoch reports what an uninterrupted one would). `window` sums each task's losses since the last
    TensorBoard point."""

    epoch: int = 0
    next_step: int = 0  # within the epoch
    global_step: int = 0
    best_score: float | None = None
    best_epoch: int | None = None
    loss: dict = dataclasses.field(default_factory=dict)
    loss_steps: dict = dataclasses.field(default_factory=dict)
    window: dict = dataclasses.field(default_factory=dict)
    examples: int = 0
    steps: int = 0
    conflicts: float = 0.0
    cosine: list = dataclasses.field(default_factory=list)

    def start_epoch(self, tasks) -> None:
        """Zeroes the epoch's sums (at an epoch's start, not when resuming inside it)."""
        self.loss, self.loss_steps = dict.fromkeys(tasks, 0.0), dict.fromkeys(tasks, 0)
        self.window = dict.fromkeys(tasks, 0.0)
        self.examples = self.steps = 0
        self.conflicts, self.cosine = 0.0, np.zeros((len(tasks), len(tasks))).tolist()

    def mean_loss(self) -> dict[str, float]:
        return {t: total / max(self.loss_steps[t], 1) for t, total in self.loss.items()}


def _say(message: str) -> None:
    """Prints from the main process only (one line per event in a multi-process run)."""
    if is_main_process():
        print(message, flush=True)


class _InterruptFlag:
    """Turns SIGINT into a flag checked between steps, so a checkpoint is taken at a clean position."""

    def __init__(self):
        self.raised = False
        self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, *_):
        self.raised = True

    def restore(self):
        signal.signal(signal.SIGINT, self._previous)


def _exit_interrupted(run_dir: Path, *_) -> None:
    """SIGINT outside the training steps (set-up, final predictions): there is nothing to save, and every file is
    written atomically or redone on resume, so the process ends at once, as after a kill. (Python's
    KeyboardInterrupt would not do: raised inside a garbage-collection callback, it is printed and lost.)"""
    hint = f"continue with --resume {run_dir}" if (run_dir / "config.json").exists() else "nothing was saved"
    os.write(2, f"interrupted; {hint}\n".encode())
    os._exit(130)


def _trim_metrics(run_dir: Path, epochs: int) -> None:
    """Keeps the metrics.jsonl lines of the first `epochs` epochs: a run killed after writing an epoch's line
    but before saving its checkpoint repeats that epoch when resumed."""
    path = run_dir / "metrics.jsonl"
    if path.exists():
        lines = path.read_text().splitlines(keepends=True)[:epochs]
        with atomic_write(path) as f:
            f.write("".join(lines))


def train(config: TrainConfig, run_dir: Path, resume: bool = False, quiet: bool = False) -> dict:
    """Trains (or resumes) a run in `run_dir`; returns the best evaluation's dev metrics ({} if interrupted).

    Ctrl-C during the training steps saves a checkpoint and returns; before or after them it ends the process
    with exit code 130."""
    previous = signal.signal(signal.SIGINT, functools.partial(_exit_interrupted, run_dir))
    try:
        return _train(config, run_dir, resume, quiet)
    finally:
        signal.signal(signal.SIGINT, previous)


def _make_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".writable"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise RunError(f"{run_dir}: cannot write the run directory here ({err.strerror or err})") from None


def _save(manager, step: int, tree, meta: dict) -> None:
    try:
        checkpointing.save(manager, step, tree, meta)
    except checkpointing.CheckpointWriteError as err:
        raise RunError(str(err)) from None


def _state_dict(state: TrainState) -> dict:
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


def _train(config: TrainConfig, run_dir: Path, resume: bool, quiet: bool) -> dict:
    enable_compilation_cache()
    if quiet:
        disable_progress_bars()
    if not resume and (run_dir / "config.json").exists():
        raise RunError(f"{run_dir} holds a run already: continue it with --resume {run_dir} "
                       "or choose another --run-dir")
    # Everything that can refuse the settings (the checkpoint, the task files) is checked before the run directory
    # is made: a failed start leaves nothing behind, and the corrected command just works.
    run = Run(config, main_process_first("init checkpoint", lambda: ensure_init_checkpoint(config.init_checkpoint)))
    main_process_first("task data", lambda: run.data)
    _make_run_dir(run_dir)
    barrier("run directory checked")  # before the main process writes config.json
    if is_main_process():  # on --resume the saved settings, or more --epochs
        with atomic_write(run_dir / "config.json") as f:
            f.write(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    total_steps = run.total_steps()
    tx = make_optimizer(config, total_steps)
    grad_fns, update = make_grad_fns(run.model, config, total_steps), make_update(config, tx)
    # Every leaf replicated (the step counters too): the update's output shardings then match its inputs and it
    # compiles once, not again at the second step.
    state = jax.jit(functools.partial(init_state, tx=tx), out_shardings=run.replicated)(run.init_params())
    latest, best = checkpointing.managers(run_dir)
    progress = Progress()
    if resume:
        if latest.latest_step() is None:
            _say(f"{run_dir}: no checkpoint yet, starting from the beginning")
        else:
            tree, meta = checkpointing.restore(latest, _state_dict(state))
            state, progress = TrainState(**tree), Progress(**meta)
            _say(f"resuming at epoch {progress.epoch} step {progress.next_step} (global step {progress.global_step})")
        if is_main_process():
            _trim_metrics(run_dir, progress.epoch)
    interrupt = _InterruptFlag()
    events = EventLog(run_dir, start_step=progress.global_step, enabled=config.tensorboard and is_main_process())
    rate = learning_rate(config, total_steps)
    schedule = rate if callable(rate) else lambda step: rate
    try:
        for epoch in range(progress.epoch, config.epochs):
            if progress.next_step == 0:
                progress.start_epoch(config.tasks)
            state, epoch_stats = _run_epoch(run, epoch, state, progress, grad_fns, update, latest, interrupt, quiet,
                                            events, schedule)
            if epoch_stats is None:
                _say(f"interrupted: checkpoint saved at epoch {epoch} step {progress.next_step}; "
                     f"continue with --resume {run_dir}")
                return {}
            params = evaluated_params(state, config)
            dev_preds = run.predict(params, "dev")
            dev = run.score("dev", dev_preds)
            if is_main_process():
                with open(run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps({"epoch": epoch, **epoch_stats, "dev": dev}) + "\n")
            events.scalars(progress.global_step, {f"dev/{k}": v for k, v in dev.items()})
            score = dev.get(config.select_by, -np.inf)
            is_best = progress.best_score is None or score > progress.best_score
            if is_best:
                progress.best_score, progress.best_epoch = score, epoch
                # Written before the best checkpoint: a kill in between repeats the epoch, which writes them again.
                run.write_predictions("dev", dev_preds, run_dir / "predictions")
                # A run killed between the two saves has saved this epoch's best checkpoint already.
                if best.latest_step() != epoch:
                    _save(best, epoch, {"params": params}, {"epoch": epoch, "dev": dev})
            progress.epoch, progress.next_step = epoch + 1, 0
            events.flush()
            _save(latest, progress.global_step, _state_dict(state), dataclasses.asdict(progress))
            _say(f"epoch {epoch} dev: " + " ".join(f"{k}={v:.4f}" for k, v in dev.items())
                 + (" (best)" if is_best else ""))
            if any_process(interrupt.raised):
                _say(f"interrupted: checkpoint saved at the end of epoch {epoch}; continue with --resume {run_dir}")
                return {}
    finally:
        interrupt.restore()
        events.close()
    return finish_run(run, run_dir)


def _run_epoch(run: Run, epoch, state, progress: Progress, grad_fns, update, latest, interrupt, quiet, events,
               schedule):
    """Steps of one epoch from progress.next_step, advancing `progress`; returns (state, epoch stats), with stats
    None when interrupted (after saving a checkpoint)."""
    config, tasks = run.config, run.config.tasks
    steps = run.stream().steps_per_epoch(epoch)
    # "rbg" keys: cheap to split and fold, and the dropout masks are hashed from the key (bert_flax/modeling.py).
    base_key = jax.random.key(config.seed, impl="rbg")
    pending, pcgrad_stats = [], []
    start, first_step, stop = time.perf_counter(), progress.next_step, False

    def flush():
        # Fetching losses waits for the devices: done every 10 steps, before a checkpoint and at the end.
        # Every value is added on the host in step order, so the sums do not depend on where flushes fall
        # (a resumed epoch flushes at other steps).
        nonlocal pending, pcgrad_stats
        for step, task, loss, weight in pending:
            if not np.isfinite(float(loss)):
                raise RunError(f"the {task} loss is {float(loss)} at step {step}: training stopped "
                               "(the last good checkpoint is kept)")
            if weight > 0:
                progress.loss[task] += float(loss)
                progress.loss_steps[task] += 1
            progress.window[task] += float(loss)
            if task == tasks[-1] and (step + 1) % config.log_every == 0:
                events.scalars(step + 1, {**{f"loss/{t}": progress.window[t] / config.log_every for t in tasks},
                                          "lr": schedule(step)})
                progress.window = dict.fromkeys(tasks, 0.0)
        for conflicts, cosine in jax.device_get(pcgrad_stats):
            progress.conflicts += float(conflicts)
            progress.cosine = (np.asarray(progress.cosine) + cosine).tolist()
        pending, pcgrad_stats = [], []

    bar = tqdm(total=steps, initial=first_step, desc=f"epoch {epoch}", unit="step",
               disable=quiet or not is_main_process())
    for batches, examples in run.train_steps(epoch, first_step):
        global_step = progress.global_step
        state, losses, stats = train_step(state, batches, jax.random.fold_in(base_key, global_step), grad_fns, update)
        pending.extend((global_step, task, losses[task], examples[task]) for task in tasks)
        if stats:
            pcgrad_stats.append((stats["num_conflicts"], stats["cosine"]))
        progress.examples += sum(examples.values())
        progress.steps += 1
        progress.next_step += 1
        progress.global_step += 1
        bar.update(1)
        checkpoint_due = config.save_every_steps and progress.global_step % config.save_every_steps == 0
        flushing = len(pending) >= 10 * len(tasks) or checkpoint_due or progress.next_step == steps
        if flushing or process_count() == 1:
            # The Ctrl-C vote, read once: a signal between two reads must not skip the checkpoint. Several
            # processes vote where they wait for the devices anyway, at the flushes. After the epoch's last step
            # the epoch is finished instead (train() checks again).
            stop = any_process(interrupt.raised) and progress.next_step < steps
        if flushing or stop:
            flush()
            bar.set_postfix(loss=f"{sum(progress.mean_loss().values()):.3f}",
                            ex_s=f"{progress.examples / (time.perf_counter() - start):.1f}")
        if stop or (checkpoint_due and progress.next_step < steps):
            events.flush()
            _save(latest, progress.global_step, _state_dict(state), dataclasses.asdict(progress))
        if stop:
            break
    bar.close()
    if stop:
        return state, None
    flush()
    elapsed, ran = time.perf_counter() - start, max(progress.next_step - first_step, 1)
    result = {
        "loss": progress.mean_loss(),
        "steps": progress.steps,
        "examples": progress.examples,
        "step_time_s": elapsed / ran,  # of the steps run since this process started the epoch
        "examples_per_s": ran * progress.examples / progress.steps / elapsed,
    }
    if config.pcgrad:
        pairs = len(tasks) * (len(tasks) - 1) / 2
        result["pcgrad_conflict_rate"] = progress.conflicts / progress.steps / max(pairs, 1)
        mean_cosine = np.asarray(progress.cosine) / progress.steps
        result["pcgrad_cosine"] = {
            f"{a}-{b}": float(mean_cosine[i, j]) for i, a in enumerate(tasks) for j, b in enumerate(tasks) if i < j
        }
    events.scalars(progress.global_step, {
        "examples_per_s": result["examples_per_s"],
        **({"pcgrad/conflict_rate": result["pcgrad_conflict_rate"],
            **{f"pcgrad/cosine/{pair}": c for pair, c in result["pcgrad_cosine"].items()}} if config.pcgrad else {})})
    if quiet:
        losses = " ".join(f"{t}={v:.4f}" for t, v in result["loss"].items())
        _say(f"epoch {epoch}: {progress.steps} steps, loss {losses}, {result['examples_per_s']:.1f} examples/s")
    return state, result
