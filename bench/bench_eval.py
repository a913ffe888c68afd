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
forward GFLOP/s on real tokens (2N tokens + 4 layers hidden L^2) and their share of the GEMM
peak of the same library and dtype (measured by the same process before the timed runs,
bench/peak.py: a ratio to PyTorch depends on the CPU, a share of the peak says how close the
forward comes to the hardware), and how far the predictions agree.
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

from bench import common, peak  # noqa: E402


def torch_predictions(outputs, task: str, config) -> np.ndarray:
    """train/losses.py predictions() on PyTorch outputs."""
    import torch

    outputs, spec = outputs.float(), config.spec(task)
    if spec.has_class_logits:
        return outputs.argmax(-1).numpy()
    if not spec.is_regression:
        return (outputs > 0).int().numpy()
    low, high = spec.label_range
    if config.regression_head_of(task) == "linear" and config.regression_target_of(task) == "binary":
        return (low + (high - low) * torch.sigmoid(outputs)).numpy()
    return torch.clamp(low + (high - low) * outputs, low, high).numpy()


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


def gflops_fields(side: str, flops: float, seconds: float, peaks: dict, dtype: str) -> dict:
    """A side's ("jax", "torch") GFLOP/s on real tokens and its share of the GEMM peak of its library and dtype."""
    gflops = flops / seconds / 1e9
    return {f"{side}_gflops_real": gflops, f"{side}_peak_share": gflops / peaks["gflops"][side][dtype]}


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
    peak.add_arguments(parser)
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
    peaks = peak.gemm_peaks(["jax"] if torch_model is None else ["jax", "torch"], [args.dtype],
                            args.peak_size, args.peak_repeats)

    def autocast():
        import contextlib

        return torch.autocast("cpu", dtype=torch.bfloat16) if args.dtype == "bfloat16" else contextlib.nullcontext()

    rows, per_task, total_flops = [], {}, 0.0
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
        total_flops += flops
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
            **gflops_fields("jax", flops, seconds["jax"], peaks, args.dtype),
        }
        if torch_model is not None:
            entry.update({
                "torch_seconds": round(seconds["torch"], 4),
                "torch_sentences_per_s": sentences / seconds["torch"],
                "torch_fed_over_real": float(longest.sum() / real.sum()),
                **gflops_fields("torch", flops, seconds["torch"], peaks, args.dtype),
                "jax_over_torch": seconds["torch"] / seconds["jax"],
            })
            if run.config.spec(task).is_regression:
                entry["max_abs_diff"] = float(np.abs(ours - theirs).max())
            else:
                entry["agreement"] = float(np.mean(ours == theirs))
        per_task[task] = entry
        rows.append({"task": f"{task} ({mode})", **entry})

    total_s = {k: sum(e[f"{k}_seconds"] for e in per_task.values())
               for k in ("jax", "torch") if torch_model is not None or k == "jax"}
    sentences = sum(e["sentences"] for e in per_task.values())
    overall = {"sentences": sentences, "jax_sentences_per_s": sentences / total_s["jax"],
               **gflops_fields("jax", total_flops, total_s["jax"], peaks, args.dtype)}
    if "torch" in total_s:
        overall.update(torch_sentences_per_s=sentences / total_s["torch"],
                       jax_over_torch=total_s["torch"] / total_s["jax"],
                       **gflops_fields("torch", total_flops, total_s["torch"], peaks, args.dtype))
    rows.append({"task": "all", **overall})

    info = common.report_machine(load_before)
    print(peak.describe(peaks))
    print(f"split {args.split}, eval batch {args.eval_batch_size}, preset {preset}, {args.dtype}, "
          f"up to {args.max_examples or 'all'} examples per task, best of {args.repeats}")
    common.print_table(rows, [
        ("task", "task", "s"), ("examples", "examples", "d"), ("sentences", "sentences", "d"),
        ("jax_sentences_per_s", "jax sent/s", ".1f"), ("torch_sentences_per_s", "torch sent/s", ".1f"),
        ("jax_over_torch", "jax/torch", ".2f"), ("jax_fed_over_real", "jax fed/real", ".3f"),
        ("torch_fed_over_real", "torch fed/real", ".3f"), ("jax_gflops_real", "jax GFLOP/s", ".1f"),
        ("torch_gflops_real", "torch GFLOP/s", ".1f"), ("jax_peak_share", "jax % peak", ".1%"),
        ("torch_peak_share", "torch % peak", ".1%"), ("jax_warmup_s", "jax warm-up s", ".1f"),
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
        "peak": peaks,
        "tasks": per_task,
        "all": overall,
    }
    common.emit_json(result)
    return result


if __name__ == "__main__":
    main()
