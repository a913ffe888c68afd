"""The command line of `python -m train.main`: the reference report's presets, the parser, and the TrainConfig
it makes (preset first, then explicit flags)."""

from __future__ import annotations

import argparse
import dataclasses

from .config import ConfigError, TrainConfig

__all__ = ["PRESETS", "build_parser", "parse_args"]


# The six rows of the reference report (BERT-base, dev), as settings.
PRESETS: dict[str, dict] = {
    "baseline-6041": dict(samples_per_task=6041),
    "baseline-10000": dict(samples_per_task=10_000),
    "shared-pcgrad": dict(shared_layer=True, pcgrad=True),
    "cosine-pcgrad": dict(regression_head="cosine", pcgrad=True),
    "cosine-pcgrad-mean": dict(regression_head="cosine", pcgrad=True, pooling="mean"),
    "cosfeat-pcgrad-mean": dict(regression_head="cosine", cos_feature="para", pcgrad=True, pooling="mean"),
}


def _default(name: str):
    return next(f.default for f in dataclasses.fields(TrainConfig) if f.name == name)


def build_parser() -> argparse.ArgumentParser:
    """The `python -m train.main` argument parser; every option defaults to None (= the config's default, which
    its help names). Explicit flags win over --preset wherever they are placed."""
    p = argparse.ArgumentParser(
        prog="python -m train.main",
        description="Multi-task fine-tuning of a Flax BERT on SST-5, Quora and STS, and tasks declared in TOML files.",
    )

    def add(name: str, help_text: str, kind=str, **kwargs):
        field = name.replace("-", "_")
        p.add_argument(f"--{name}", type=kind, help=f"{help_text} (default {_default(field)})", **kwargs)

    def flag(name: str, help_text: str):
        p.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=None, help=help_text)

    p.add_argument("--preset", help=f"a reference-report row: {', '.join(PRESETS)}; explicit flags override it")
    add("tasks", "comma-separated tasks: built-in sst, para, sts, cfimdb, or tasks of --task-file")
    p.add_argument("--task-file", action="append", metavar="TOML",
                   help="a TOML file declaring tasks (schema in README and data/tasks.py); may be repeated")
    add("option", "finetune, or pretrain (encoder frozen, heads only)")
    add("pooling", "cls, mean or max for every task, then per task, e.g. mean,sst=cls")
    add("pair-encoding", "bi (two sentence embeddings) or cross (one pair sequence), per pair task as in --pooling, "
                         "e.g. para=cross")
    add("cos-feature", "bi-encoded pair-classification tasks whose head also reads cos(u, v), e.g. para")
    flag("swap-pairs", "train cross-encoded pairs in both orders (a b and b a; their training sets hold every pair "
                       "twice) and predict from the mean output of both orders")
    add("regression-head", "linear, or cosine (Sentence-BERT: the cosine of the two embeddings), per pair-regression "
                           "task as in --pooling")
    add("regression-target", "binary (label above the task's binary_threshold, cross-entropy) or scaled (label "
                             "range mapped to 0-1, squared error), per pair-regression task as in --pooling")
    flag("shared-layer", "one dense layer shared by the heads of the pair tasks")
    flag("pcgrad", "combine task gradients with PCGrad instead of summing them")
    add("loss-weights", "per-task multipliers of the loss in its gradient, e.g. sts=10 (the logged losses stay "
                        "unweighted)")
    add("dropout", "dropout rate before the task heads (the encoder keeps its checkpoint's own rates)", float)
    add("label-smoothing", "train tasks with class logits against their labels mixed with this share of the "
                           "uniform distribution", float)
    add("rdrop", "R-Drop for tasks with class logits: each batch runs twice under different dropout masks, and the "
                 "loss is the passes' mean loss plus ALPHA times their symmetric KL divergence (0: one pass; a step "
                 "costs those tasks twice the compute)", float, metavar="ALPHA")
    add("ordinal-loss", "add ALPHA times the squared earth mover's distance between the predicted distribution and "
                        "the label to the cross-entropy of tasks with class logits (Hou et al. 2016): for ordered "
                        "classes, it charges a prediction by how far it misses", float, metavar="ALPHA")
    add("ranking-loss", "add ALPHA times CoSENT (Su 2022) to the loss of pair-regression tasks: a log-sum-exp over "
                        "the batch's pairs of examples ranked against their labels (with --grad-accumulation, the "
                        "pairs within each micro-batch)", float, metavar="ALPHA")
    add("lr", "learning rate", float)
    add("layer-lr-decay", "multiply the learning rate by this factor per layer down from the heads: the top encoder "
                          "layer trains at lr x D, the embeddings at lr x D^(layers+1)", float)
    add("reinit-layers", "start the top N encoder layers from BERT's random initialisation (seeded) instead of the "
                         "checkpoint's (Zhang et al. 2021)", int, metavar="N")
    flag("zero-heads", "start every task head's weights at zero, as big_vision fine-tunes: the first updates "
                       "train the heads, and the encoder's gradient then follows heads fitted to it, not random "
                       "ones (the shared pair layer keeps its random start)")
    add("lr-schedule", "constant, or linear (decays to 0 at the run's last step)")
    add("warmup-steps", "updates of linear warmup from 0 to --lr, then --lr-schedule", int)
    add("warmup-ratio", "warmup as a share of the run's updates, e.g. 0.1", float)
    add("max-grad-norm", "clip the combined task gradient (after PCGrad) to this global norm before AdamW; 0: no "
                         "clipping", float)
    add("weight-decay", "AdamW's decoupled weight decay", float)
    add("decay-mask", "all, or no-layernorm-bias")
    add("ema", "evaluate, and keep as the best checkpoint, an exponential moving average of the parameters with "
               "this decay per step, e.g. 0.999 (0: the parameters themselves)", float)
    add("epochs", "epochs", int)
    add("batch-size", "examples per task per step", int)
    add("grad-accumulation", "accumulate each task's gradient over N micro-batches of --batch-size rows before the "
                             "update: the update of batches N times larger, in the memory of one", int, metavar="N")
    add("samples-per-task", "examples drawn per task and epoch (--sampling resample)", int)
    add("sampling", "resample, min, proportional or annealed")
    add("max-length", "tokens per sequence, longer ones cut", int)
    add("num-buckets", "padded sequence lengths per task: fewer compile faster, more pad less", int)
    p.add_argument("--dtype", help="float32, bfloat16, or auto: the encoder's computation dtype (parameters and "
                                   "optimizer state stay float32); auto is bfloat16 on a CPU with bfloat16 "
                                   "instructions (AVX-512 BF16, AMX, Arm BF16), else float32 (default auto)")
    add("encoder-chunks", "encode each batch's rows in this many independent groups (same results; "
                          "docs/benchmarks.md says where it pays)", int)
    add("pool-batches", "batches cut from one length-sorted pool of drawn examples: more pad less", int)
    add("seed", "seed of the data order, dropout and head initialisation", int)
    add("init-checkpoint", "converted checkpoint directory")
    add("data-dir", "folder of the built-in tasks' files")
    add("eval-batch-size", "examples per evaluation batch", int)
    add("save-every-steps", "also checkpoint every N steps (0: at each epoch's end only)", int)
    add("eval-every-steps", "also evaluate on dev, and keep the best by --select-by, every N steps (0: at each "
                            "epoch's end only)", int, metavar="N")
    add("eval-max-examples", "score dev during training on the first N examples of each task, for quick runs; the "
                             "best checkpoint is scored on the whole dev set at the end (0: all of them)", int,
        metavar="N")
    add("early-stopping-patience", "stop training after P evaluations in a row without a better --select-by score, "
                                   "then finish as usual from the best checkpoint (0: never)", int, metavar="P")
    p.add_argument("--teacher", action="append", metavar="TASK=FILE",
                   help="distil TASK from a teacher file written by `python -m train.teach` (its predictions on the "
                        "task's training rows): the task's objective mixes its gold loss with the loss to the "
                        "teacher's targets; may be repeated")
    add("teacher-weight", "the distillation loss's share of a taught task's objective", float)
    flag("teacher-annealing", "instead of --teacher-weight, the gold loss's share rises linearly from 0 at the first "
                              "update to 1 at the last (teacher annealing, Clark et al. 2019)")
    p.add_argument("--holdout", action="append", metavar="TASK=K/N",
                   help="train without fold K of N of TASK's training rows (folds by a hash of the row id), so that "
                        "`python -m train.teach` over the N runs predicts every row from a run that never saw it "
                        "(a cross-fitted teacher); may be repeated")
    add("select-by", "the dev score that picks the best epoch: overall, or a task of the run")
    flag("tensorboard", "write TensorBoard event files into the run directory (default on; view them with "
                        "`tensorboard --logdir runs/`)")
    add("log-every", "steps between TensorBoard points of the training losses and the learning rate", int)
    p.add_argument("--run-dir", help="default: runs/<time>-<preset or custom>")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    p.add_argument("--quiet", action="store_true",
                   help="plain log lines instead of progress bars (as whenever stderr is not a terminal)")
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
    field_names = {f.name for f in dataclasses.fields(TrainConfig)} - {"task_files", "teachers", "holdout"}
    for name, value in vars(args).items():
        if name in field_names and name != "preset" and value is not None:
            values[name] = tuple(t.strip() for t in value.split(",") if t.strip()) if name == "tasks" else value
    if args.task_file:
        values["task_files"] = tuple(args.task_file)
    if args.teacher:
        values["teachers"] = ",".join(args.teacher)
    if args.holdout:
        values["holdout"] = ",".join(args.holdout)
    values.setdefault("dtype", "auto")
    return TrainConfig(**values), args
