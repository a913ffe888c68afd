"""Tracing time of the training step's gradient functions: the encoder's layers as calls of one jitted function
(bert_flax/modeling.py) against a reference encoder that calls each layer's module, as the encoder did before.

    .venv/bin/python bench/bench_trace.py [--preset cosfeat-pcgrad-mean] [--steps 2] [--repeats 3] [--step-repeats 16]

JAX traces a jitted function once per input shape, and the compilation cache keeps compiled programs, not
traces: a run traces each task's gradient function at every bucket length it meets, and its evaluation
functions likewise, at every start. This times `grad_fns[task].trace(...)` (tracing and differentiation; no
lowering, no compiling) on the batches of the first `--steps` steps of epoch 0, each variant from cleared caches,
the variants interleaved, `--repeats` times (the minimum is reported). With `--step-repeats N`, both variants'
gradient functions are then compiled and run on the same batches (dropout on), interleaved N times: the median
and minimum seconds of all traced gradients, to show the compiled programs run as fast. Prints a table and one
`JSON: ` line.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from unittest import mock

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402


def per_layer_encoder():
    """The reference: BertEncoder as it was, each layer's module called in turn (traced once per layer)."""
    import flax.linen as nn

    from bert_flax import modeling

    class PerLayerEncoder(modeling.BertEncoder):
        @nn.compact
        def __call__(self, hidden, attention_bias, deterministic: bool):
            for i in range(self.config.num_hidden_layers):
                layer = modeling.BertLayer(self.config, self.dtype, self.fused_attention, name=f"layer_{i}")
                hidden = layer(hidden, attention_bias, deterministic)
            return hidden

    return PerLayerEncoder


def encoder_variant(encoder):
    """A context in which BertModel builds `encoder` (None: the encoder as it is)."""
    from bert_flax import modeling

    return mock.patch.object(modeling, "BertEncoder", encoder) if encoder else contextlib.nullcontext()


def trace_seconds(run, batches: list[tuple[str, dict]], params) -> float:
    """Seconds to trace every (task, batch) through fresh gradient functions, from cleared caches."""
    import jax

    from bert_flax import modeling
    from train.step import make_grad_fns

    jax.clear_caches()
    modeling._jitted_layer.cache_clear()
    grad_fns = make_grad_fns(run.model, run.config)
    start = time.perf_counter()
    for task, batch in batches:
        grad_fns[task].trace(params, batch, jax.random.key(0), common.step_argument())
    return time.perf_counter() - start


def run_seconds(grad_fns_by_variant: dict, batches: list[tuple[str, dict]], params, repeats: int) -> dict:
    """Per variant, the seconds of each interleaved round that runs every (task, batch) gradient once."""
    import jax

    times = {name: [] for name in grad_fns_by_variant}
    for _ in range(repeats):
        for name, grad_fns in grad_fns_by_variant.items():
            start = time.perf_counter()
            for i, (task, batch) in enumerate(batches):
                jax.block_until_ready(grad_fns[task](params, batch, jax.random.key(i), common.step_argument()))
            times[name].append(time.perf_counter() - start)
    return times


def compiled_grad_fns(run, batches: list[tuple[str, dict]], params) -> dict:
    """Fresh gradient functions, compiled (by a first call) for every batch."""
    import jax

    from train.step import make_grad_fns

    grad_fns = make_grad_fns(run.model, run.config)
    for task, batch in batches:
        jax.block_until_ready(grad_fns[task](params, batch, jax.random.key(0), common.step_argument()))
    return grad_fns


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cosfeat-pcgrad-mean",
                        help="a train.config preset; 'none' for the defaults")
    parser.add_argument("--init-checkpoint", default=str(common.DEFAULT_CHECKPOINT), help="Flax encoder checkpoint")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per task per step")
    parser.add_argument("--steps", type=int, default=2, help="steps of epoch 0 whose batches are traced")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timings of each variant")
    parser.add_argument("--step-repeats", type=int, default=0,
                        help="then run both variants' compiled gradients this many times, interleaved")
    args = parser.parse_args(argv)

    preset = None if args.preset in ("none", "") else args.preset
    run = common.load_run(preset, args.init_checkpoint, args.batch_size)
    batches = [(task, b) for step in common.load_steps(run, args.steps) for task, b in step.items()]
    params = run.init_params()
    variants = {"one jitted layer": None, "per-layer reference": per_layer_encoder()}
    times = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, encoder in variants.items():
            with encoder_variant(encoder):
                times[name].append(trace_seconds(run, batches, params))
    best = {name: min(t) for name, t in times.items()}
    rows = [{"variant": name, "trace_s": best[name], "per_function_ms": 1e3 * best[name] / len(batches),
             "vs_reference": best[name] / best["per-layer reference"]} for name in variants]
    if args.step_repeats:
        import statistics

        import jax

        placed = [(task, jax.device_put(batch)) for task, batch in batches]
        grad_fns = {}
        for name, encoder in variants.items():
            with encoder_variant(encoder):
                grad_fns[name] = compiled_grad_fns(run, placed, params)
        step_times = run_seconds(grad_fns, placed, params, args.step_repeats)
        reference = statistics.median(step_times["per-layer reference"])
        for row in rows:
            row.update(run_median_s=statistics.median(step_times[row["variant"]]),
                       run_min_s=min(step_times[row["variant"]]))
            row["run_vs_reference"] = row["run_median_s"] / reference

    info = common.machine_info()
    print(f"{info['cpu']}, {info['cores']} cores, jax {info['jax']}; preset {preset}, "
          f"{run.bert_config.num_hidden_layers} layers, {len(batches)} (task, batch) traces "
          f"({args.steps} steps), minimum of {args.repeats}")
    common.print_table(rows, [("variant", "variant", "s"), ("trace_s", "trace s", ".2f"),
                              ("per_function_ms", "ms per trace", ".0f"), ("vs_reference", "vs reference", ".2f"),
                              ("run_median_s", "run s (median)", ".3f"), ("run_min_s", "run s (min)", ".3f"),
                              ("run_vs_reference", "run vs reference", ".3f")])
    result = {"benchmark": "trace", "preset": preset, "layers": run.bert_config.num_hidden_layers,
              "traces": len(batches), "rows": rows, "times_s": times, "machine": info}
    common.emit_json(result)
    return result


if __name__ == "__main__":
    main()
