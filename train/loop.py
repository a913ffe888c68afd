"""The training loop: set-up, epochs of multi-task steps, evaluation, checkpoints and outputs.

Run directory layout:
    config.json         every setting of the run
    metrics.jsonl       one line per epoch: losses, dev metrics, PCGrad statistics, speed
    checkpoints/latest  orbax: TrainState (params, optimizer state, step) + data position
    checkpoints/best    orbax: parameters of the best epoch by overall dev score
    best_encoder/       the best encoder as a converted checkpoint directory (convert/flax_to_pt.py reads it)
    predictions/        {sst,para,sts}-{dev,test}-output.csv of the best epoch
    curves.png          losses and dev metrics per epoch
"""

from __future__ import annotations

import collections
import errno
import functools
import json
import os
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from bert_flax import CheckpointError, Tokenizer, from_pretrained, save_pretrained
from data import disable_progress_bars, input_pipeline
from data.tasks import FAMILIES, DataError

from .config import TASKS, TrainConfig
from .distributed import any_process, barrier, is_main_process, main_process_first
from .evaluate import Predictor, overall_score, task_metric, write_predictions
from .model import MultitaskBert
from .step import TrainState, evaluated_params, init_state, make_grad_fns, make_optimizer, make_update, train_step

__all__ = ["RunError", "train", "evaluate_run", "load_run", "finish_run", "save_best", "read_metrics"]

DEFAULT_CHECKPOINT = Path("checkpoints/minilm-l6")


class RunError(RuntimeError):
    """A run that cannot start or continue, with a message for the user."""


def enable_compilation_cache(directory: Path = Path(".cache/jax")) -> None:
    """Keeps compiled XLA programs on disk: a later run (or test) with the same shapes skips compilation.

    Every program is kept, however quick to compile: a run compiles dozens of small ones (evaluation, checkpoint
    slicing) that together cost seconds at each start, and on disk they take a few kilobytes each."""
    jax.config.update("jax_compilation_cache_dir", str(directory.resolve()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def ensure_init_checkpoint(path: str) -> Path:
    """The encoder checkpoint directory; the default one is converted from the packaged model on first use."""
    path = Path(path)
    if not (path / "params").is_dir() and path.resolve() == DEFAULT_CHECKPOINT.resolve():
        from convert.pt_to_flax import convert_checkpoint

        print(convert_checkpoint(out_dir=path))
    return path


def _placeholder_batch(rows: int) -> dict:
    # Head shapes do not depend on the batch: initialise on the smallest one.
    tokens = jnp.zeros((rows, 2), jnp.int32)
    return {"input_ids": tokens, "token_type_ids": tokens, "attention_mask": jnp.ones_like(tokens)}


class Run:
    """What a run needs in hand: config, model, tokenized task data, the device mesh."""

    def __init__(self, config: TrainConfig, encoder_dir: Path, mesh: Mesh | None = None):
        self.config = config
        self.mesh = mesh or input_pipeline.data_mesh()
        if config.batch_size % self.mesh.size or config.eval_batch_size % self.mesh.size:
            raise RunError(
                f"--batch-size {config.batch_size} and --eval-batch-size {config.eval_batch_size} "
                f"must divide by the device count {self.mesh.size}"
            )
        try:
            bert, self.encoder_params = from_pretrained(encoder_dir)
            self.tokenizer = Tokenizer.from_pretrained(encoder_dir)
        except (CheckpointError, FileNotFoundError) as err:
            raise RunError(str(err)) from None
        if config.reinit_layers > bert.config.num_hidden_layers:
            raise RunError(f"--reinit-layers {config.reinit_layers}: the encoder in {encoder_dir} has "
                           f"{bert.config.num_hidden_layers} layers")
        self.bert_config = bert.config
        self.encoder_dir = encoder_dir
        self.model = MultitaskBert(bert.config, config, dtype=jnp.dtype(config.dtype),
                                   encoder_chunks=config.encoder_chunks)
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.predictor = Predictor(self.model, config, self.mesh)

    @functools.cached_property
    def data(self) -> dict[str, input_pipeline.TaskData]:
        """Per task, its tokenized splits (prepared and cached on first use)."""
        cfg = self.config
        try:
            return {
                task: input_pipeline.TaskData(
                    TASKS[task],
                    mode=cfg.sequence_mode(task),
                    batch_size=cfg.batch_size,
                    max_length=cfg.max_length,
                    num_buckets=cfg.num_buckets,
                    tokenizer=self.tokenizer,
                    source_dir=cfg.data_dir,
                    swap_pairs=cfg.swap_pairs and cfg.sequence_mode(task) == "cross",
                )
                for task in cfg.tasks
            }
        except DataError as err:
            raise RunError(str(err)) from None

    def stream(self) -> input_pipeline.MultiTaskStream:
        """The multi-task training stream (deterministic given the seed and epoch)."""
        cfg = self.config
        return input_pipeline.MultiTaskStream(
            [self.data[t] for t in cfg.tasks],
            strategy=cfg.sampling,
            pool_batches=cfg.pool_batches,
            num_examples=cfg.samples_per_task,
            num_epochs=cfg.epochs,
            seed=cfg.seed,
        )

    def total_steps(self) -> int:
        """Updates over every epoch of the run (the length of a decaying learning-rate schedule)."""
        stream = self.stream()
        return sum(stream.steps_per_epoch(epoch) for epoch in range(self.config.epochs))

    def train_steps(self, epoch: int, start_step: int = 0):
        """The epoch's steps from `start_step` as ({task: batch on the devices}, {task: real examples})."""
        families = {TASKS[t]: t for t in self.config.tasks}
        # Counted on the host as the batches are built: the device arrays may span other processes.
        examples = collections.deque()

        def counted(steps):
            for batches in steps:
                examples.append({families[name]: int(b["weights"].sum()) for name, b in batches.items()})
                yield batches

        steps = counted(self.stream().epoch(epoch, start_step))
        for batches in input_pipeline.prefetch_to_device(steps, self.mesh):
            yield {families[name]: batch for name, batch in batches.items()}, examples.popleft()

    def init_params(self):
        """Fresh heads (seeded) around the pretrained encoder, replicated over the mesh; the encoder's top
        `reinit_layers` layers are fresh too, from the model's own initialisers in the same seeded call."""
        examples = {t: _placeholder_batch(2 if self.config.sequence_mode(t) == "bi" else 1)
                    for t in self.config.tasks}
        layers = self.bert_config.num_hidden_layers
        fresh_layers = {f"layer_{i}" for i in range(layers - self.config.reinit_layers, layers)}

        def init(key, encoder):
            params = self.model.init(key, examples, method=MultitaskBert.all_tasks)["params"]
            stack = {name: params["bert"]["encoder"][name] if name in fresh_layers else layer
                     for name, layer in encoder["encoder"].items()}
            return {**params, "bert": {**encoder, "encoder": stack}}

        return jax.jit(init, out_shardings=self.replicated)(
            jax.random.key(self.config.seed), input_pipeline.place(self.encoder_params, self.replicated))

    def predict(self, params, split: str) -> dict[str, np.ndarray]:
        """Per task that has the split (CFIMDB ships no test file), predictions for every example of `split`,
        in file order."""
        preds = {}
        for task in self.config.tasks:
            if split not in FAMILIES[TASKS[task]].files:
                continue
            data = self.data[task]
            swapped = data.split(split, swapped=True) if data.swap_pairs else None
            preds[task] = self.predictor(params, task, data.split(split), data.buckets, swapped)
        return preds

    def score(self, split: str, preds: dict[str, np.ndarray]) -> dict[str, float]:
        """Metrics of `preds` for the tasks whose `split` has labels, and the overall score."""
        metrics = {}
        for task, task_preds in preds.items():
            labels = self.data[task].split(split).labels
            if labels is not None:
                metrics[task] = task_metric(task, task_preds, np.asarray(labels))
        score = overall_score(metrics)
        if score is not None:
            metrics["overall"] = score
        return metrics

    def write_predictions(self, split: str, preds: dict[str, np.ndarray], out_dir: Path) -> None:
        """Writes `{task}-{split}-output.csv` files into `out_dir` (from the main process)."""
        if not is_main_process():
            return
        for task, task_preds in preds.items():
            path = out_dir / f"{task}-{split}-output.csv"
            try:
                write_predictions(path, task, self.data[task].split(split).ids, task_preds)
            except OSError as err:
                raise RunError(f"{path}: cannot write predictions ({err.strerror or err}); "
                               "the previous file is kept") from None

    def evaluate(self, params, split: str, out_dir: Path | None = None) -> dict[str, float]:
        """Predicts every task on `split`; returns metrics where labels exist, writes files if `out_dir`."""
        preds = self.predict(params, split)
        if out_dir is not None:
            self.write_predictions(split, preds, out_dir)
        return self.score(split, preds)


def _say(message: str) -> None:
    """Prints from the main process only (one line per event in a multi-process run)."""
    if is_main_process():
        print(message)


# Orbax writes a checkpoint under this name and renames it when complete.
_UNFINISHED_CHECKPOINTS = "*.orbax-checkpoint-tmp*"


def _remove_unfinished_checkpoints(directory: Path, patience_s: float = 30.0) -> None:
    """Deletes the temporary directories of checkpoint writes that never finished (a kill, a full disk).

    Orbax writes a checkpoint into `<step>.orbax-checkpoint-tmp...` and renames it when complete. After a
    failed write in this process, orbax's other writer threads of that checkpoint can still be adding files
    (a full disk fails one item first), so a directory found not empty while being deleted is tried again
    until `patience_s` has passed. (Orbax's own clean-up runs once, in the background, and gives up.)"""
    deadline = time.monotonic() + patience_s
    for unfinished in directory.glob(_UNFINISHED_CHECKPOINTS):
        while unfinished.exists():
            try:
                shutil.rmtree(unfinished)
            except FileNotFoundError:
                pass
            except OSError as err:
                if err.errno != errno.ENOTEMPTY or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def _wait_for_writers(directory: Path, quiet_s: float = 0.5, patience_s: float = 30.0) -> None:
    """Returns once no file under `directory`'s unfinished checkpoints has changed for `quiet_s`: when one item
    of a checkpoint fails (a full disk), orbax reports it while the writers of the other items go on."""
    def snapshot():
        stats = {p: p.stat() for p in directory.glob(_UNFINISHED_CHECKPOINTS + "/**/*") if p.is_file()}
        return {(str(p), stat.st_size, stat.st_mtime_ns) for p, stat in stats.items()}

    deadline = time.monotonic() + patience_s
    previous, quiet_since = None, time.monotonic()
    while time.monotonic() < deadline:
        try:
            current = snapshot()
        except FileNotFoundError:  # a file renamed or removed while listed
            current = None
        if current != previous:
            previous, quiet_since = current, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return
        time.sleep(0.05)


def _checkpoint_managers(run_dir: Path) -> tuple[ocp.CheckpointManager, ocp.CheckpointManager]:
    directories = [(run_dir / "checkpoints" / name).resolve() for name in ("latest", "best")]
    if is_main_process():
        for directory in directories:
            _remove_unfinished_checkpoints(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True, cleanup_tmp_directories=False)
    latest, best = (ocp.CheckpointManager(directory, options=options) for directory in directories)
    return latest, best


def _state_dict(state: TrainState) -> dict:
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


def _os_error(err: Exception) -> str | None:
    """The operating system's reason for a failed write, or None if `err` is not one: tensorstore (orbax's
    array writer) reports file errors such as a full disk as ValueError carrying the OS error code."""
    if isinstance(err, OSError):
        return err.strerror or str(err)
    code = re.search(r"os_error_code='(\d+)'", str(err))
    return os.strerror(int(code.group(1))) if code else None


def _save(manager: ocp.CheckpointManager, step: int, tree, meta: dict) -> None:
    try:
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)))
        manager.wait_until_finished()
    except (OSError, ValueError) as err:
        reason = _os_error(err)
        if reason is None:
            raise
        _wait_for_writers(Path(manager.directory))
        raise RunError(f"{manager.directory}: cannot write checkpoint {step} ({reason}); "
                       "the previous checkpoint is kept") from None


def _restore(manager: ocp.CheckpointManager, target) -> tuple:
    restored = manager.restore(
        manager.latest_step(),
        args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()),
    )
    return restored["state"], restored["meta"]


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
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(path.read_text().splitlines(keepends=True)[:epochs]))
        tmp.replace(path)


def train(config: TrainConfig, run_dir: Path, resume: bool = False, quiet: bool = False) -> dict:
    """Trains (or resumes) a run in `run_dir`; returns the best epoch's dev metrics ({} if interrupted).

    Ctrl-C during the training steps saves a checkpoint and returns; before or after them it ends the process
    with exit code 130."""
    previous = signal.signal(signal.SIGINT, functools.partial(_exit_interrupted, run_dir))
    try:
        return _train(config, run_dir, resume, quiet)
    finally:
        signal.signal(signal.SIGINT, previous)


def _train(config: TrainConfig, run_dir: Path, resume: bool, quiet: bool) -> dict:
    enable_compilation_cache()
    if quiet:
        disable_progress_bars()
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume and (run_dir / "config.json").exists():
        raise RunError(f"{run_dir} holds a run already: continue it with --resume {run_dir} "
                       "or choose another --run-dir")
    barrier("run directory checked")  # before the main process writes config.json
    if is_main_process():  # on --resume the saved settings, or more --epochs
        tmp = run_dir / "config.json.tmp"
        config.to_json(tmp)
        tmp.replace(run_dir / "config.json")
    run = Run(config, main_process_first("init checkpoint", lambda: ensure_init_checkpoint(config.init_checkpoint)))
    main_process_first("task data", lambda: run.data)
    tx = make_optimizer(config, run.total_steps())
    grad_fns, update = make_grad_fns(run.model, config), make_update(config, tx)
    # Every leaf replicated (the step counters too): the update's output shardings then match its inputs and it
    # compiles once, not again at the second step.
    state = jax.jit(functools.partial(init_state, tx=tx), out_shardings=run.replicated)(run.init_params())
    latest, best = _checkpoint_managers(run_dir)
    position = {"epoch": 0, "next_step": 0, "global_step": 0, "best_overall": None, "best_epoch": None}
    if resume:
        if latest.latest_step() is None:
            _say(f"{run_dir}: no checkpoint yet, starting from the beginning")
        else:
            tree, position = _restore(latest, _state_dict(state))
            state = TrainState(**tree)
        if is_main_process():
            _trim_metrics(run_dir, position["epoch"])
    interrupt = _InterruptFlag()
    try:
        for epoch in range(position["epoch"], config.epochs):
            state, epoch_stats = _run_epoch(run, epoch, state, position, grad_fns, update, latest, interrupt, quiet)
            if epoch_stats is None:
                _say(f"interrupted: checkpoint saved at epoch {epoch} step {position['next_step']}; "
                      f"continue with --resume {run_dir}")
                return {}
            params = evaluated_params(state, config)
            dev_preds = run.predict(params, "dev")
            dev = run.score("dev", dev_preds)
            if is_main_process():
                with open(run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps({"epoch": epoch, **epoch_stats, "dev": dev}) + "\n")
            score = dev.get("overall", -np.inf)
            is_best = position["best_overall"] is None or score > position["best_overall"]
            if is_best:
                position.update(best_overall=score, best_epoch=epoch)
                # Written before the best checkpoint: a kill in between repeats the epoch, which writes them again.
                run.write_predictions("dev", dev_preds, run_dir / "predictions")
                # A run killed between the two saves has saved this epoch's best checkpoint already.
                if best.latest_step() != epoch:
                    _save(best, epoch, {"params": params}, {"epoch": epoch, "dev": dev})
            position.update(epoch=epoch + 1, next_step=0)
            _save(latest, position["global_step"], _state_dict(state), position)
            _say(f"epoch {epoch} dev: " + " ".join(f"{k}={v:.4f}" for k, v in dev.items())
                 + (" (best)" if is_best else ""))
            if any_process(interrupt.raised):
                _say(f"interrupted: checkpoint saved at the end of epoch {epoch}; continue with --resume {run_dir}")
                return {}
    finally:
        interrupt.restore()
    return finish_run(run, run_dir)


def _fresh_totals(tasks) -> dict:
    """Per-epoch sums, kept in the checkpoint so a resumed epoch reports what an uninterrupted one would."""
    return {"loss": {t: 0.0 for t in tasks}, "loss_steps": {t: 0 for t in tasks}, "examples": 0, "steps": 0,
            "conflicts": 0.0, "cosine": np.zeros((len(tasks), len(tasks))).tolist()}


def _run_epoch(run: Run, epoch, state, position, grad_fns, update, latest, interrupt, quiet):
    """Steps of one epoch from position["next_step"], advancing `position`; returns (state, epoch stats),
    with stats None when interrupted (after saving a checkpoint)."""
    config, tasks = run.config, run.config.tasks
    steps = run.stream().steps_per_epoch(epoch)
    # "rbg" keys: dropout masks from XLA's RngBitGenerator compile in half the time of threefry's and run faster.
    base_key = jax.random.key(config.seed, impl="rbg")
    totals = position.setdefault("totals", _fresh_totals(tasks))
    pending, pcgrad_stats = [], []
    start, first_step, stop = time.perf_counter(), position["next_step"], False

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
                totals["loss"][task] += float(loss)
                totals["loss_steps"][task] += 1
        for conflicts, cosine in jax.device_get(pcgrad_stats):
            totals["conflicts"] += float(conflicts)
            totals["cosine"] = (np.asarray(totals["cosine"]) + cosine).tolist()
        pending, pcgrad_stats = [], []

    bar = tqdm(total=steps, initial=first_step, desc=f"epoch {epoch}", unit="step",
               disable=quiet or not is_main_process())
    for batches, examples in run.train_steps(epoch, first_step):
        global_step = position["global_step"]
        state, losses, stats = train_step(state, batches, jax.random.fold_in(base_key, global_step), grad_fns, update)
        pending.extend((global_step, task, losses[task], examples[task]) for task in tasks)
        if stats:
            pcgrad_stats.append((stats["num_conflicts"], stats["cosine"]))
        totals["examples"] += int(sum(p[3] for p in pending[-len(tasks):]))
        totals["steps"] += 1
        position.update(next_step=position["next_step"] + 1, global_step=global_step + 1)
        bar.update(1)
        # Read once: a signal between two reads must not skip the checkpoint. After the epoch's last step the
        # epoch is finished instead (train() checks the flag again after the end-of-epoch checkpoint).
        stop = any_process(interrupt.raised) and position["next_step"] < steps
        checkpoint_due = config.save_every_steps and position["global_step"] % config.save_every_steps == 0
        if len(pending) >= 10 * len(tasks) or checkpoint_due or stop or position["next_step"] == steps:
            flush()
            mean_loss = sum(totals["loss"][t] / max(totals["loss_steps"][t], 1) for t in tasks)
            bar.set_postfix(loss=f"{mean_loss:.3f}", ex_s=f"{totals['examples'] / (time.perf_counter() - start):.1f}")
        if stop or (checkpoint_due and position["next_step"] < steps):
            _save(latest, position["global_step"], _state_dict(state), position)
        if stop:
            break
    bar.close()
    if stop:
        return state, None
    flush()
    elapsed, ran = time.perf_counter() - start, max(position["next_step"] - first_step, 1)
    result = {
        "loss": {t: totals["loss"][t] / max(totals["loss_steps"][t], 1) for t in tasks},
        "steps": totals["steps"],
        "examples": totals["examples"],
        "step_time_s": elapsed / ran,  # of the steps run since this process started the epoch
        "examples_per_s": ran * totals["examples"] / totals["steps"] / elapsed,
    }
    if config.pcgrad:
        pairs = len(tasks) * (len(tasks) - 1) / 2
        result["pcgrad_conflict_rate"] = totals["conflicts"] / totals["steps"] / max(pairs, 1)
        mean_cosine = np.asarray(totals["cosine"]) / totals["steps"]
        result["pcgrad_cosine"] = {
            f"{a}-{b}": float(mean_cosine[i, j]) for i, a in enumerate(tasks) for j, b in enumerate(tasks) if i < j
        }
    del position["totals"]
    if quiet:
        losses = " ".join(f"{t}={v:.4f}" for t, v in result["loss"].items())
        _say(f"epoch {epoch}: {totals['steps']} steps, loss {losses}, {result['examples_per_s']:.1f} examples/s")
    return state, result


def read_metrics(run_dir: Path) -> list[dict]:
    """The run's metrics.jsonl, one record per line."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def plot_curves(run_dir: Path) -> Path:
    """Draws curves.png from metrics.jsonl: training loss per task and dev metrics per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    epochs = [r["epoch"] + 1 for r in records]
    fig, (ax_loss, ax_dev) = plt.subplots(1, 2, figsize=(10, 4))
    for task in records[0]["loss"]:
        ax_loss.plot(epochs, [r["loss"][task] for r in records], marker="o", label=task)
    for metric in records[0]["dev"]:
        ax_dev.plot(epochs, [r["dev"][metric] for r in records], marker="o", label=metric)
    ax_loss.set(title="training loss", xlabel="epoch")
    ax_dev.set(title="dev metrics", xlabel="epoch")
    for ax in (ax_loss, ax_dev):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    fig.savefig(run_dir / "curves.png", dpi=100)
    plt.close(fig)
    return run_dir / "curves.png"


def _best_params(run_dir: Path, params_target):
    _, best = _checkpoint_managers(run_dir)
    if best.latest_step() is None:
        raise RunError(f"{run_dir}: no best checkpoint (has an epoch finished?)")
    tree, meta = _restore(best, {"params": params_target})
    return tree["params"], meta


def save_best(run_dir: Path, params, dev: dict) -> None:
    """Keeps `params` as the best checkpoint of a run made without training epochs (a soup, train/soup.py)."""
    _, best = _checkpoint_managers(run_dir)
    _save(best, 0, {"params": params}, {"epoch": 0, "dev": dev})


def finish_run(run: Run, run_dir: Path, plot: Callable[[Path], Path] = plot_curves) -> dict:
    """With the best epoch's parameters: writes test predictions (and dev ones if the best epoch did not),
    best_encoder/ and the figure that `plot` draws into the run directory (curves.png)."""
    params, meta = _best_params(run_dir, run.init_params())
    out_dir = run_dir / "predictions"
    dev_written = all((out_dir / f"{task}-dev-output.csv").exists() for task in run.config.tasks)
    for split in ("test",) if dev_written else ("dev", "test"):
        run.evaluate(params, split, out_dir)
    if is_main_process():
        save_pretrained(run_dir / "best_encoder", run.bert_config, jax.device_get(params["bert"]),
                        run.encoder_dir / "vocab.txt", run.tokenizer.lowercase)
        plot(run_dir)
    return meta["dev"]


def load_run(run_dir: Path) -> tuple[Run, dict]:
    """A finished run's Run object and best parameters (for evaluation and prediction)."""
    enable_compilation_cache()
    if not (run_dir / "config.json").exists():
        raise RunError(f"{run_dir}: not a run directory (no config.json)")
    config = TrainConfig.from_json(run_dir / "config.json")
    encoder_dir = run_dir / "best_encoder"
    run = Run(config, encoder_dir if encoder_dir.is_dir() else ensure_init_checkpoint(config.init_checkpoint))
    params, _ = _best_params(run_dir, run.init_params())
    return run, params


def evaluate_run(run_dir: Path, splits: tuple[str, ...] = ("dev", "test")) -> dict:
    """Re-scores a run's best checkpoint on dev and rewrites its prediction files."""
    run, params = load_run(run_dir)
    metrics = {}
    for split in splits:
        scores = run.evaluate(params, split, run_dir / "predictions")
        metrics.update({f"{split}_{k}": v for k, v in scores.items()})
    return metrics
