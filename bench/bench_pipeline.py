"""Input pipeline throughput, on its own and as a multiple of the training step's rate.

    .venv/bin/python bench/bench_pipeline.py [--epochs 3] [--pair-mode bi|cross] [--train-steps 4]

Times building every batch of `--epochs` epochs of the three task streams (sampling,
length bucketing and padding, no device transfer) from tokenized data in hand, with the
training defaults (batch 32 per task, 20 buckets). Then runs the training loop's JAX step
(train/step.py, default heads, `--pair-mode` pair encoding) on the first `--train-steps`
steps of the same stream, after compiling their shapes, and prints how many times faster
the pipeline builds examples than the step consumes them (the pipeline must never be what
training waits for: target at least 10x). Prints a summary and one `JSON: ` line.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402
from data import MalformedRowWarning  # noqa: E402


def load_run(pair_mode: str, checkpoint: str | Path, data_dir: str | Path | None, epochs: int):
    """A train.loop.Run with the training defaults and the given pair encoding."""
    overrides = {"pair_encoding": pair_mode, "epochs": epochs}
    if data_dir is not None:
        overrides["data_dir"] = str(data_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MalformedRowWarning)
        run = common.load_run(None, checkpoint, 32, **overrides)
        run.data  # tokenized (cached after the first run) before any clock starts
    return run


def pipeline_rate(run) -> dict:
    """Builds every batch of every epoch of the run's stream; examples and steps per second."""
    stream = run.stream()
    examples = steps = 0
    start = time.perf_counter()
    for epoch in range(run.config.epochs):
        for batches in stream.epoch(epoch):
            steps += 1
            examples += int(sum(b["weights"].sum() for b in batches.values()))
    seconds = time.perf_counter() - start
    stats = stream.stats(0)["tasks"]
    return {
        "epochs": run.config.epochs,
        "steps": steps,
        "examples": examples,
        "seconds": round(seconds, 4),
        "examples_per_s": round(examples / seconds, 1),
        "steps_per_s": round(steps / seconds, 1),
        "padding_ratio": {name: round(s["padding_ratio"], 4) for name, s in stats.items()},
        "num_shapes": {name: s["num_shapes"] for name, s in stats.items()},
    }


def train_rate(run, num_steps: int) -> dict:
    """Examples per second of the training loop's step on the stream's first `num_steps` steps."""
    import jax

    from bench.bench_train import JaxTrainer
    from train.step import make_grad_fns

    steps = [{task: jax.device_put(b) for task, b in s.items()} for s in common.load_steps(run, num_steps)]
    trainer = JaxTrainer(run, run.config, run.model, run.init_params(), make_grad_fns(run.model, run.config), "rbg")
    start = time.perf_counter()
    for batches in steps:  # compiles every shape (and the update) before timing
        trainer.step(batches)
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    for batches in steps:
        trainer.step(batches)
    seconds = time.perf_counter() - start
    examples = sum(int(b["weights"].sum()) for s in steps for b in s.values())
    return {"steps": len(steps), "examples": examples, "seconds": round(seconds, 3),
            "examples_per_s": round(examples / seconds, 2), "warmup_s": round(warmup, 1)}


def main(argv: list[str] | None = None) -> dict:
    """Command line entry: runs the benchmark and prints a summary and a JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--pair-mode", choices=("bi", "cross"), default="bi", help="pair encoding (training: bi)")
    parser.add_argument("--train-steps", type=int, default=4, help="training steps timed for the comparison")
    parser.add_argument("--init-checkpoint", default=str(common.DEFAULT_CHECKPOINT), help="Flax encoder checkpoint")
    parser.add_argument("--data-dir", default=None, help="TFDS cache folder (default <repo>/.cache/tfds)")
    args = parser.parse_args(argv)

    common.start_comparison(0, compile_cache=True)
    run = load_run(args.pair_mode, args.init_checkpoint, args.data_dir, args.epochs)
    pipeline = pipeline_rate(run)
    training = train_rate(run, args.train_steps)
    multiple = pipeline["examples_per_s"] / training["examples_per_s"]
    info = common.machine_info()
    print(f"{info['cpu']}, {info['cores']} cores, load average {info['load_average']}")
    print(f"pipeline: {pipeline['examples_per_s']:,.0f} examples/s, {pipeline['steps_per_s']:,.0f} steps/s "
          f"({pipeline['examples']} examples, {pipeline['steps']} steps of 3 tasks in {pipeline['seconds']:.2f} s)")
    for name, ratio in pipeline["padding_ratio"].items():
        print(f"  {name:6s} padding ratio {ratio:.3f} (tokens fed / real tokens), "
              f"{pipeline['num_shapes'][name]} shapes")
    print(f"training step: {training['examples_per_s']:.1f} examples/s ({training['steps']} steps after "
          f"{training['warmup_s']:.0f} s of warm-up)")
    print(f"pipeline / training: {multiple:,.0f}x (target at least 10x)")
    result = {"benchmark": "input_pipeline", "machine": info, "pair_mode": args.pair_mode, "pipeline": pipeline,
              "training": training, "pipeline_over_training": round(multiple, 1)}
    common.emit_json(result)
    return result


if __name__ == "__main__":
    main()
