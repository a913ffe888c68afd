"""Input pipeline throughput: batches of the three tasks built from tokenized data in hand.

    .venv/bin/python bench/bench_pipeline.py [--epochs 3] [--pair-mode cross|bi]

Prints examples and steps per second of host batch building (sampling, length
bucketing and padding, no device transfer), the padding ratio and the number of
distinct shapes per task, then one JSON line with everything. `run()` returns the
same dict for other benchmarks to compare with a training step rate.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import MalformedRowWarning, MultiTaskStream, TaskData  # noqa: E402


def run(
    epochs: int = 3,
    pair_mode: str = "cross",
    strategy: str = "resample",
    seed: int = 0,
    data_dir: str | Path | None = None,
) -> dict:
    """Times building every batch of `epochs` epochs of sst, quora and sts with defaults.

    Loading and tokenizing (cached after the first run) happen before the clock starts.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MalformedRowWarning)
        tasks = [
            TaskData("sst", data_dir=data_dir),
            TaskData("quora", mode=pair_mode, data_dir=data_dir),
            TaskData("sts", mode=pair_mode, data_dir=data_dir),
        ]
    stream = MultiTaskStream(tasks, strategy=strategy, num_epochs=epochs, seed=seed)
    examples = steps = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        for batches in stream.epoch(epoch):
            steps += 1
            examples += int(sum(b["weights"].sum() for b in batches.values()))
    seconds = time.perf_counter() - start
    stats = stream.stats(0)["tasks"]
    return {
        "benchmark": "input_pipeline",
        "pair_mode": pair_mode,
        "strategy": strategy,
        "epochs": epochs,
        "steps": steps,
        "examples": examples,
        "seconds": round(seconds, 4),
        "examples_per_s": round(examples / seconds, 1),
        "steps_per_s": round(steps / seconds, 1),
        "padding_ratio": {name: round(s["padding_ratio"], 4) for name, s in stats.items()},
        "num_shapes": {name: s["num_shapes"] for name, s in stats.items()},
        "batch_size": {t.name: t.batch_size for t in tasks},
    }


def main(argv: list[str] | None = None) -> dict:
    """Command line entry: runs the benchmark and prints a summary and a JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--pair-mode", choices=("cross", "bi"), default="cross")
    parser.add_argument("--strategy", default="resample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="TFDS cache folder (default <repo>/.cache/tfds)")
    args = parser.parse_args(argv)
    result = run(args.epochs, args.pair_mode, args.strategy, args.seed, args.data_dir)
    print(f"{result['examples_per_s']:,.0f} examples/s, {result['steps_per_s']:,.0f} steps/s "
          f"({result['examples']} examples, {result['steps']} steps of 3 tasks in {result['seconds']:.2f} s)")
    for name, ratio in result["padding_ratio"].items():
        print(f"  {name:6s} padding ratio {ratio:.3f} (tokens fed / real tokens), {result['num_shapes'][name]} shapes")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
