"""Padding overhead: tokens fed over real tokens, bucketed pipeline against pad-to-longest.

    .venv/bin/python bench/bench_padding.py [--epochs 1] [--batch-size 32] [--num-buckets 20] [--pool-batches 256]

For the training batches of the multi-task stream (the same batches for every column),
per task and for both pair encodings (bi: the two sentences encoded apart; cross: one
[CLS] a [SEP] b [SEP] sequence), the ratio tokens fed / real tokens of

* bucketed: the project's pipeline (data/input_pipeline.py), each batch padded to the
  smallest of the task's length buckets that holds it, padding rows included (a task
  out of examples feeds all-padding batches; "resample" has none);
* longest: every batch padded to its longest sequence (one length for a bi batch's
  a and b rows together, as one (2B, L) encoder call);
* longest per side (bi only): sentence a rows and sentence b rows each padded to their
  own longest, as the CS224N code pads and as the PyTorch reference in bench_train.py runs.

Only index arithmetic on the planned batches (MultiTaskStream.plan): no arrays are built.
Prints a table and one `JSON: ` line.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402
from data.tasks import registry  # noqa: E402
from train.config import TrainConfig  # noqa: E402


def task_padding(task, plan, padding_batches: int) -> dict:
    """Token counts of one task's planned batches (see the module docstring)."""
    lengths = task.train.lengths  # (sequences, n + 1)
    sequences = lengths.shape[0]
    real = fed = longest = per_side = 0
    for rows, bucket in zip(plan.rows, plan.lengths):
        kept = rows[rows >= 0]
        side_lengths = lengths[:, kept]  # (sequences, examples)
        real += int(side_lengths.sum())
        fed += bucket * sequences * len(rows)
        longest += int(side_lengths.max()) * side_lengths.size
        per_side += int((side_lengths.max(axis=1) * side_lengths.shape[1]).sum())
    fed += int(task.buckets[0]) * sequences * task.batch_size * padding_batches
    return {
        "mode": task.mode,
        "batches": len(plan.rows),
        "real_tokens": real,
        "bucketed_tokens": fed,
        "longest_tokens": longest,
        "longest_per_side_tokens": per_side,
        "bucketed_ratio": fed / real,
        "longest_ratio": longest / real,
        "longest_per_side_ratio": per_side / real,
        "buckets": [int(b) for b in task.buckets],
    }


def run(pair_mode: str, epochs: int, batch_size: int, num_buckets: int, pool_batches: int, samples: int,
        strategy: str, seed: int, max_length: int) -> dict:
    from data import MalformedRowWarning, MultiTaskStream, TaskData

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MalformedRowWarning)
        tasks = [
            TaskData(name, mode=pair_mode if registry()[name].is_pair else None, batch_size=batch_size,
                     num_buckets=num_buckets, max_length=max_length)
            for name in ("sst", "para", "sts")
        ]
    stream = MultiTaskStream(tasks, strategy=strategy, num_examples=samples, num_epochs=epochs, seed=seed,
                             pool_batches=pool_batches)
    totals: dict[str, dict] = {}
    for epoch in range(epochs):
        plans = stream.plan(epoch)
        steps = max(len(p.rows) for p in plans.values())
        for task in tasks:
            counts = task_padding(task, plans[task.name], steps - len(plans[task.name].rows))
            total = totals.setdefault(task.name, {k: 0 for k in counts if k.endswith(("tokens", "batches"))})
            for k in total:
                total[k] += counts[k]
            total.update(mode=counts["mode"], buckets=counts["buckets"])
    for total in totals.values():
        for kind in ("bucketed", "longest", "longest_per_side"):
            total[f"{kind}_ratio"] = total[f"{kind}_tokens"] / total["real_tokens"]
    overall = {k: sum(t[k] for t in totals.values()) for k in ("real_tokens", "bucketed_tokens", "longest_tokens",
                                                               "longest_per_side_tokens")}
    for kind in ("bucketed", "longest", "longest_per_side"):
        overall[f"{kind}_ratio"] = overall[f"{kind}_tokens"] / overall["real_tokens"]
    return {"pair_mode": pair_mode, "tasks": totals, "all": overall}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32, help="examples per task per batch")
    parser.add_argument("--num-buckets", type=int, default=TrainConfig.num_buckets, help="length buckets per task")
    parser.add_argument("--pool-batches", type=int, default=TrainConfig.pool_batches,
                        help="batches cut from one length-sorted pool")
    parser.add_argument("--samples-per-task", type=int, default=10_000)
    parser.add_argument("--strategy", default="resample")
    parser.add_argument("--seed", type=int, default=11711)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--pair-modes", default="bi,cross", help="comma-separated: bi, cross")
    args = parser.parse_args(argv)

    results = [run(mode, args.epochs, args.batch_size, args.num_buckets, args.pool_batches, args.samples_per_task,
                   args.strategy, args.seed, args.max_length) for mode in args.pair_modes.split(",")]
    rows = []
    for result in results:
        for name, t in list(result["tasks"].items()) + [("all", result["all"])]:
            pair = name == "all" or registry()[name].is_pair
            rows.append({
                "task": f"{name} ({result['pair_mode'] if pair else 'single'})",
                "real": t["real_tokens"], "bucketed": t["bucketed_ratio"], "longest": t["longest_ratio"],
                "per_side": t["longest_per_side_ratio"] if result["pair_mode"] == "bi" and pair else None,
            })
    print(f"tokens fed / real tokens, {args.epochs} epoch(s) of the '{args.strategy}' stream, batch {args.batch_size} "
          f"per task, {args.num_buckets} buckets, pools of {args.pool_batches} batches, {args.samples_per_task} "
          "examples per task")
    common.print_table(rows, [("task", "task", "s"), ("real", "real tokens", "d"), ("bucketed", "bucketed", ".3f"),
                              ("longest", "longest", ".3f"), ("per_side", "longest per side", ".3f")])
    result = {
        "benchmark": "padding",
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "num_buckets": args.num_buckets,
        "pool_batches": args.pool_batches,
        "samples_per_task": args.samples_per_task,
        "strategy": args.strategy,
        "modes": {r["pair_mode"]: {"tasks": r["tasks"], "all": r["all"]} for r in results},
    }
    common.emit_json(result)
    return result


if __name__ == "__main__":
    main()
