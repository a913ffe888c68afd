"""Where the task gradient calls spend their time: XLA:CPU thunk time by kind, products against the rest.

    .venv/bin/python bench/bench_profile.py [--dtype bfloat16|float32] [--steps 4]
    taskset -c 0 .venv/bin/python bench/bench_profile.py   # one core: thunks run one after another

Runs the gradient calls of the first `--steps` steps of epoch 0 (one batch of each task, as bench_train.py takes
them) twice untimed, once timed, then once under `jax.profiler`, and sums the durations of the thunk events XLA
records on its worker threads by kind: matrix products (`ynn_fusion`, `xnn_fusion` and `dot` thunks) and every
other kind by its fusion name (`add_convert_fusion.12` counts as `add_convert_fusion`). On several cores XLA runs
independent thunks at once and a product's thunk appears on each thread that runs part of it, so the summed
thunk time exceeds the wall time; on one core (`taskset -c 0`) thunks run one after another and the shares split
the wall time. Prints a table and one `JSON: ` line.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

PRODUCT = re.compile(r"^(ynn_fusion|xnn_fusion|dot)")


def thunk_kind(name: str) -> str:
    """'products' for a matrix product's thunk, else the fusion name without its number."""
    return "products" if PRODUCT.match(name) else re.sub(r"\.\d+$", "", name)


def thunk_times(trace_dir: str) -> collections.Counter:
    """Nanoseconds by thunk kind over XLA's worker threads (lines named tf_XLAEigen) of the trace."""
    import jax

    path = next(Path(trace_dir).rglob("*.xplane.pb"))
    times: collections.Counter = collections.Counter()
    for plane in jax.profiler.ProfileData.from_file(str(path)).planes:
        for line in plane.lines:
            if line.name.startswith("tf_XLAEigen"):
                for event in line.events:
                    if not event.name.startswith(("ThunkExecutor", "SlinkyThreadPool")):
                        times[thunk_kind(event.name)] += event.duration_ns
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="steps of epoch 0 whose gradient calls are profiled")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument("--preset", default="cosfeat-pcgrad-mean")
    parser.add_argument("--init-checkpoint", default=str(common.DEFAULT_CHECKPOINT), help="Flax encoder checkpoint")
    parser.add_argument("--top", type=int, default=10, help="kinds listed beside the products")
    args = parser.parse_args(argv)

    import jax

    load_before = common.start_comparison(0, True)
    run = common.load_run(args.preset, args.init_checkpoint, 32)
    calls = common.gradient_calls(run, args.dtype, args.steps)
    for _ in range(2):
        calls()  # compiles (or loads) every program; the heap grows to its peak
    wall_s = calls()
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            traced_s = calls()
        times = thunk_times(trace_dir)
    total = sum(times.values())
    rows = [{"kind": kind, "ms": ns / 1e6, "share": ns / total}
            for kind, ns in [("products", times["products"]),
                             *[(k, v) for k, v in times.most_common() if k != "products"][:args.top]]]
    info = common.report_machine(load_before)
    print(f"{len(jax.devices())} device(s); {args.dtype}, "
          f"{args.steps} steps x {len(run.config.tasks)} task gradient calls")
    print(f"wall {1000 * wall_s:.0f} ms ({1000 * traced_s:.0f} ms traced); thunk time {total / 1e6:.0f} ms "
          f"({total / 1e9 / traced_s:.2f}x the traced wall time)")
    common.print_table(rows, [("kind", "thunk kind", "s"), ("ms", "ms", ".1f"), ("share", "share", ".1%")])
    result = {"benchmark": "profile", "machine": info, "dtype": args.dtype,
              "steps": args.steps, "wall_s": wall_s, "traced_s": traced_s, "thunk_s": total / 1e9,
              "products_share": times["products"] / total if total else 0.0, "rows": rows}
    common.emit_json(result)
    return result


if __name__ == "__main__":
    main()
