"""Evaluation throughput: the JAX Predictor against a PyTorch reference forward pass.

    .venv/bin/python bench/bench_eval.py [--split dev] [--eval-batch-size 128] [--max-examples 0] [--dtype float32]

Per task, the whole split, or with `--max-examples N` N examples spread evenly over its
lengths (a quick look: batches of a sparser sample span more lengths and pad more). The JAX
side is train/evaluate.py's Predictor, as a training run evaluates: host batching, placement
and predictions; a bi-encoded pair's two sentences are encoded apart, in batches of sentences
of their own length. The PyTorch reference (transformers' BertModel, no_grad, eval mode, the
heads of train/model.py) runs batches of whole examples, length-sorted as
data.length_sorted_batches makes them, with padding rows dropped and each sentence batch (a
and b apart) cut to its longest sentence. JAX runs once untimed (it compiles its shapes),
PyTorch one batch; then each side runs `--repeats` times timed, alternating. Reports sentences
per second (a bi-encoded pair is two sentences), the ratio, tokens fed over real tokens,
forward GFLOP/s on real tokens (2N tokens + 4 layers hidden L^2), and how far the predictions
agree.
Prints a table and one `JSON: ` line.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench import common  # noqa: E402


def torch_predictions(outputs, task: str, config) -> np.ndarray:
    """train/losses.py predictions() on PyTorch outputs."""
    import torch

    outputs = outputs.float()
    if task in ("sst", "cfimdb"):
        return outputs.argmax(-1).numpy()
    if task == "para":
        return (outputs > 0).int().numpy()
    if config.sts_head == "linear" and config.sts_target == "binary":
        return (5.0 * torch.sigmoid(outputs)).numpy()
    return torch.clamp(5.0 * outputs, 0.0, 5.0).numpy()


def spread(encoded, count: int):
    """`encoded` cut to `count` examples spread evenly over its lengths (all of it if count is 0 or more)."""
    if count <= 0 or count >= len(encoded):
        return encoded
    order = np.argsort(encoded.key_lengths, kind="stable")
    rows = np.sort(order[np.linspace(0, len(order) - 1, count).round().astype(int)])
    keep = np.append(rows, -1)  # the padding row stays last
    return dataclasses.replace(
        encoded, ids=[encoded.ids[i] for i in rows], labels=None if encoded.labels is None else encoded.labels[rows],
        input_ids=encoded.input_ids[:, keep], token_type_ids=encoded.token_type_ids[:, keep],
        lengths=encoded.lengths[:, keep],
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="dev")
    parser.add_argument("--eval-batch-size", type=int, default=128)
    parser.add_argument("--max-examples", type=int, default=0,
                        help="examples per task, spread over the lengths; 0: all")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each side (the fastest counts)")
    parser.add_argument("--preset", default="cosfeat-pcgrad-mean",
                        help="a train.config preset; 'none' for the defaults")
    parser.add_argument("--tasks", default="sst,para,sts")
    parser.add_argument("--init-checkpoint", default=str(common.DEFAULT_CHECKPOINT), help="Flax encoder checkpoint")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    common.add_encoder_chunks_argument(parser)
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--torch-attn", default="sdpa", choices=("sdpa", "eager"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: the cores XLA uses)")
    parser.add_argument("--no-compile-cache", action="store_true", help="skip the persistent XLA compilation cache")
    args = parser.parse_args(argv)

    import torch

    from data import length_sorted_batches

    load_before = common.start_comparison(args.threads, not args.no_compile_cache)
    preset = None if args.preset in ("none", "") else args.preset
    tasks = tuple(t for t in args.tasks.split(",") if t)
    run = common.load_run(preset, args.init_checkpoint, 32, eval_batch_size=args.eval_batch_size, tasks=tasks,
                          dtype=args.dtype, encoder_chunks=args.encoder_chunks)
    config = run.config
    params = run.init_params()
    torch_model = None if args.skip_torch else common.make_torch_model(run, params, args.torch_attn).eval()

    def autocast():
        import contextlib

        return torch.autocast("cpu", dtype=torch.bfloat16) if args.dtype == "bfloat16" else contextlib.nullcontext()

    rows, per_task = [], {}
    for task in tasks:
        data = run.data[task]
        mode = data.mode
        encoded = spread(data.split(args.split), args.max_examples)
        pair_batches = list(length_sorted_batches(encoded, data.buckets, args.eval_batch_size))
        jax_batches = list(length_sorted_batches(encoded.sentences(), data.buckets, args.eval_batch_size))
        torch_batches = [(b["index"][b["weights"] > 0], common.torch_sides(b, mode)) for b in pair_batches]
        sentences = len(encoded) * (2 if mode == "bi" else 1)
        real = np.concatenate([common.real_lengths(b, mode) for b in pair_batches])
        fed = np.concatenate([common.fed_lengths(b) for b in jax_batches])
        longest = np.concatenate([common.longest_lengths(b, mode) for b in pair_batches])

        def jax_run():
            return run.predictor(params, task, encoded, data.buckets)

        def torch_run(batches=torch_batches):
            out = np.zeros(len(encoded))
            with torch.no_grad(), autocast():
                for index, sides in batches:
                    out[index] = torch_predictions(torch_model(sides, task), task, config)
            return out

        start = time.perf_counter()
        jax_run()
        warmup = time.perf_counter() - start
        if torch_model is not None:
            torch_run(torch_batches[:1])
        times, outputs = {"jax": [], "torch": []}, {}
        for _ in range(args.repeats):
            for side, fn in (("jax", jax_run), ("torch", torch_run)):
                if side == "torch" and torch_model is None:
                    continue
                t0 = time.perf_counter()
                outputs[side] = fn()
                times[side].append(time.perf_counter() - t0)
        ours, theirs = outputs["jax"], outputs.get("torch")
        seconds = {side: min(t) for side, t in times.items() if t}
        flops = common.encoder_flops(run.bert_config, real, train=False)
        entry = {
            "mode": mode,
            "examples": len(encoded),
            "examples_in_split": len(data.split(args.split)),
            "sentences": sentences,
            "real_tokens": int(real.sum()),
            "jax_warmup_s": round(warmup, 2),
            "jax_seconds": round(seconds["jax"], 4),
            "jax_sentences_per_s": sentences / seconds["jax"],
            "jax_fed_over_real": float(fed.sum() / real.sum()),
            "jax_gflops_real": flops / seconds["jax"] / 1e9,
        }
        if torch_model is not None:
            entry.update({
                "torch_seconds": round(seconds["torch"], 4),
                "torch_sentences_per_s": sentences / seconds["torch"],
                "torch_fed_over_real": float(longest.sum() / real.sum()),
                "torch_gflops_real": flops / seconds["torch"] / 1e9,
                "jax_over_torch": seconds["torch"] / seconds["jax"],
            })
            if task == "sts":
                entry["max_abs_diff"] = float(np.abs(ours - theirs).max())
            else:
                entry["agreement"] = float(np.mean(ours == theirs))
        per_task[task] = entry
        rows.append({"task": f"{task} ({mode})", **entry})

    total_s = {k: sum(e[f"{k}_seconds"] for e in per_task.values())
               for k in ("jax", "torch") if torch_model is not None or k == "jax"}
    sentences = sum(e["sentences"] for e in per_task.values())
    overall = {"sentences": sentences, "jax_sentences_per_s": sentences / total_s["jax"]}
    if "torch" in total_s:
        overall.update(torch_sentences_per_s=sentences / total_s["torch"],
                       jax_over_torch=total_s["torch"] / total_s["jax"])
    rows.append({"task": "all", **overall})

    info = common.machine_info()
    info["load_average_before"] = load_before
    print(f"{info['cpu']}, {info['cores']} cores, torch threads {torch.get_num_threads()}, load average "
          f"{load_before} before / {info['load_average']} after")
    print(f"split {args.split}, eval batch {args.eval_batch_size}, preset {preset}, {args.dtype}, "
          f"up to {args.max_examples or 'all'} examples per task, best of {args.repeats}")
    common.print_table(rows, [
        ("task", "task", "s"), ("examples", "examples", "d"), ("sentences", "sentences", "d"),
        ("jax_sentences_per_s", "jax sent/s", ".1f"), ("torch_sentences_per_s", "torch sent/s", ".1f"),
        ("jax_over_torch", "jax/torch", ".2f"), ("jax_fed_over_real", "jax fed/real", ".3f"),
        ("torch_fed_over_real", "torch fed/real", ".3f"), ("jax_gflops_real", "jax GFLOP/s", ".1f"),
        ("torch_gflops_real", "torch GFLOP/s", ".1f"), ("jax_warmup_s", "jax warm-up s", ".1f"),
        ("agreement", "agree", ".4f"), ("max_abs_diff", "max |diff|", ".1e"),
    ])
    result = {
        "benchmark": "eval",
        "machine": info,
        "split": args.split,
        "eval_batch_size": args.eval_batch_size,
        "max_examples": args.max_examples,
        "repeats": args.repeats,
        "preset": preset,
        "dtype": args.dtype,
        "encoder_chunks": run.model.encoder_chunks,
        "tasks": per_task,
        "all": overall,
    }
    common.emit_json(result)
    return result


if __name__ == "__main__":
    main()
