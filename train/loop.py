"""The training loop: a run's set-up (or its resumption), its epochs (train/epochs.py), then its final outputs.

The whole state of a run between two steps is a TrainState (train/step.py) and a `Progress` record
(train/progress.py); both go into the latest checkpoint, which is also saved after every evaluation, so a run
killed anywhere resumes from its last checkpoint to the same numbers.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import signal
import sys
from pathlib import Path

from data.atomic import atomic_write

from . import checkpointing
from .config import TrainConfig
from .distributed import barrier, is_main_process, main_process_first
from .epochs import Epochs, say, state_dict
from .interrupts import InterruptFlag, exit_interrupted
from .progress import Progress
from .run import Run, RunError, ensure_init_checkpoint, finish_run, resolved_dtype, set_up_process
from .step import TrainState, learning_rate, make_grad_fns, make_optimizer, make_update, placed_state
from .tensorboard import EventLog

__all__ = ["Progress", "train"]

_InterruptFlag = InterruptFlag  # the Ctrl-C flag's class, looked up at each run (tests put a scripted one here)


def _trim_metrics(run_dir: Path, evaluations: int) -> None:
    """Keeps the metrics.jsonl lines of the first `evaluations` evaluations: a run killed after writing an
    evaluation's line but before saving the checkpoint that follows repeats that evaluation when resumed."""
    path = run_dir / "metrics.jsonl"
    if path.exists():
        lines = path.read_text().splitlines(keepends=True)[:evaluations]
        with atomic_write(path) as f:
            f.write("".join(lines))


def train(config: TrainConfig, run_dir: Path, resume: bool = False, quiet: bool = False) -> dict:
    """Trains (or resumes) a run in `run_dir`; returns the best evaluation's metrics on the whole dev set ({} if
    interrupted).

    Ctrl-C during the training steps and evaluations saves a checkpoint once they reach one and returns (a second
    Ctrl-C ends the process at once); before or after them it ends the process with exit code 130."""
    previous = signal.signal(signal.SIGINT, functools.partial(exit_interrupted, run_dir))
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


def _resumed(run_dir: Path, config: TrainConfig, progress: Progress) -> str:
    """What resuming from `progress` does, in one line."""
    if progress.stopped_early or progress.epoch >= config.epochs:
        how = f"stopped early at step {progress.global_step}" if progress.stopped_early else \
            f"trained its {config.epochs} epochs"
        return (f"{run_dir} had finished ({how}); redoing its final outputs from the best checkpoint: "
                "predictions, best_encoder/ and curves.png")
    return f"resuming at epoch {progress.epoch} step {progress.next_step} (global step {progress.global_step})"


def _train(config: TrainConfig, run_dir: Path, resume: bool, quiet: bool) -> dict:
    set_up_process()
    config = resolved_dtype(config)  # config.json holds the dtype the run computes in
    if not resume and (run_dir / "config.json").exists():
        raise RunError(f"{run_dir} holds a run already: continue it with --resume {run_dir} "
                       "or choose another --run-dir")
    # Everything that can refuse the settings (the checkpoint, the task files) is checked before the run directory
    # is made: a failed start leaves nothing behind, and the corrected command just works.
    run = Run(config, main_process_first("init checkpoint", lambda: ensure_init_checkpoint(config.init_checkpoint)),
              quiet=quiet)
    main_process_first("task data", lambda: run.data)
    if is_main_process():
        for warning in run.length_warnings():
            print(f"warning: {warning}", file=sys.stderr, flush=True)
    _make_run_dir(run_dir)
    barrier("run directory checked")  # before the main process writes config.json
    if is_main_process():  # on --resume the saved settings, or more --epochs
        with atomic_write(run_dir / "config.json") as f:
            f.write(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    total_steps = run.total_steps()
    tx = make_optimizer(config, total_steps)
    grad_fns, update = make_grad_fns(run.model, config, total_steps), make_update(config, tx)
    state = placed_state(run.init_params(), tx, run.replicated)
    latest, best = checkpointing.managers(run_dir)
    progress = Progress()
    if resume:
        if latest.latest_step() is None:
            say(f"{run_dir}: no checkpoint yet, starting from the beginning")
        else:
            tree, meta = checkpointing.restore(latest, state_dict(state))
            state, progress = TrainState(**tree), Progress.restored(meta)
            say(_resumed(run_dir, config, progress))
        if is_main_process():
            _trim_metrics(run_dir, progress.evaluations)
    interrupt = _InterruptFlag()
    events = EventLog(run_dir, start_step=progress.global_step, enabled=config.tensorboard and is_main_process())
    rate = learning_rate(config, total_steps)
    epochs = Epochs(run, run_dir, grad_fns, update, latest, best, interrupt, events,
                    rate if callable(rate) else lambda step: rate, quiet)
    try:
        for epoch in range(progress.epoch, config.epochs):
            if progress.stopped_early:
                break
            if progress.next_step == 0:
                progress.start_epoch(config.tasks)
            state, interrupted = epochs.run_epoch(epoch, state, progress)
            if interrupted:
                return {}
    finally:
        interrupt.restore()
        events.close()
    return finish_run(run, run_dir)
