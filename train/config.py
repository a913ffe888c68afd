"""Training configuration: one dataclass holding every setting of a run, validated (the command line is
train/cli.py).

Tasks come from the registry (data/tasks.py): the built-in ones and those of --task-file. Per-task settings
name tasks as data (`--pooling mean,sst=cls`, `--pair-encoding para=cross`); nothing here branches on a name.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

from data.tasks import DataError, TaskSpec, registry

__all__ = ["TrainConfig", "ConfigError"]


class ConfigError(ValueError):
    """Settings that contradict each other or name something that does not exist."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run (saved as the run's config.json)."""

    tasks: tuple[str, ...] = ("sst", "para", "sts")
    task_files: tuple[str, ...] = ()  # TOML files declaring more tasks (data/tasks.py)
    option: str = "finetune"  # finetune | pretrain (encoder frozen, heads only)
    # cls (pooler output) | mean | max, optionally followed by per-task choices, e.g. "mean,sst=cls"
    pooling: str = "cls"
    # bi: two sentences encoded apart | cross: one [CLS] a [SEP] b [SEP] sequence | per pair task, e.g. "para=cross"
    pair_encoding: str = "bi"
    cos_feature: str = ""  # bi-encoded pair-classification tasks whose head also reads cos(u, v), e.g. "para"
    swap_pairs: bool = False  # cross-encoded pairs also trained, and predicted, with their sentences swapped
    regression_head: str = "linear"  # linear | cosine, per pair-regression task as in pooling
    regression_target: str = "binary"  # binary (label above the task's threshold) | scaled (label range to 0-1)
    shared_layer: bool = False
    zero_heads: bool = False  # task heads start at zero (big_vision's head_zeroinit) instead of seeded random values
    pcgrad: bool = False
    loss_weights: str = ""  # per-task multipliers of the loss's gradient, e.g. "sts=10" (a task left out: 1)
    dropout: float = 0.3
    label_smoothing: float = 0.0  # share of the uniform distribution in the targets of class-logit tasks
    rdrop: float = 0.0  # weight of R-Drop's KL term between two dropout passes of class-logit tasks (0: one pass)
    ordinal_loss: float = 0.0  # weight of the squared earth mover's distance in class-logit tasks' losses
    ranking_loss: float = 0.0  # weight of the CoSENT ranking term in pair-regression tasks' losses
    lr: float = 1e-5
    layer_lr_decay: float = 1.0  # the rate's factor per layer down from the heads (train/optim.layer_lr_scales)
    reinit_layers: int = 0  # top encoder layers that start from BERT's random initialisation instead of the checkpoint
    lr_schedule: str = "constant"  # constant | linear (from lr down to 0 at the run's last step)
    warmup_steps: int = 0  # updates of linear warmup from 0 to lr before the schedule
    warmup_ratio: float = 0.0  # the same as a share of the run's updates (with warmup_steps 0)
    max_grad_norm: float = 0.0  # clip the combined gradient to this global norm before AdamW (0: no clipping)
    weight_decay: float = 0.0
    decay_mask: str = "all"  # all | no-layernorm-bias
    ema: float = 0.0  # decay of a moving average of the parameters, which is then evaluated and kept (0: none)
    epochs: int = 10
    batch_size: int = 32  # per task
    grad_accumulation: int = 1  # micro-batches of batch_size per update: the update of N-times-larger batches
    samples_per_task: int = 10_000
    sampling: str = "resample"  # resample | min | proportional | annealed
    max_length: int = 128
    num_buckets: int = 20  # padded lengths per task: fewer compile faster, more pad less
    pool_batches: int = 256  # batches cut from one length-sorted pool: more pad less, but mix lengths less
    # The encoder's computation dtype (parameters and optimizer state stay float32); auto: bfloat16 on CPUs with
    # bfloat16 instructions, else float32 (train.run.resolved_dtype; the command line's default).
    dtype: str = "float32"
    encoder_chunks: int = 1  # row groups of a batch encoded apart in one program (MultitaskBert.encoder_chunks)
    seed: int = 11711
    init_checkpoint: str = "checkpoints/minilm-l6"
    data_dir: str = "data/cs224n"
    eval_batch_size: int = 128
    save_every_steps: int = 0  # 0: checkpoint at the end of each epoch only
    eval_every_steps: int = 0  # also evaluate on dev every N steps (0: at each epoch's end only)
    eval_max_examples: int = 0  # score dev during training on the first N examples per task (0: all of them)
    early_stopping_patience: int = 0  # stop after P evaluations in a row without a better --select-by score
    teachers: str = ""  # TASK=FILE[,TASK=FILE]: teacher files (train/teach.py) the tasks also learn from
    teacher_weight: float = 0.5  # the distillation loss's share of a taught task's objective
    teacher_annealing: bool = False  # instead, the gold share rises linearly from 0 to 1 over the run (BAM)
    holdout: str = ""  # TASK=K/N[,...]: train without fold K of N of TASK's training rows (a cross-fitted teacher)
    select_by: str = "overall"  # the dev score that picks the best epoch: overall, or a task's metric
    tensorboard: bool = True  # TensorBoard event files in the run directory
    log_every: int = 50  # steps between TensorBoard points of the training losses and learning rate
    preset: str | None = None

    def __post_init__(self):
        choices = {
            "option": ("finetune", "pretrain"),
            "sampling": ("resample", "min", "proportional", "annealed"),
            "lr_schedule": ("constant", "linear"),
            "decay_mask": ("all", "no-layernorm-bias"),
            "dtype": ("float32", "bfloat16", "auto"),
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"--{name.replace('_', '-')} {value!r}: choose from {', '.join(allowed)}")
        known = self.registry
        unknown = [t for t in self.tasks if t not in known]
        if unknown or not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"--tasks {','.join(self.tasks)}: choose distinct tasks among {', '.join(known)}"
                              + ("" if self.task_files else " (or declare more with --task-file)"))
        for task in _names(self.cos_feature):  # a preset may name a task the run leaves out
            if task not in known or known[task].kind != "pair-classification":
                raise ConfigError(f"--cos-feature {self.cos_feature!r}: name pair-classification tasks")
        crossed = [t for t in self.tasks if self.sequence_mode(t) == "cross"]
        blocked = [t for t in crossed if t in _names(self.cos_feature) or self.regression_head_of(t) == "cosine"]
        if blocked:
            raise ConfigError(f"--pair-encoding {self.pair_encoding}: a cross-encoded pair has no sentence embeddings; "
                              f"{blocked[0]} cannot have a cosine head or --cos-feature")
        if self.swap_pairs and not crossed:
            raise ConfigError("--swap-pairs: no task of the run encodes its pairs as one sequence; add --pair-encoding "
                              "cross or TASK=cross")
        for name in ("epochs", "batch_size", "grad_accumulation", "samples_per_task", "num_buckets", "pool_batches",
                     "eval_batch_size", "encoder_chunks", "log_every"):
            value = getattr(self, name)
            if value <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, not {value}")
        if self.max_length < 8:
            raise ConfigError(f"--max-length {self.max_length}: must be at least 8 ([CLS], [SEP] and some words)")
        if self.save_every_steps < 0:
            raise ConfigError(f"--save-every-steps {self.save_every_steps}: must be 0 (each epoch's end) or positive")
        for name, zero in (("eval_every_steps", "each epoch's end only"), ("eval_max_examples", "all of them"),
                           ("early_stopping_patience", "never stop early")):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be 0 ({zero}) or positive")
        if not 0 < self.lr < float("inf"):
            raise ConfigError(f"--lr {self.lr}: must be positive")
        if self.warmup_steps < 0 or not 0 <= self.warmup_ratio < 1 or self.warmup_steps and self.warmup_ratio:
            raise ConfigError(f"--warmup-steps {self.warmup_steps} --warmup-ratio {self.warmup_ratio}: give at most "
                              "one, steps 0 or more, or a ratio in [0, 1)")
        if not 0 <= self.max_grad_norm < float("inf"):
            raise ConfigError(f"--max-grad-norm {self.max_grad_norm}: must be 0 (no clipping) or positive")
        if not 0 <= self.weight_decay < float("inf"):
            raise ConfigError(f"--weight-decay {self.weight_decay}: must be 0 or positive")
        for name in ("dropout", "ema", "label_smoothing"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} {value}: must be in [0, 1)")
        logit_tasks = [t for t in self.tasks if self.spec(t).has_class_logits]
        regression_tasks = [t for t in self.tasks if self.spec(t).is_regression]
        for name, applies_to, what in (("rdrop", logit_tasks, "tasks with class logits"),
                                       ("ordinal_loss", logit_tasks, "tasks with class logits"),
                                       ("ranking_loss", regression_tasks, "pair-regression tasks")):
            flag, weight = f"--{name.replace('_', '-')}", getattr(self, name)
            if not 0 <= weight < float("inf"):
                raise ConfigError(f"{flag} {weight}: must be 0 (off) or a positive weight")
            if weight and not applies_to:
                raise ConfigError(f"{flag}: applies to {what}, and --tasks {','.join(self.tasks)} has none")
        if not 0 < self.layer_lr_decay <= 1:
            raise ConfigError(f"--layer-lr-decay {self.layer_lr_decay}: must be in (0, 1]")
        if self.layer_lr_decay != 1 and self.option == "pretrain":
            raise ConfigError("--layer-lr-decay: --option pretrain freezes the encoder, whose layers it would decay")
        if self.reinit_layers < 0:
            raise ConfigError(f"--reinit-layers {self.reinit_layers}: must be 0 (none) or more")
        if self.reinit_layers and self.option == "pretrain":
            raise ConfigError("--reinit-layers: --option pretrain freezes the encoder, whose re-initialised layers "
                              "would stay random")
        if self.select_by not in ("overall", *self.tasks):
            raise ConfigError(f"--select-by {self.select_by!r}: choose overall or a task of the run "
                              f"({','.join(self.tasks)})")
        self._loss_weights()
        self.teacher_files()
        self.holdouts()
        if not 0 <= self.teacher_weight <= 1:
            raise ConfigError(f"--teacher-weight {self.teacher_weight}: must be in [0, 1]")
        for flag, value, modes, kinds in self._per_task_flags():
            _per_task(flag, value, modes, [t for t in self.tasks if self.spec(t).kind in kinds])

    @functools.cached_property
    def registry(self) -> dict[str, TaskSpec]:
        """Every task this config can name: the built-in ones (files in --data-dir) and those of --task-file."""
        try:
            return registry(tuple(self.task_files), self.data_dir)
        except DataError as err:
            raise ConfigError(str(err)) from None

    def spec(self, task: str) -> TaskSpec:
        """The registry's declaration of `task`."""
        return self.registry[task]

    def _per_task_flags(self):
        return (("--pooling", self.pooling, ("cls", "mean", "max"), ("classification", "pair-classification",
                                                                    "pair-regression")),
                ("--pair-encoding", self.pair_encoding, ("bi", "cross"), ("pair-classification", "pair-regression")),
                ("--regression-head", self.regression_head, ("linear", "cosine"), ("pair-regression",)),
                ("--regression-target", self.regression_target, ("binary", "scaled"), ("pair-regression",)))

    def _choice(self, index: int, task: str) -> str:
        flag, value, modes, kinds = self._per_task_flags()[index]
        return _per_task(flag, value, modes, [t for t in self.tasks if self.spec(t).kind in kinds])[task]

    def pooling_of(self, task: str) -> str:
        """How `task`'s sentence (or cross-encoded pair) embeddings are pooled: "cls", "mean" or "max"."""
        return self._choice(0, task)

    def pair_mode(self, task: str) -> str:
        """How the sentence pairs of a pair task are encoded: "bi" or "cross"."""
        return self._choice(1, task)

    def sequence_mode(self, task: str) -> str:
        """How any task's examples are encoded: "single" (one sentence), or its pair_mode."""
        return self.pair_mode(task) if self.spec(task).is_pair else "single"

    def regression_head_of(self, task: str) -> str | None:
        """A pair-regression task's head, "linear" or "cosine" (None for other tasks)."""
        return self._choice(2, task) if self.spec(task).is_regression else None

    def regression_target_of(self, task: str) -> str | None:
        """A pair-regression task's training target, "binary" or "scaled" (None for other tasks)."""
        return self._choice(3, task) if self.spec(task).is_regression else None

    def uses_cos_feature(self, task: str) -> bool:
        """True for a pair-classification task whose head also reads cos(u, v) (--cos-feature)."""
        return task in _names(self.cos_feature)

    def _loss_weights(self) -> dict[str, float]:
        if not self.loss_weights:
            return {}
        return _task_values("--loss-weights", self.loss_weights, self.tasks, _positive_float,
                            f"TASK=W[,TASK=W] with TASK among the run's tasks ({','.join(self.tasks)}) and W a "
                            "positive number")

    def loss_weight(self, task: str) -> float:
        """The multiplier of `task`'s loss in its gradient (--loss-weights; 1 for a task it leaves out)."""
        return self._loss_weights().get(task, 1.0)

    def teacher_files(self) -> dict[str, str]:
        """{task: teacher file} of --teacher."""
        if not self.teachers:
            return {}
        return _task_values("--teacher", self.teachers, self.tasks, lambda path: path or None,
                            f"TASK=FILE[,TASK=FILE] with TASK among the run's tasks ({','.join(self.tasks)})")

    def holdouts(self) -> dict[str, tuple[int, int]]:
        """{task: (K, N)} of --holdout: the task trains without fold K of N of its training rows."""
        if not self.holdout:
            return {}
        return _task_values("--holdout", self.holdout, self.tasks, _fold,
                            f"TASK=K/N[,TASK=K/N] with TASK among the run's tasks ({','.join(self.tasks)}), N >= 2 "
                            "folds and K among 1 .. N")

    def to_json(self, path: str | Path) -> None:
        """Writes the config as JSON."""
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> "TrainConfig":
        """Reads a config written by `to_json` (also one written before the task registry: its sts- and para-
        named settings are read as the per-task settings that replaced them)."""
        values = _upgraded(json.loads(Path(path).read_text()))
        for name in ("tasks", "task_files"):
            values[name] = tuple(values.get(name, ()))
        return cls(**values)


def _upgraded(values: dict) -> dict:
    """Settings of a config.json from before the task registry, renamed: sts_head and sts_target became the
    per-task regression settings, para_cos_feature the list --cos-feature."""
    values = dict(values)
    if "sts_head" in values:
        values["regression_head"] = values.pop("sts_head")
    if "sts_target" in values:
        values["regression_target"] = values.pop("sts_target")
    if "para_cos_feature" in values:
        values["cos_feature"] = "para" if values.pop("para_cos_feature") else ""
    return values


def _names(value: str) -> list[str]:
    return [name for name in value.split(",") if name]


def _per_task(flag: str, value: str, modes: tuple[str, ...], tasks: list[str]) -> dict[str, str]:
    """{task: mode} for each of `tasks` from a flag's value: MODE, then TASK=MODE items, or only TASK=MODE items
    (the first mode listed for the tasks left out); ConfigError naming the flag otherwise."""
    first, *rest = value.split(",")
    default, per_task = (modes[0], [first, *rest]) if "=" in first else (first, rest)
    expected = (f"{', '.join(modes[:-1])} or {modes[-1]}, then TASK=MODE items with TASK among the run's tasks it "
                f"applies to ({','.join(tasks) or 'none'}), e.g. {modes[-1]},{(tasks or ['TASK'])[0]}={modes[0]}")
    try:
        if default not in modes or any("=" not in item for item in per_task):
            raise ConfigError
        chosen = _task_values(flag, ",".join(per_task), tasks, lambda mode: mode if mode in modes else None,
                              expected) if per_task else {}
    except ConfigError:
        raise ConfigError(f"{flag} {value!r}: choose {expected}") from None
    return {task: chosen.get(task, default) for task in tasks}


def _task_values(flag: str, value: str, tasks, parse, expected: str) -> dict:
    """{task: parse(text)} from `flag`'s value TASK=TEXT[,TASK=TEXT]; ConfigError where a task is not among
    `tasks` or `parse` returns None."""
    values = {}
    for item in value.split(","):
        task, _, text = item.partition("=")
        parsed = parse(text) if task in tasks else None
        if parsed is None:
            raise ConfigError(f"{flag} {value!r}: choose {expected}")
        values[task] = parsed
    return values


def _positive_float(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if 0 < number < float("inf") else None


def _fold(text: str) -> tuple[int, int] | None:
    fold, _, folds = text.partition("/")
    try:
        k, n = int(fold), int(folds)
    except ValueError:
        return None
    return (k, n) if n >= 2 and 1 <= k <= n else None
