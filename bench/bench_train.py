"""Training-step throughput: the JAX multi-task step (summed and PCGrad) against a PyTorch reference.

    .venv/bin/python bench/bench_train.py [--steps 8] [--preset cosfeat-pcgrad-mean] [--dtype float32|bfloat16|both]
                                          [--torch-compile] [--no-dropout] [--batch-size 32]

Both frameworks train on the same examples: the first `--steps` steps of epoch 0 of the
project's multi-task stream (one batch of each task per step). The JAX side runs them as
the training loop does (train/step.py: one jitted gradient function per task, one jitted
update that sums or PCGrad-combines and applies AdamW) on the length-bucketed batches;
the PyTorch reference (transformers' BertModel in eager mode, the heads and losses of
train/model.py and train/losses.py, torch.optim.AdamW) gets each batch with its padding
rows dropped and each sentence batch cut to its longest sentence, as the CS224N code pads.
The summed reference backpropagates the sum of the task losses once; the PCGrad reference
takes one gradient per task and projects them (as the JAX step does).

Every shape of the timed steps is compiled (JAX) or run once (PyTorch) before timing,
and that warm-up is reported apart. Variants run interleaved step by step (the order
rotating), so load from other processes hits them alike; compare the ratios. Before the
steps, the same process measures its own GEMM peak per library and dtype (bench/peak.py),
and each variant's GFLOP/s is also given as a share of the peak of its library and dtype:
a ratio to PyTorch depends on the CPU, a share of the peak says how close the step comes
to the hardware. Prints a table and one `JSON: ` line. FLOP formulas: bench/common.py and
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench import common, peak  # noqa: E402


# --------------------------------------------------------------------------- JAX side


class JaxTrainer:
    """The training loop's step (train/step.py train_step, keyed as train/loop.py keys it) for one
    configuration, blocking at the end."""

    def __init__(self, run, config, model, params, grad_fns, key_impl: str):
        import jax

        from train.step import make_optimizer, make_update, placed_state

        tx = make_optimizer(config, run.total_steps())
        self.grad_fns = grad_fns
        self.update = make_update(config, tx)
        # Placed as train/loop.py places it: no timed step meets a sharding it was not compiled for.
        self.state = placed_state(jax.tree_util.tree_map(lambda x: x.copy(), params), tx, run.replicated)
        self.base_key = jax.random.key(config.seed, impl=key_impl)  # train/loop.py uses "rbg" keys
        self.count = 0

    def step(self, batches: dict) -> None:
        import jax

        from train.step import train_step

        key = jax.random.fold_in(self.base_key, self.count)
        self.state, _, _ = train_step(self.state, batches, key, self.grad_fns, self._keeping_update)
        jax.block_until_ready(self.state.params)
        self.count += 1

    def _keeping_update(self, state, task_grads: tuple, key):
        """The update, keeping its gradients for `time_update`."""
        self.last_grads = task_grads
        return self.update(state, task_grads, key)

    def time_update(self) -> float:
        """Seconds of one update (combination + AdamW) on the last step's gradients, alone."""
        import jax

        start = time.perf_counter()
        self.state, _ = self.update(self.state, self.last_grads, jax.random.fold_in(self.base_key, self.count))
        jax.block_until_ready(self.state.params)
        return time.perf_counter() - start


def jax_losses(model, config, params, batches: dict) -> dict[str, float]:
    """Deterministic (no dropout) loss of each task batch."""
    import jax

    from train.losses import task_loss

    out = {}
    for task, batch in batches.items():
        fn = jax.jit(lambda p, b, task=task: task_loss(model.apply({"params": p}, b, task), b, task, config))
        out[task] = float(fn(params, batch))
    return out


# --------------------------------------------------------------------------- PyTorch side


class TorchTrainer:
    """The PyTorch reference step: summed loss and one backward, or per-task gradients and PCGrad."""

    def __init__(self, run, params, pcgrad: bool, bf16: bool, attn: str, compile_mode: bool):
        import torch

        self.torch = torch
        self.model = common.make_torch_model(run, params, attn).train()
        self.config = run.config
        self.pcgrad = pcgrad
        self.bf16 = bf16
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=run.config.lr, weight_decay=run.config.weight_decay, eps=1e-6
        )
        self.names = [n for n, _ in self.model.named_parameters()]
        self.params = list(self.model.parameters())
        self.shared = [common.is_shared_torch_param(n) for n in self.names]
        self.generator = torch.Generator().manual_seed(run.config.seed)

        def loss_fn(sides, labels, task):
            return self.model.loss(self.model(sides, task), labels, task)

        self.loss_fn = torch.compile(loss_fn, dynamic=True) if compile_mode else loss_fn

    def autocast(self):
        if self.bf16:
            return self.torch.autocast("cpu", dtype=self.torch.bfloat16)
        return contextlib.nullcontext()

    def step(self, batches: dict) -> None:
        torch = self.torch
        if not self.pcgrad:
            self.optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                total = sum(self.loss_fn(sides, labels, task) for task, (sides, labels) in batches.items())
            total.backward()
        else:
            task_grads = []
            for task, (sides, labels) in batches.items():
                with self.autocast():
                    loss = self.loss_fn(sides, labels, task)
                task_grads.append(list(torch.autograd.grad(loss, self.params, allow_unused=True)))
            combined = common.torch_pcgrad_(task_grads, self.shared, self.generator)
            for p, g in zip(self.params, combined):
                p.grad = g
        self.optimizer.step()

    def losses(self, batches: dict) -> dict[str, float]:
        torch = self.torch
        self.model.eval()
        try:
            with torch.no_grad(), self.autocast():
                return {t: float(self.model.loss(self.model(s, t), y, t)) for t, (s, y) in batches.items()}
        finally:
            self.model.train()


# --------------------------------------------------------------------------- benchmark


def step_tokens(run, steps: list[dict]) -> dict:
    """Per step: examples, real lengths, lengths fed by the bucketed pipeline and by pad-to-longest."""
    out = []
    for batches in steps:
        real, fed, longest, examples = [], [], [], 0
        for task, batch in batches.items():
            mode = common.task_mode(run, task)
            real.append(common.real_lengths(batch, mode))
            fed.append(common.fed_lengths(batch))
            longest.append(common.longest_lengths(batch, mode))
            examples += int(np.asarray(batch["weights"]).sum())
        out.append({"examples": examples, "real": np.concatenate(real), "fed": np.concatenate(fed),
                    "longest": np.concatenate(longest)})
    return out


def shapes_of(batches: dict) -> tuple:
    return tuple(sorted((t, np.asarray(b["input_ids"]).shape) for t, b in batches.items()))


def bench_dtype(args, run, steps, tokens, dtype_name: str, peaks: dict) -> tuple[list[dict], dict]:
    """Rows of every variant in one dtype, and notes; each row gets its share of the GEMM peak of its
    library and dtype in `peaks` (bench/peak.py gemm_peaks)."""
    import jax
    import jax.numpy as jnp

    from train.step import make_grad_fns

    dtype = jnp.dtype(dtype_name)
    params = run.init_params()
    model = run.model.clone(dtype=dtype)
    summed = dataclasses.replace(run.config, pcgrad=False)
    grad_fns = make_grad_fns(model, summed)  # the same computation for both: only the update differs
    device_steps = [jax.device_put(s) for s in steps]
    torch_steps = [
        {t: (common.torch_sides(b, common.task_mode(run, t)), common.torch_labels(b)) for t, b in s.items()}
        for s in steps
    ]

    variants: dict[str, tuple] = {}  # name -> (step function, kind, framework)
    notes = {}
    jax_trainers = {"sum": JaxTrainer(run, summed, model, params, grad_fns, args.prng)}
    if not args.no_pcgrad:
        pcgrad = dataclasses.replace(run.config, pcgrad=True)
        jax_trainers["pcgrad"] = JaxTrainer(run, pcgrad, model, params, grad_fns, args.prng)
    for kind, trainer in jax_trainers.items():
        variants[f"jax {kind}"] = (trainer.step, kind, "jax")
    check = {}
    if not args.skip_torch:
        bf16 = dtype_name == "bfloat16"
        eager = TorchTrainer(run, params, False, bf16, args.torch_attn, False)
        variants["torch eager sum"] = (eager.step, "sum", "torch")
        if not args.no_pcgrad:
            variants["torch eager pcgrad"] = (TorchTrainer(run, params, True, bf16, args.torch_attn, False).step,
                                              "pcgrad", "torch")
        if args.torch_compile:
            compiled = TorchTrainer(run, params, False, bf16, args.torch_attn, True)
            variants["torch compile sum"] = (compiled.step, "sum", "torch")
        if not args.no_check:
            # Same weights, same batch, no dropout: the losses must agree (to bf16 precision in bfloat16).
            ours = jax_losses(model, run.config, params, device_steps[0])
            theirs = eager.losses(torch_steps[0])
            check = {t: {"jax": ours[t], "torch": theirs[t], "abs_diff": abs(ours[t] - theirs[t])} for t in ours}

    times = {name: [] for name in variants}
    warmup = {name: 0.0 for name in variants}
    failed = {}

    def timed(name, index, record):
        fn, _, framework = variants[name]
        batch = device_steps[index] if framework == "jax" else torch_steps[index]
        start = time.perf_counter()
        try:
            fn(batch)
        except Exception as err:  # torch.compile can fail on some set-ups: report and carry on
            failed[name] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            if args.verbose:
                traceback.print_exc()
            return
        elapsed = time.perf_counter() - start
        if record:
            times[name].append(elapsed)
        else:
            warmup[name] += elapsed

    # Warm-up: the JAX gradient functions (shared by both JAX variants) compile once per task
    # and shape, so each task batch of a new shape runs once alone; then every variant takes
    # the first step (the JAX updates compile, PyTorch allocates). Reported apart from timing.
    import jax

    seen: set = set()
    start = time.perf_counter()
    trainer = jax_trainers["sum"]  # the warm-up passes arguments of the kinds and shardings the timed steps pass
    for batches in device_steps:
        for task, batch in batches.items():
            if (task, batch["input_ids"].shape) not in seen:
                seen.add((task, batch["input_ids"].shape))
                jax.block_until_ready(grad_fns[task](trainer.state.params, batch,
                                                     jax.random.fold_in(trainer.base_key, 0), trainer.state.step))
    compile_s = time.perf_counter() - start
    notes["jax_grad_shapes"] = len(seen)
    notes["jax_grad_warmup_s"] = round(compile_s, 2)
    for name in list(variants):
        timed(name, 0, record=False)
        if "compile" in name and len(steps) > 1:  # dynamic shapes settle on the second distinct shape
            timed(name, 1, record=False)
    for name in failed:
        variants.pop(name, None)

    def programs() -> int:  # traced signatures held by the gradient functions (a private JAX counter)
        return sum(fn._cache_size() for fn in grad_fns.values())

    programs_before = programs()
    order = list(variants)
    for i in range(len(steps)):
        shift = i % len(order)
        for name in order[shift:] + order[:shift]:
            if name in variants and name not in failed:
                timed(name, i, record=True)

    notes["jax_programs_traced_while_timed"] = programs() - programs_before
    if notes["jax_programs_traced_while_timed"]:
        print(f"warning: the timed JAX steps traced {notes['jax_programs_traced_while_timed']} new gradient "
              "programs: their times include compilation", file=sys.stderr)
    if len(jax_trainers) == 2:
        # Both JAX variants run the same gradient programs, so the step times differ by the update alone:
        # timed here interleaved on the same gradients, it gives the PCGrad overhead free of the load noise
        # that the step times carry.
        update_s = {kind: [] for kind in jax_trainers}
        for _ in range(args.update_repeats):
            for kind, trainer in jax_trainers.items():
                update_s[kind].append(trainer.time_update())
        notes["update_ms_median"] = {kind: 1000 * float(np.median(t)) for kind, t in update_s.items()}

    real_tokens = sum(int(t["real"].sum()) for t in tokens)
    examples = sum(t["examples"] for t in tokens)
    real_flops = sum(common.encoder_flops(run.bert_config, t["real"]) for t in tokens)
    rows = []
    for name, (_, kind, framework) in variants.items():
        if name in failed or not times[name]:
            continue
        seconds = sum(times[name])
        key = "fed" if framework == "jax" else "longest"
        fed_tokens = sum(int(t[key].sum()) for t in tokens)
        fed_flops = sum(common.encoder_flops(run.bert_config, t[key]) for t in tokens)
        gflops_real, gflops_fed = real_flops / seconds / 1e9, fed_flops / seconds / 1e9
        peak_gflops = peaks["gflops"][framework][dtype_name]
        rows.append({
            "variant": f"{name} {dtype_name}",
            "name": name, "kind": kind, "framework": framework, "dtype": dtype_name,
            "steps": len(times[name]),
            "seconds": round(seconds, 3),
            "examples_per_s": examples / seconds,
            "step_ms_median": 1000 * float(np.median(times[name])),
            "warmup_s": round(warmup[name], 2),
            "tokens_fed": fed_tokens,
            "real_tokens": real_tokens,
            "fed_over_real": fed_tokens / real_tokens,
            "gflops_real": gflops_real,
            "gflops_fed": gflops_fed,
            "peak_gflops": peak_gflops,
            "peak_share": gflops_real / peak_gflops,
            "peak_share_fed": gflops_fed / peak_gflops,
        })
    by_name = {r["name"]: r for r in rows}
    for r in rows:
        reference = by_name.get(f"torch eager {r['kind']}")
        r["vs_torch_eager"] = r["examples_per_s"] / reference["examples_per_s"] if reference else None
        if r["kind"] == "pcgrad":
            summed_row = by_name.get(r["name"].replace("pcgrad", "sum"))
            r["pcgrad_over_sum"] = r["seconds"] / summed_row["seconds"] if summed_row else None
            r["pcgrad_over_sum_median"] = r["step_ms_median"] / summed_row["step_ms_median"] if summed_row else None
            if summed_row and "update_ms_median" in notes and r["framework"] == "jax":
                extra_ms = notes["update_ms_median"]["pcgrad"] - notes["update_ms_median"]["sum"]
                r["pcgrad_over_sum_by_update"] = 1 + extra_ms / summed_row["step_ms_median"]
    notes["failed"] = failed
    notes["loss_check"] = check
    return rows, notes


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps (each: one batch of every task)")
    parser.add_argument("--start-step", type=int, default=0, help="first step of epoch 0 to use")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per task per step")
    parser.add_argument("--preset", default="cosfeat-pcgrad-mean",
                        help="a train.config preset; 'none' for the defaults")
    parser.add_argument("--init-checkpoint", default=str(common.DEFAULT_CHECKPOINT), help="Flax encoder checkpoint")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "both"), default="float32")
    parser.add_argument("--no-dropout", action="store_true", help="zero every dropout rate (deterministic steps)")
    parser.add_argument("--no-pcgrad", action="store_true", help="time the summed step only")
    parser.add_argument("--skip-torch", action="store_true", help="JAX variants only")
    parser.add_argument("--torch-compile", action="store_true", help="add a torch.compile(dynamic=True) summed variant")
    parser.add_argument("--torch-attn", default="sdpa", choices=("sdpa", "eager"), help="transformers attention")
    parser.add_argument("--prng", default="rbg", choices=("rbg", "threefry2x32", "unsafe_rbg"),
                        help="JAX dropout key implementation (train/loop.py uses rbg)")
    common.add_encoder_chunks_argument(parser)
    peak.add_arguments(parser)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: the cores XLA uses)")
    parser.add_argument("--no-check", action="store_true", help="skip the deterministic loss check")
    parser.add_argument("--no-compile-cache", action="store_true",
                        help="do not use the project's persistent XLA compilation cache (.cache/jax), as training "
                             "does: the warm-up then measures cold compilation")
    parser.add_argument("--update-repeats", type=int, default=20,
                        help="interleaved timings of the JAX updates alone (summed vs PCGrad) on the same gradients")
    parser.add_argument("--glibc-malloc", action="store_true",
                        help="both libraries with glibc's malloc defaults, not keeping freed memory as training does "
                             "(train.run.keep_freed_memory)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    load_before = common.start_comparison(args.threads, not args.no_compile_cache, args.glibc_malloc)
    preset = None if args.preset in ("none", "") else args.preset
    run = common.load_run(preset, args.init_checkpoint, args.batch_size, no_dropout=args.no_dropout,
                          encoder_chunks=args.encoder_chunks)
    steps = common.load_steps(run, args.steps, args.start_step)
    tokens = step_tokens(run, steps)
    dtypes = ["float32", "bfloat16"] if args.dtype == "both" else [args.dtype]
    libraries = ["jax"] if args.skip_torch else ["jax", "torch"]
    peaks = peak.gemm_peaks(libraries, dtypes, args.peak_size, args.peak_repeats)
    rows, notes = [], {}
    for dtype_name in dtypes:
        r, n = bench_dtype(args, run, steps, tokens, dtype_name, peaks)
        rows += r
        notes[dtype_name] = n

    info = common.report_machine(load_before)
    print(peak.describe(peaks))
    print(f"preset {preset}, batch {args.batch_size} per task, tasks {','.join(run.config.tasks)}, "
          f"{len(steps)} timed steps of epoch 0, {'no dropout' if args.no_dropout else 'dropout on'} "
          f"(JAX keys {args.prng}, encoder chunks {run.model.encoder_chunks}), "
          f"{common.nonembedding_params(run.bert_config) / 1e6:.2f}M non-embedding parameters, malloc "
          f"{'glibc default' if args.glibc_malloc else 'keeping freed memory'}")
    common.print_table(rows, [
        ("variant", "variant", "s"), ("examples_per_s", "ex/s", ".1f"), ("step_ms_median", "step ms", ".0f"),
        ("vs_torch_eager", "vs torch", ".2f"), ("pcgrad_over_sum", "pcg/sum", ".2f"),
        ("pcgrad_over_sum_median", "median", ".3f"),
        ("tokens_fed", "tokens fed", "d"), ("fed_over_real", "fed/real", ".3f"),
        ("gflops_real", "GFLOP/s real", ".1f"), ("gflops_fed", "GFLOP/s fed", ".1f"), ("peak_share", "% peak", ".1%"),
        ("warmup_s", "warm-up s", ".1f"),
    ])
    print("ex/s: real examples (all tasks) per second; vs torch: over torch eager of the same kind (sum/pcgrad); "
          "pcg/sum: PCGrad over summed step time (total; median: of the median steps); "
          "GFLOP/s real/fed: 6N tokens + 12 layers hidden L^2 "
          "on real / fed lengths; % peak: GFLOP/s real over the GEMM peak of the same library and dtype")
    cache = "off" if args.no_compile_cache else "on (.cache/jax)"
    for dtype_name, n in notes.items():
        print(f"JAX {dtype_name} warm-up: {n['jax_grad_shapes']} task shapes through the gradient functions in "
              f"{n['jax_grad_warmup_s']:.1f} s (compilation cache {cache}); the warm-up column is the first step "
              f"(JAX: update compilation)")
        if "update_ms_median" in n:
            ms = n["update_ms_median"]
            by_update = next(r["pcgrad_over_sum_by_update"] for r in rows
                             if r["dtype"] == dtype_name and "pcgrad_over_sum_by_update" in r)
            print(f"JAX {dtype_name} update alone (median of {args.update_repeats}, same gradients): summed "
                  f"{ms['sum']:.1f} ms, PCGrad {ms['pcgrad']:.1f} ms; PCGrad/sum step time from the update "
                  f"difference over the summed step: {by_update:.3f}")
        for task, c in n["loss_check"].items():
            print(f"loss check {dtype_name} {task}: jax {c['jax']:.6f} torch {c['torch']:.6f} "
                  f"|diff| {c['abs_diff']:.2e}")
        for name, why in n["failed"].items():
            print(f"{name} {dtype_name} FAILED: {why}")
    result = {
        "benchmark": "train_step",
        "machine": info,
        "preset": preset,
        "batch_size": args.batch_size,
        "steps": len(steps),
        "dropout": not args.no_dropout,
        "compile_cache": not args.no_compile_cache,
        "malloc": "glibc default" if args.glibc_malloc else "kept (train.run.keep_freed_memory)",
        "prng": args.prng,
        "encoder_chunks": run.model.encoder_chunks,
        "nonembedding_params": common.nonembedding_params(run.bert_config),
        "peak": peaks,
        "real_tokens": sum(int(t["real"].sum()) for t in tokens),
        "examples": sum(t["examples"] for t in tokens),
        "rows": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
        "notes": notes,
    }
    common.emit_json(result)
    return result


if __name__ == "__main__":
    main()
