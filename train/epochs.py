"""The epochs of a training run: multi-task steps, dev evaluations (at each epoch's end, and every
--eval-every-steps steps) that keep the best checkpoint, the latest checkpoints, and the logs.

A run's latest checkpoint is saved after every evaluation (and every --save-every-steps steps), so a run killed
anywhere resumes from it to the same numbers (train/loop.py resumes it).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from .distributed import any_process, is_main_process, process_count
from .feedback import plain
from .interrupts import InterruptFlag
from .progress import Progress
from .run import Run, RunError, save_checkpoint
from .step import TrainState, evaluated_params, train_step
from .tensorboard import EventLog

__all__ = ["Epochs", "say", "state_dict"]


def say(message: str) -> None:
    """Prints from the main process only (one line per event in a multi-process run)."""
    if is_main_process():
        print(message, flush=True)


def state_dict(state: TrainState) -> dict:
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


@dataclasses.dataclass
class Epochs:
    """What the epochs of a run share: the run, its step functions, checkpoint managers, Ctrl-C flag and logs."""

    run: Run
    run_dir: Path
    grad_fns: dict
    update: object
    latest: object
    best: object
    interrupt: object
    events: EventLog
    schedule: object  # the learning rate of each update
    quiet: bool

    def evaluate(self, state, progress: Progress, epoch: int, record: dict, during: str) -> list[str]:
        """Scores dev (the first --eval-max-examples examples of each task) with the evaluated parameters, appends
        `record` with the step and the dev metrics to metrics.jsonl, keeps the best by --select-by (its checkpoint,
        and its dev predictions if of the whole dev set) and counts the evaluations since the best for
        --early-stopping-patience. Returns the lines that say so, for the caller to print once it has saved the
        latest checkpoint."""
        config, step = self.run.config, progress.global_step
        self.interrupt.finishing = f"the dev evaluation of {during}"
        params = evaluated_params(state, config)
        preds = self.run.predict(params, "dev", config.eval_max_examples, during)
        dev = self.run.score("dev", preds)
        if is_main_process():
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({**record, "step": step, "dev": dev}) + "\n")
        progress.evaluations += 1
        self.events.scalars(step, {f"dev/{k}": v for k, v in dev.items()})
        score = dev.get(config.select_by, -np.inf)
        is_best = progress.best_score is None or score > progress.best_score
        if is_best:
            progress.best_score, progress.best_epoch, progress.best_step, progress.since_best = score, epoch, step, 0
            if not config.eval_max_examples:
                # Written before the best checkpoint: a kill in between repeats the evaluation, which writes them
                # again.
                self.run.write_predictions("dev", preds, self.run_dir)
            # A run killed between this save and the next latest one has saved this best checkpoint already.
            if self.best.latest_step() != step:
                save_checkpoint(self.best, step, {"params": params}, {"epoch": epoch, "step": step, "dev": dev})
        else:
            progress.since_best += 1
        self.interrupt.finishing = InterruptFlag.STEP
        part = f" (first {config.eval_max_examples} examples per task)" if config.eval_max_examples else ""
        lines = [f"{during} dev{part}: " + " ".join(f"{k}={v:.4f}" for k, v in dev.items())
                 + (" (best)" if is_best else "")]
        patience = config.early_stopping_patience
        if patience and progress.since_best >= patience:
            progress.stopped_early = True
            lines.append(f"stopping early: {patience} evaluation{'s' * (patience > 1)} in a row without a better "
                         f"{config.select_by} score than {progress.best_score:.4f} (epoch {progress.best_epoch} step "
                         f"{progress.best_step})")
        return lines

    def run_epoch(self, epoch: int, state, progress: Progress):
        """Steps of one epoch from progress.next_step, with their evaluations and checkpoints, advancing
        `progress`; returns (state, True if interrupted, after saving a checkpoint). Stops after an evaluation
        that sets progress.stopped_early."""
        run, config, tasks = self.run, self.run.config, self.run.config.tasks
        steps = run.stream().steps_per_epoch(epoch)
        # "rbg" keys: cheap to split and fold, and the dropout masks are hashed from the key (bert_flax/modeling.py).
        base_key = jax.random.key(config.seed, impl="rbg")
        pending, pcgrad_stats, report = [], [], []
        start, first_step, interrupted = time.perf_counter(), progress.next_step, False

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
                    self.events.scalars(step + 1, {**{f"loss/{t}": progress.window[t] / config.log_every
                                                      for t in tasks}, "lr": self.schedule(step)})
                    progress.window = dict.fromkeys(tasks, 0.0)
            for conflicts, cosine in jax.device_get(pcgrad_stats):
                progress.conflicts += float(conflicts)
                progress.cosine = (np.asarray(progress.cosine) + cosine).tolist()
            pending, pcgrad_stats = [], []

        def due(every: int) -> bool:  # within the epoch: its end has its own evaluation and checkpoint
            return bool(every) and progress.global_step % every == 0 and progress.next_step < steps

        bar = tqdm(total=steps, initial=first_step, desc=f"epoch {epoch}", unit="step",
                   disable=plain(self.quiet) or not is_main_process())
        for batches, examples in run.train_steps(epoch, first_step):
            global_step = progress.global_step
            state, losses, stats = train_step(state, batches, jax.random.fold_in(base_key, global_step),
                                              self.grad_fns, self.update)
            pending.extend((global_step, task, losses[task], examples[task]) for task in tasks)
            if stats:
                pcgrad_stats.append((stats["num_conflicts"], stats["cosine"]))
            progress.examples += sum(examples.values())
            progress.steps += 1
            progress.next_step += 1
            progress.global_step += 1
            bar.update(1)
            evaluating = due(config.eval_every_steps)
            checkpoint_due = due(config.save_every_steps) or evaluating
            flushing = len(pending) >= 10 * len(tasks) or checkpoint_due or progress.next_step == steps
            if flushing or process_count() == 1:
                # The Ctrl-C vote, read once: a signal between two reads must not skip the checkpoint. Several
                # processes vote where they wait for the devices anyway, at the flushes. After the epoch's last step
                # the epoch is finished instead (`run_epoch` checks again).
                interrupted = any_process(self.interrupt.raised) and progress.next_step < steps
            if flushing or interrupted:
                flush()
                bar.set_postfix(loss=f"{sum(progress.mean_loss().values()):.3f}",
                                ex_s=f"{progress.examples / (time.perf_counter() - start):.1f}")
            if evaluating:
                record = {"epoch": epoch, "epoch_progress": epoch + progress.next_step / steps,
                          "loss": progress.mean_loss(), "steps": progress.steps, "examples": progress.examples}
                report = self.evaluate(state, progress, epoch, record, f"epoch {epoch} step {progress.global_step}")
                # A Ctrl-C during the evaluation stops at the checkpoint that follows it.
                interrupted = any_process(self.interrupt.raised)
            if interrupted or checkpoint_due:
                self.events.flush()
                save_checkpoint(self.latest, progress.global_step, state_dict(state), dataclasses.asdict(progress))
            for line in report:
                say(line)
            report = []
            if interrupted or progress.stopped_early:
                break
        bar.close()
        if interrupted:
            say(f"interrupted: checkpoint saved at epoch {epoch} step {progress.next_step}; "
                f"continue with --resume {self.run_dir}")
            return state, True
        if progress.stopped_early:
            return state, False
        flush()
        record = {"epoch": epoch, **self._epoch_stats(epoch, progress, first_step, start)}
        if config.eval_every_steps:  # where each evaluation lies, in epochs trained (curves.png's axis)
            record["epoch_progress"] = epoch + 1
        report = self.evaluate(state, progress, epoch, record, f"epoch {epoch}")
        progress.epoch, progress.next_step = epoch + 1, 0
        self.events.flush()
        save_checkpoint(self.latest, progress.global_step, state_dict(state), dataclasses.asdict(progress))
        for line in report:
            say(line)
        if any_process(self.interrupt.raised):
            say(f"interrupted: checkpoint saved at the end of epoch {epoch}; continue with --resume {self.run_dir}")
            return state, True
        return state, False

    def _epoch_stats(self, epoch: int, progress: Progress, first_step: int, start: float) -> dict:
        """The finished epoch's losses, speed and PCGrad statistics (also as TensorBoard scalars), and with plain
        feedback a line saying them."""
        config = self.run.config
        result = progress.epoch_stats(config.tasks, config.pcgrad, time.perf_counter() - start,
                                      max(progress.next_step - first_step, 1))
        pcgrad = {"pcgrad/conflict_rate": result["pcgrad_conflict_rate"], **{
            f"pcgrad/cosine/{pair}": c for pair, c in result["pcgrad_cosine"].items()}} if config.pcgrad else {}
        self.events.scalars(progress.global_step, {"examples_per_s": result["examples_per_s"], **pcgrad})
        if plain(self.quiet):
            losses = " ".join(f"{t}={v:.4f}" for t, v in result["loss"].items())
            say(f"epoch {epoch}: {progress.steps} steps, loss {losses}, {result['examples_per_s']:.1f} examples/s")
        return result
