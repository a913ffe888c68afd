"""Training configuration: one dataclass holding every setting, presets, and the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

__all__ = ["TrainConfig", "PRESETS", "TASKS", "CLASSIFICATION_TASKS", "ConfigError", "parse_args"]

# Task name on the command line -> data family (data/tasks.py).
TASKS = {"sst": "sst", "para": "quora", "sts": "sts", "cfimdb": "cfimdb"}
# The tasks with class labels (cross-entropy, label smoothing, R-Drop); the others are sentence pairs.
CLASSIFICATION_TASKS = ("sst", "cfimdb")


class ConfigError(ValueError):
    """Settings that contradict each other or name something that does not exist."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run (saved as the run's config.json)."""

    tasks: tuple[str, ...] = ("sst", "para", "sts")
    option: str = "finetune"  # finetune | pretrain (encoder frozen, heads only)
    # cls (pooler output) | mean | max, optionally followed by per-task choices, e.g. "mean,sst=cls"
    pooling: str = "cls"
    # bi: two sentences encoded apart | cross: one [CLS] a [SEP] b [SEP] sequence | per task, e.g. "para=cross"
    # (a task left out is bi)
    pair_encoding: str = "bi"
    para_cos_feature: bool = False
    swap_pairs: bool = False  # cross-encoded pairs also trained, and predicted, with their sentences swapped
    sts_head: str = "linear"  # linear | cosine
    sts_target: str = "binary"  # binary (label > 2) | scaled (label / 5)
    shared_layer: bool = False
    pcgrad: bool = False
    loss_weights: str = ""  # per-task multipliers of the loss's gradient, e.g. "sts=10" (a task left out: 1)
    dropout: float = 0.3
    label_smoothing: float = 0.0  # share of the uniform distribution in the sst and cfimdb targets
    rdrop: float = 0.0  # weight of R-Drop's KL term between two dropout passes of sst and cfimdb (0: one pass)
    ordinal_loss: float = 0.0  # weight of the squared earth mover's distance in the sst and cfimdb losses
    lr: float = 1e-5
    layer_lr_decay: float = 1.0  # the rate's factor per layer down from the heads (train/optim.layer_lr_scales)
    reinit_layers: int = 0  # top encoder layers that start from BERT's random initialisation instead of the checkpoint
    lr_schedule: str = "constant"  # constant | linear (from lr down to 0 at the run's last step)
    weight_decay: float = 0.0
    decay_mask: str = "all"  # all | no-layernorm-bias
    ema: float = 0.0  # decay of a moving average of the parameters, which is then evaluated and kept (0: none)
    epochs: int = 10
    batch_size: int = 32  # per task
    samples_per_task: int = 10_000
    sampling: str = "resample"  # resample | min | proportional | annealed
    max_length: int = 128
    num_buckets: int = 20  # padded lengths per task: fewer compile faster, more pad less
    pool_batches: int = 256  # batches cut from one length-sorted pool: more pad less, but mix lengths less
    dtype: str = "float32"  # the encoder's computation dtype; parameters and optimizer state stay float32
    encoder_chunks: int = 1  # row groups of a batch encoded apart in one program (MultitaskBert.encoder_chunks)
    seed: int = 11711
    init_checkpoint: str = "checkpoints/minilm-l6"
    data_dir: str = "data/cs224n"
    eval_batch_size: int = 128
    save_every_steps: int = 0  # 0: checkpoint at the end of each epoch only
    preset: str | None = None

    def __post_init__(self):
        choices = {
            "option": ("finetune", "pretrain"),
            "sts_head": ("linear", "cosine"),
            "sts_target": ("binary", "scaled"),
            "sampling": ("resample", "min", "proportional", "annealed"),
            "lr_schedule": ("constant", "linear"),
            "decay_mask": ("all", "no-layernorm-bias"),
            "dtype": ("float32", "bfloat16"),
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"--{name.replace('_', '-')} {value!r}: choose from {', '.join(allowed)}")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise ConfigError(f"--tasks {','.join(self.tasks)}: choose a subset of {', '.join(TASKS)}")
        encodings = self._pair_encodings()
        if (encodings["sts"] == "cross" and self.sts_head == "cosine"
                or encodings["para"] == "cross" and self.para_cos_feature):
            raise ConfigError(f"--pair-encoding {self.pair_encoding}: a cross-encoded pair has no sentence embeddings; "
                              "it excludes --sts-head cosine (sts) and --para-cos-feature (para)")
        if self.swap_pairs and "cross" not in map(self.sequence_mode, self.tasks):
            raise ConfigError("--swap-pairs: no task of the run encodes its pairs as one sequence; add --pair-encoding "
                              "cross or para=cross or sts=cross")
        for name in ("epochs", "batch_size", "samples_per_task", "max_length", "num_buckets", "pool_batches",
                     "eval_batch_size", "encoder_chunks"):
            value = getattr(self, name)
            if value <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, not {value}")
        for name in ("dropout", "ema", "label_smoothing"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} {value}: must be in [0, 1)")
        for name in ("rdrop", "ordinal_loss"):
            flag, weight = f"--{name.replace('_', '-')}", getattr(self, name)
            if not 0 <= weight < float("inf"):
                raise ConfigError(f"{flag} {weight}: must be 0 (off) or a positive weight")
            if weight and not set(CLASSIFICATION_TASKS) & set(self.tasks):
                raise ConfigError(f"{flag}: applies to {' and '.join(CLASSIFICATION_TASKS)}, and --tasks "
                                  f"{','.join(self.tasks)} has neither")
        if not 0 < self.layer_lr_decay <= 1:
            raise ConfigError(f"--layer-lr-decay {self.layer_lr_decay}: must be in (0, 1]")
        if self.layer_lr_decay != 1 and self.option == "pretrain":
            raise ConfigError("--layer-lr-decay: --option pretrain freezes the encoder, whose layers it would decay")
        if self.reinit_layers < 0:
            raise ConfigError(f"--reinit-layers {self.reinit_layers}: must be 0 (none) or more")
        if self.reinit_layers and self.option == "pretrain":
            raise ConfigError("--reinit-layers: --option pretrain freezes the encoder, whose re-initialised layers "
                              "would stay random")
        self._loss_weights()
        self._poolings()

    def _pair_encodings(self) -> dict[str, str]:
        value, modes = self.pair_encoding, ("bi", "cross")
        if value in modes:
            return {"para": value, "sts": value}
        return {"para": "bi", "sts": "bi", **_task_values(
            "--pair-encoding", value, ("para", "sts"), lambda mode: mode if mode in modes else None,
            "bi, cross, or TASK=MODE[,TASK=MODE] with TASK para or sts and MODE bi or cross")}

    def pair_mode(self, task: str) -> str:
        """How the sentence pairs of `task` (para or sts) are encoded: "bi" or "cross"."""
        return self._pair_encodings()[task]

    def sequence_mode(self, task: str) -> str:
        """How any task's examples are encoded: "single" (sst, cfimdb), or its pair_mode."""
        return self._pair_encodings().get(task, "single")

    def _poolings(self) -> dict[str, str]:
        modes = ("cls", "mean", "max")
        first, *rest = self.pooling.split(",")
        default, per_task = ("cls", [first, *rest]) if "=" in first else (first, rest)
        expected = (f"cls, mean or max, then TASK=MODE items for tasks pooled otherwise, with TASK among the run's "
                    f"tasks ({','.join(self.tasks)}), e.g. mean,sst=cls")
        try:
            if default not in modes or any("=" not in item for item in per_task):
                raise ConfigError
            chosen = _task_values("--pooling", ",".join(per_task), self.tasks,
                                  lambda mode: mode if mode in modes else None, expected) if per_task else {}
        except ConfigError:
            raise ConfigError(f"--pooling {self.pooling!r}: choose {expected}") from None
        return {task: chosen.get(task, default) for task in TASKS}

    def pooling_of(self, task: str) -> str:
        """How `task`'s sentence (or cross-encoded pair) embeddings are pooled: "cls", "mean" or "max"."""
        return self._poolings()[task]

    def _loss_weights(self) -> dict[str, float]:
        if not self.loss_weights:
            return {}
        return _task_values("--loss-weights", self.loss_weights, self.tasks, _positive_float,
                            f"TASK=W[,TASK=W] with TASK among the run's tasks ({','.join(self.tasks)}) and W a "
                            "positive number")

    def loss_weight(self, task: str) -> float:
        """The multiplier of `task`'s loss in its gradient (--loss-weights; 1 for a task it leaves out)."""
        return self._loss_weights().get(task, 1.0)

    def to_json(self, path: str | Path) -> None:
        """Writes the config as JSON."""
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> "TrainConfig":
        """Reads a config written by `to_json`."""
        values = json.loads(Path(path).read_text())
        values["tasks"] = tuple(values["tasks"])
        return cls(**values)


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


# The six rows of the reference report (BERT-base, dev), as settings.
PRESETS: dict[str, dict] = {
    "baseline-6041": dict(samples_per_task=6041),
    "baseline-10000": dict(samples_per_task=10_000),
    "shared-pcgrad": dict(shared_layer=True, pcgrad=True),
    "cosine-pcgrad": dict(sts_head="cosine", pcgrad=True),
    "cosine-pcgrad-mean": dict(sts_head="cosine", pcgrad=True, pooling="mean"),
    "cosfeat-pcgrad-mean": dict(sts_head="cosine", para_cos_feature=True, pcgrad=True, pooling="mean"),
}


def _bool_flag(parser, name, help_text):
    parser.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=None, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    """The `python -m train.main` argument parser; every option defaults to None (= config default)."""
    p = argparse.ArgumentParser(
        prog="python -m train.main",
        description="Multi-task fine-tuning of a Flax BERT on SST-5, Quora and STS.",
    )
    p.add_argument("--preset", help=f"a reference-report row: {', '.join(PRESETS)}; later flags override it")
    p.add_argument("--tasks", help="comma-separated subset of " + ",".join(TASKS))
    p.add_argument("--option", help="finetune (default) or pretrain (encoder frozen, heads only)")
    p.add_argument("--pooling", help="cls (default), mean or max, for every task; then per task, e.g. mean,sst=cls "
                                     "(sst pooled by [CLS], the others by mean)")
    p.add_argument("--pair-encoding", help="bi (default: two sentence embeddings), cross (one pair sequence), or per "
                                           "task, e.g. para=cross (a task left out is bi)")
    _bool_flag(p, "para-cos-feature", "append cos(u, v) to the paraphrase head input")
    _bool_flag(p, "swap-pairs", "train cross-encoded pairs in both orders (a b and b a; their training sets "
                                "hold every pair twice) and predict from the mean output of both orders")
    p.add_argument("--sts-head", help="linear (default) or cosine")
    p.add_argument("--sts-target", help="binary (label > 2, default) or scaled (label / 5)")
    _bool_flag(p, "shared-layer", "one dense layer shared by the paraphrase and STS heads")
    _bool_flag(p, "pcgrad", "combine task gradients with PCGrad instead of summing them")
    p.add_argument("--loss-weights", help="per-task multipliers of the loss in its gradient, e.g. sts=10 (default 1 "
                                          "for every task; the logged losses stay unweighted)")
    p.add_argument("--dropout", type=float)
    p.add_argument("--label-smoothing", type=float, help="train sst and cfimdb against their labels mixed with this "
                                                          "share of the uniform distribution (default 0)")
    p.add_argument("--rdrop", type=float, metavar="ALPHA",
                   help="R-Drop for sst and cfimdb: each batch runs twice under different dropout masks, and the "
                        "loss is the passes' mean loss (cross-entropy, plus the --ordinal-loss term) plus ALPHA "
                        "times their symmetric KL divergence (default 0: one pass; a step costs those tasks twice "
                        "the compute)")
    p.add_argument("--ordinal-loss", type=float, metavar="ALPHA",
                   help="add to the cross-entropy of sst and cfimdb ALPHA times the squared earth mover's distance "
                        "between the predicted distribution and the label (Hou et al. 2016): their classes are "
                        "ordered, and this term charges a prediction by how far it misses (default 0)")
    p.add_argument("--lr", type=float)
    p.add_argument("--layer-lr-decay", type=float, help="multiply the learning rate by this factor per layer down "
                                                         "from the heads: the top encoder layer trains at lr x D, the "
                                                         "embeddings at lr x D^(layers+1) (default 1: one rate)")
    p.add_argument("--reinit-layers", type=int, metavar="N",
                   help="start the top N encoder layers from BERT's random initialisation (normal(0, 0.02) weights, "
                        "zero biases, unit LayerNorm; seeded) instead of the checkpoint's (Zhang et al. 2021; "
                        "default 0)")
    p.add_argument("--lr-schedule", help="constant (default) or linear (decays to 0 at the run's last step)")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--decay-mask", help="all (default) or no-layernorm-bias")
    p.add_argument("--ema", type=float, help="evaluate, and keep as the best checkpoint, an exponential moving "
                                             "average of the parameters with this decay per step, e.g. 0.999 "
                                             "(default 0: the parameters themselves)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="examples per task per step")
    p.add_argument("--samples-per-task", type=int)
    p.add_argument("--sampling", help="resample (default), min, proportional or annealed")
    p.add_argument("--max-length", type=int)
    p.add_argument("--num-buckets", type=int, help="padded sequence lengths per task (default 20)")
    p.add_argument("--dtype", help="float32 (default) or bfloat16: the encoder's computation dtype (parameters and "
                                   "optimizer state stay float32; bfloat16 steps are about 1.5x faster on this CPU)")
    p.add_argument("--encoder-chunks", type=int, help="encode each batch's rows in this many independent groups "
                                                      "(default 1; same results; 2 made a float32 step about 7%% "
                                                      "faster on a 2-core Intel Xeon, no faster on a 2-core AMD "
                                                      "EPYC; compiling takes about 2x longer)")
    p.add_argument("--pool-batches", type=int, help="batches cut from one length-sorted pool of drawn examples "
                                                    "(default 256; more pad less)")
    p.add_argument("--seed", type=int)
    p.add_argument("--init-checkpoint", help="converted checkpoint directory (default: checkpoints/minilm-l6)")
    p.add_argument("--data-dir")
    p.add_argument("--eval-batch-size", type=int)
    p.add_argument("--save-every-steps", type=int)
    p.add_argument("--run-dir", help="default: runs/<time>-<preset or custom>")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    p.add_argument("--quiet", action="store_true", help="plain log lines instead of progress bars")
    launch = p.add_argument_group("multi-process (multi-host) runs: the same command in every process; the run "
                                  "directory on a file system they share")
    launch.add_argument("--distributed", action="store_true",
                        help="join the other processes of a cluster job (SLURM, Open MPI, Kubernetes, Cloud TPU: "
                             "detected by jax.distributed.initialize)")
    launch.add_argument("--coordinator-address", metavar="HOST:PORT",
                        help="join by hand: process 0's address, the same in every process (with --num-processes "
                             "and --process-id)")
    launch.add_argument("--num-processes", type=int)
    launch.add_argument("--process-id", type=int, help="this process's index, 0 .. num-processes - 1")
    return p


def parse_args(argv=None) -> tuple[TrainConfig, argparse.Namespace]:
    """Parses the command line into a TrainConfig (preset, then explicit flags) and the raw namespace."""
    args = build_parser().parse_args(argv)
    values: dict = {}
    if args.preset is not None:
        if args.preset not in PRESETS:
            raise ConfigError(f"--preset {args.preset!r} does not exist: choose from {', '.join(PRESETS)}")
        values.update(PRESETS[args.preset], preset=args.preset)
    field_names = {f.name for f in dataclasses.fields(TrainConfig)}
    for name, value in vars(args).items():
        if name in field_names and name != "preset" and value is not None:
            values[name] = tuple(t.strip() for t in value.split(",") if t.strip()) if name == "tasks" else value
    return TrainConfig(**values), args
