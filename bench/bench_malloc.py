"""The task gradient calls with malloc keeping freed memory (train.run.keep_freed_memory) and with glibc's default.

    .venv/bin/python bench/bench_malloc.py [--steps 3] [--rounds 8] [--dtype float32|bfloat16]

glibc maps a block over 32 MiB fresh and unmaps it when freed, so a program that allocates such a block on
every call (each task gradient's word-embedding gradient: 30522 x 384 float32, 47 MB) pays a page fault per
4 KiB page each time. The script times the gradient calls of the first `--steps` steps of epoch 0 (one batch
of each task, as bench_train.py takes them) `--rounds` times in each setting, switching the setting in this
process (`mallopt`) and alternating which goes first, each timed round after an untimed one in its setting,
and prints the medians, their ratio and the minor page faults per timed round. Both settings run with the one
arena keep_freed_memory sets at the start (threads keep their arena); `bench_train.py --glibc-malloc` measures
glibc's defaults whole, in a process of its own. glibc only.
"""

from __future__ import annotations

import argparse
import ctypes
import resource
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench import common  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="steps of epoch 0 whose gradient calls are timed")
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds per setting")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument("--preset", default="cosfeat-pcgrad-mean")
    parser.add_argument("--init-checkpoint", default=str(common.DEFAULT_CHECKPOINT), help="Flax encoder checkpoint")
    args = parser.parse_args(argv)
    if not hasattr(ctypes.CDLL(None), "mallopt"):
        parser.error("needs glibc's malloc (mallopt)")

    from train.run import keep_freed_memory

    load_before = common.start_comparison(0, True)
    run = common.load_run(args.preset, args.init_checkpoint, 32)
    calls = common.gradient_calls(run, args.dtype, args.steps)
    calls()  # compiles (or loads) every program
    settings = {"kept": keep_freed_memory, "glibc default": common.glibc_malloc_default}
    seconds = {name: [] for name in settings}
    faults = {name: [] for name in settings}
    for round_ in range(args.rounds):
        for name in (list(settings) if round_ % 2 == 0 else list(settings)[::-1]):
            settings[name]()
            calls()  # untimed: kept memory is back at the heap's peak, as in a run's steps after its first
            before, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
            calls()
            seconds[name].append(time.perf_counter() - start)
            faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    keep_freed_memory()

    info = common.report_machine(load_before)
    print(f"{args.dtype}, {args.steps} steps ({args.steps * len(run.config.tasks)} gradient calls a round), "
          f"{args.rounds} rounds per setting, alternating")
    rows = [{"setting": name, "median_s": float(np.median(seconds[name])), "min_s": min(seconds[name]),
             "max_s": max(seconds[name]), "page_faults_median": int(np.median(faults[name]))} for name in settings]
    common.print_table(rows, [("setting", "setting", "s"), ("median_s", "median s", ".3f"), ("min_s", "min s", ".3f"),
                              ("max_s", "max s", ".3f"), ("page_faults_median", "page faults", "d")])
    ratio = rows[0]["median_s"] / rows[1]["median_s"]
    print(f"kept / glibc default, medians: {ratio:.3f}")
    result = {"benchmark": "malloc", "dtype": args.dtype, "steps": args.steps, "rounds": args.rounds, "rows": rows,
              "seconds": seconds, "kept_over_default": ratio, "machine": info}
    common.emit_json(result)
    return result


if __name__ == "__main__":
    main()
