"""Evaluation throughput: the JAX predict functions against a PyTorch reference forward pass.

    .venv/bin/python bench/bench_eval.py [--split dev] [--eval-batch-size 128] [--max-batches 8] [--dtype float32]

Per task, the JAX side runs train/evaluate.py's jitted predict function over
TaskData.eval_batches (length-sorted batches padded to the task's buckets); the PyTorch
reference (transformers' BertModel, no_grad, eval mode, the heads of train/model.py)
runs the same batches with padding rows dropped and each sentence batch cut to its
longest sentence. `--max-batches N` keeps N batches spread evenly over the length-sorted
split (short to long; 0: all). Each kept batch runs once untimed (JAX compiles its shape),
then both sides are timed batch by batch, interleaved. Reports sentences per second
(a bi-encoded pair is two sentences), the ratio, tokens fed over real tokens, forward
GFLOP/s on real tokens (2N tokens + 4 layers hidden L^2), and how far the predictions agree.
Prints a table and one `JSON: ` line.
"""

from __future__ import annotations

import argparse
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


def select(batches: list, count: int) -> list:
    if count <= 0 or count >= len(batches):
        return batches
    return [batches[i] for i in np.linspace(0, len(batches) - 1, count).round().astype(int)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="dev")
    parser.add_argument("--eval-batch-size", type=int, default=128)
    parser.add_argument("--max-batches", type=int, default=8, help="batches per task, spread over the lengths; 0: all")
    parser.add_argument("--preset", default="cosfeat-pcgrad-mean", help="a train.config preset; 'none' for the defaults")
    parser.add_argument("--tasks", default="sst,para,sts")
    parser.add_argument("--init-checkpoint", default=str(common.DEFAULT_CHECKPOINT), help="Flax encoder checkpoint")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--torch-attn", default="sdpa", choices=("sdpa", "eager"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: the cores XLA uses)")
    parser.add_argument("--no-compile-cache", action="store_true", help="skip the persistent XLA compilation cache")
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import torch

    from train.evaluate import make_predict_fns
    from train.model import MultitaskBert

    load_before = common.start_comparison(args.threads, not args.no_compile_cache)
    preset = None if args.preset in ("none", "") else args.preset
    tasks = tuple(t for t in args.tasks.split(",") if t)
    run = common.load_run(preset, args.init_checkpoint, 32, eval_batch_size=args.eval_batch_size, tasks=tasks)
    config = run.config
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
    model = MultitaskBert(run.bert_config, config, dtype=dtype)
    predict_fns = make_predict_fns(model, config)
    params = run.init_params()
    torch_model = None if args.skip_torch else common.make_torch_model(run, params, args.torch_attn).eval()

    def autocast():
        import contextlib

        return torch.autocast("cpu", dtype=torch.bfloat16) if args.dtype == "bfloat16" else contextlib.nullcontext()

    rows, per_task = [], {}
    for task in tasks:
        data = run.data[task]
        mode = data.mode
        all_batches = list(data.eval_batches(args.split, args.eval_batch_size))
        batches = select(all_batches, args.max_batches)
        jax_batches = [jax.device_put({k: v for k, v in b.items() if k != "index"}) for b in batches]
        torch_batches = [common.torch_sides(b, mode) for b in batches]
        sentences = sum(int((b["weights"] > 0).sum()) * (2 if mode == "bi" else 1) for b in batches)
        real = np.concatenate([common.real_lengths(b, mode) for b in batches])
        fed = np.concatenate([common.fed_lengths(b) for b in batches])
        longest = np.concatenate([common.longest_lengths(b, mode) for b in batches])

        def jax_run(i):
            return np.asarray(predict_fns[task](params, jax_batches[i]))

        def torch_run(i):
            with torch.no_grad(), autocast():
                return torch_predictions(torch_model(torch_batches[i], task), task, config)

        start = time.perf_counter()
        for i in range(len(batches)):
            jax_run(i)
        warmup = time.perf_counter() - start
        if torch_model is not None:
            torch_run(0)
        times = {"jax": 0.0, "torch": 0.0}
        agree, max_diff = [], 0.0
        for i, batch in enumerate(batches):
            t0 = time.perf_counter()
            ours = jax_run(i)
            t1 = time.perf_counter()
            times["jax"] += t1 - t0
            if torch_model is None:
                continue
            theirs = torch_run(i)
            times["torch"] += time.perf_counter() - t1
            ours = ours[np.asarray(batch["weights"]) > 0]
            if task == "sts":
                max_diff = max(max_diff, float(np.abs(ours - theirs).max()))
            else:
                agree.append(ours == theirs)
        flops = common.encoder_flops(run.bert_config, real, train=False)
        entry = {
            "mode": mode,
            "batches": len(batches),
            "batches_in_split": len(all_batches),
            "sentences": sentences,
            "real_tokens": int(real.sum()),
            "jax_warmup_s": round(warmup, 2),
            "jax_seconds": round(times["jax"], 4),
            "jax_sentences_per_s": sentences / times["jax"],
            "jax_fed_over_real": float(fed.sum() / real.sum()),
            "jax_gflops_real": flops / times["jax"] / 1e9,
        }
        if torch_model is not None:
            entry.update({
                "torch_seconds": round(times["torch"], 4),
                "torch_sentences_per_s": sentences / times["torch"],
                "torch_fed_over_real": float(longest.sum() / real.sum()),
                "torch_gflops_real": flops / times["torch"] / 1e9,
                "jax_over_torch": times["torch"] / times["jax"],
            })
            if task == "sts":
                entry["max_abs_diff"] = max_diff
            else:
                entry["agreement"] = float(np.concatenate(agree).mean())
        per_task[task] = entry
        rows.append({"task": f"{task} ({mode})", **entry})

    total_s = {k: sum(e[f"{k}_seconds"] for e in per_task.values()) for k in ("jax", "torch") if torch_model is not None or k == "jax"}
    sentences = sum(e["sentences"] for e in per_task.values())
    overall = {"sentences": sentences, "jax_sentences_per_s": sentences / total_s["jax"]}
    if "torch" in total_s:
        overall.update(torch_sentences_per_s=sentences / total_s["torch"], jax_over_torch=total_s["torch"] / total_s["jax"])
    rows.append({"task": "all", **overall})

    info = common.machine_info()
    info["load_average_before"] = load_before
    print(f"{info['cpu']}, {info['cores']} cores, torch threads {torch.get_num_threads()}, load average "
          f"{load_before} before / {info['load_average']} after")
    print(f"split {args.split}, eval batch {args.eval_batch_size}, preset {preset}, {args.dtype}, "
          f"up to {args.max_batches or 'all'} batches per task")
    common.print_table(rows, [
        ("task", "task", "s"), ("batches", "batches", "d"), ("sentences", "sentences", "d"),
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
        "max_batches": args.max_batches,
        "preset": preset,
        "dtype": args.dtype,
        "tasks": per_task,
        "all": overall,
    }
    common.emit_json(result)
    return result


if __name__ == "__main__":
    main()
