"""A run: its settings, model, tokenized task data and device mesh, and the files of its directory.

Run directory layout:
    config.json         every setting of the run
    metrics.jsonl       one line per evaluation: losses, dev metrics, PCGrad statistics, speed
    events.out.tfevents.*  the same as TensorBoard scalars, with the losses every --log-every steps
    checkpoints/latest  TrainState (params, optimizer state, step) and the loop's progress (train/checkpointing.py)
    checkpoints/best    parameters of the best evaluation by --select-by
    best_encoder/       the best encoder as a converted checkpoint directory (convert/flax_to_pt.py reads it)
    predictions/        <task>-<split>-output.csv of the best evaluation, in the CS224N layout
    curves.png          losses and dev metrics per evaluation
"""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bert_flax import CheckpointError, Tokenizer, from_pretrained, save_pretrained
from data import input_pipeline, quiet_preparation
from data.tasks import DataError
from data.teachers import read_teacher

from . import checkpointing
from .config import TrainConfig
from .distributed import is_main_process
from .feedback import plain
from .metrics import overall_score, prediction_file, task_metric, write_predictions
from .model import MultitaskBert
from .plots import plot_curves
from .predictor import Predictor

__all__ = ["RunError", "Run", "DEFAULT_CHECKPOINT", "enable_compilation_cache", "keep_freed_memory",
           "set_up_process", "ensure_init_checkpoint", "native_bfloat16", "resolved_dtype", "read_metrics",
           "best_params", "save_checkpoint", "save_best", "finish_run", "load_run"]

DEFAULT_CHECKPOINT = Path("checkpoints/minilm-l6")


class RunError(RuntimeError):
    """A run that cannot start or continue, with a message for the user."""


def enable_compilation_cache(directory: Path = Path(".cache/jax")) -> None:
    """Keeps compiled XLA programs on disk: a later run (or test) with the same shapes skips compilation.

    Every program is kept, however quick to compile: a run compiles dozens of small ones (evaluation, checkpoint
    slicing) that together cost seconds at each start, and on disk they take a few kilobytes each."""
    jax.config.update("jax_compilation_cache_dir", str(directory.resolve()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def keep_freed_memory() -> None:
    """Has glibc's malloc serve every block from one heap and keep what is freed there. Call it before the first
    JAX computation. By default a block over 32 MiB (the word-embedding gradient of every task call: 30522 x 384
    float32, 47 MB) is mapped fresh and unmapped when freed, and so is a thread's whole arena once all of it is
    free: each gradient call page-faults in every page of its buffers again (docs/benchmarks.md has the
    figures). The heap then stays at the run's peak size. Does nothing where the C library has no `mallopt`
    (not glibc)."""
    try:
        mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    except (OSError, TypeError):  # no C library loadable by name None (Windows)
        return
    if mallopt is not None:
        mallopt(M_MMAP_MAX, 0)
        mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
        mallopt(M_ARENA_MAX, 1)


M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # mallopt's parameters, glibc's malloc.h


def set_up_process() -> None:
    """What every process that trains or evaluates sets before its first JAX computation: the persistent
    compilation cache and malloc keeping freed memory."""
    enable_compilation_cache()
    keep_freed_memory()


def ensure_init_checkpoint(path: str) -> Path:
    """The converted encoder checkpoint directory: the default one is converted from the packaged model on first
    use, and a Hugging Face BERT directory once into .cache/converted (convert/pt_to_flax.py)."""
    from convert.pt_to_flax import convert_checkpoint, ensure_flax_checkpoint

    path = Path(path)
    if not (path / "params").is_dir() and path.resolve() == DEFAULT_CHECKPOINT.resolve():
        print(convert_checkpoint(out_dir=path))
        return path
    try:
        return ensure_flax_checkpoint(path, Path(".cache/converted"))
    except CheckpointError as err:
        raise RunError(str(err)) from None


def _placeholder_batch(rows: int) -> dict:
    # Head shapes do not depend on the batch: initialise on the smallest one.
    tokens = jnp.zeros((rows, 2), jnp.int32)
    return {"input_ids": tokens, "token_type_ids": tokens, "attention_mask": jnp.ones_like(tokens)}


def native_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True where the devices are CPUs with bfloat16 instructions (x86 AVX-512 BF16 or AMX-BF16, Arm BF16: the
    flags of `cpuinfo`), on which the bfloat16 step runs 1.4-2x faster than float32 (docs/benchmarks.md)."""
    if jax.devices()[0].platform != "cpu":
        return False
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return False
    flags = {flag for line in lines if line.startswith(("flags", "Features"))
             for flag in line.partition(":")[2].split()}
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolved_dtype(config: TrainConfig) -> TrainConfig:
    """The config with --dtype auto made concrete: bfloat16 where `native_bfloat16()`, else float32."""
    if config.dtype != "auto":
        return config
    return dataclasses.replace(config, dtype="bfloat16" if native_bfloat16() else "float32")


class Run:
    """What a run needs in hand: config, model, tokenized task data, the device mesh. With `quiet` (or stderr not
    a terminal: train/feedback.py), plain lines instead of progress bars, and TFDS silent while it prepares task
    data."""

    def __init__(self, config: TrainConfig, encoder_dir: Path, mesh: Mesh | None = None, quiet: bool = False):
        self.config = config = resolved_dtype(config)
        if plain(quiet):
            quiet_preparation()
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
        self.predictor = Predictor(self.model, config, self.mesh, quiet=quiet)

    @functools.cached_property
    def data(self) -> dict[str, input_pipeline.TaskData]:
        """Per task, its tokenized splits (prepared and cached on first use)."""
        cfg = self.config
        try:
            data = {
                task: input_pipeline.TaskData(
                    cfg.spec(task),
                    mode=cfg.sequence_mode(task),
                    batch_size=cfg.batch_size * cfg.grad_accumulation,  # split into micro-batches by the step
                    max_length=cfg.max_length,
                    num_buckets=cfg.num_buckets,
                    tokenizer=self.tokenizer,
                    swap_pairs=cfg.swap_pairs and cfg.sequence_mode(task) == "cross",
                    holdout=cfg.holdouts().get(task),
                )
                for task in cfg.tasks
            }
            for task, path in cfg.teacher_files().items():
                data[task].teach(read_teacher(path, cfg.spec(task), data[task].split("train").ids))
        except DataError as err:
            raise RunError(str(err)) from None
        return data

    def length_warnings(self) -> list[str]:
        """A warning for each task of which --max-length cuts more than 5% of the training sentences (of the
        pairs, where they are encoded as one sequence)."""
        lines = []
        for task, data in self.data.items():
            share = data.cut_share()
            if share > 0.05:
                what = "pairs" if data.mode == "cross" else "sentences"
                lines.append(f"--max-length {self.config.max_length} cuts {share:.0%} of {task}'s training {what}")
        return lines

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
        # Counted on the host as the batches are built: the device arrays may span other processes.
        examples = collections.deque()

        def counted(steps):
            for batches in steps:
                examples.append({task: int(b["weights"].sum()) for task, b in batches.items()})
                yield batches

        steps = counted(self.stream().epoch(epoch, start_step))
        for batches in input_pipeline.prefetch_to_device(steps, self.mesh):
            yield batches, examples.popleft()

    def init_params(self):
        """Fresh heads (seeded) around the pretrained encoder, replicated over the mesh; the encoder's top
        `reinit_layers` layers are fresh too, from the model's own initialisers in the same seeded call."""
        return jax.jit(self._init, out_shardings=self.replicated)(
            jax.random.key(self.config.seed), input_pipeline.place(self.encoder_params, self.replicated))

    def params_shape(self):
        """The shapes, dtypes and shardings of `init_params()`'s tree, without computing it (restore targets)."""
        shapes = jax.eval_shape(self._init, jax.random.key(self.config.seed), self.encoder_params)
        return jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.replicated), shapes)

    def _init(self, key, encoder):
        examples = {t: _placeholder_batch(2 if self.config.sequence_mode(t) == "bi" else 1)
                    for t in self.config.tasks}
        layers = self.bert_config.num_hidden_layers
        fresh_layers = {f"layer_{i}" for i in range(layers - self.config.reinit_layers, layers)}
        params = self.model.init(key, examples, method=MultitaskBert.all_tasks)["params"]
        stack = {name: params["bert"]["encoder"][name] if name in fresh_layers else layer
                 for name, layer in encoder["encoder"].items()}
        return {**params, "bert": {**encoder, "encoder": stack}}

    def splits(self, task: str) -> tuple[str, ...]:
        """The splits `task` declares (a task without a test file has none)."""
        return tuple(self.config.spec(task).files)

    def predict(self, params, split: str, max_examples: int = 0, during: str = "") -> dict[str, np.ndarray]:
        """Per task that has the split, predictions for every example of `split` in file order, or for the first
        `max_examples`; the progress bars are named "`during` <split> <task>"."""
        preds = {}
        for task in self.config.tasks:
            if split in self.splits(task):
                data = self.data[task]
                orders = data.orders(split)
                if max_examples:
                    orders = [encoded.head(max_examples) for encoded in orders]
                label = f"{during} {split} {task}".lstrip()
                preds[task] = self.predictor(params, task, orders[0], data.buckets, *orders[1:], label=label)
        return preds

    def score(self, split: str, preds: dict[str, np.ndarray]) -> dict[str, float]:
        """Metrics of `preds` for the tasks whose `split` has labels, and the overall score; a task's
        predictions are those of the first examples of the split (all of them, or `predict`'s max_examples)."""
        metrics = {}
        for task, task_preds in preds.items():
            labels = self.data[task].split(split).labels
            if labels is not None:
                metrics[task] = task_metric(self.config.spec(task), task_preds, np.asarray(labels[: len(task_preds)]))
        score = overall_score(metrics, {t: self.config.spec(t) for t in self.config.tasks})
        if score is not None:
            metrics["overall"] = score
        return metrics

    def write_predictions(self, split: str, preds: dict[str, np.ndarray], run_dir: Path) -> None:
        """Writes each task's prediction file (metrics.prediction_file) into `run_dir` (from the main process)."""
        if not is_main_process():
            return
        for task, task_preds in preds.items():
            path = prediction_file(run_dir, task, split)
            try:
                write_predictions(path, self.config.spec(task), self.data[task].split(split).ids, task_preds)
            except OSError as err:
                raise RunError(f"{path}: cannot write predictions ({err.strerror or err}); "
                               "the previous file is kept") from None

    def evaluate(self, params, split: str, run_dir: Path | None = None) -> dict[str, float]:
        """Predicts every task on `split`; returns metrics where labels exist, writes the prediction files into
        `run_dir` if given."""
        preds = self.predict(params, split)
        if run_dir is not None:
            self.write_predictions(split, preds, run_dir)
        return self.score(split, preds)


def read_metrics(run_dir: Path) -> list[dict]:
    """The run's metrics.jsonl, one record per line."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def best_params(run_dir: Path, run: Run):
    """The best checkpoint's parameters and metadata ({"epoch", "dev"})."""
    _, best = checkpointing.managers(run_dir)
    if best.latest_step() is None:
        raise RunError(f"{run_dir}: no best checkpoint (has an evaluation finished?)")
    tree, meta = checkpointing.restore(best, {"params": run.params_shape()})
    return tree["params"], meta


def save_best(run_dir: Path, params, dev: dict) -> None:
    """Keeps `params` as the best checkpoint of a run made without training epochs (a soup, train/soup.py)."""
    _, best = checkpointing.managers(run_dir)
    save_checkpoint(best, 0, {"params": params}, {"epoch": 0, "dev": dev})


def save_checkpoint(manager, step: int, tree, meta: dict) -> None:
    """Writes a checkpoint (train/checkpointing.py); a write that fails is a RunError naming the reason."""
    try:
        checkpointing.save(manager, step, tree, meta)
    except checkpointing.CheckpointWriteError as err:
        raise RunError(str(err)) from None


def finish_run(run: Run, run_dir: Path, plot=plot_curves) -> dict:
    """With the best parameters: writes test predictions, and dev ones unless the best evaluation wrote them
    (with --eval-max-examples it scored only part of dev and wrote none), best_encoder/ and the figure that `plot`
    draws into the run directory (curves.png). Returns the best parameters' metrics on the whole dev set."""
    params, meta = best_params(run_dir, run)
    dev_written = not run.config.eval_max_examples and all(
        prediction_file(run_dir, task, "dev").exists() for task in run.config.tasks)
    dev = meta["dev"] if dev_written else run.evaluate(params, "dev", run_dir)
    run.evaluate(params, "test", run_dir)
    if is_main_process():
        save_pretrained(run_dir / "best_encoder", run.bert_config, jax.device_get(params["bert"]),
                        run.encoder_dir / "vocab.txt", run.tokenizer.lowercase)
        plot(run_dir)
    return dev


def load_run(run_dir: Path, quiet: bool = False) -> tuple[Run, dict]:
    """A finished run's Run object (`quiet`: plain lines instead of progress bars) and best parameters (for
    evaluation and prediction)."""
    set_up_process()
    if not (run_dir / "config.json").exists():
        raise RunError(f"{run_dir}: not a run directory (no config.json)")
    config = TrainConfig.from_json(run_dir / "config.json")
    encoder_dir = run_dir / "best_encoder"
    run = Run(config, encoder_dir if encoder_dir.is_dir() else ensure_init_checkpoint(config.init_checkpoint),
              quiet=quiet)
    params, _ = best_params(run_dir, run)
    return run, params
