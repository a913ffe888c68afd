"""Peak memory of a short training run and of evaluating it, each in its own process.

    .venv/bin/python bench/bench_memory.py [--samples-per-task 64] [--preset cosfeat-pcgrad-mean] [--tasks sst,sts]

Runs `python -m train.main --epochs 1 --samples-per-task N --quiet --run-dir DIR` (DIR
under /tmp), then `python -m train.evaluate --checkpoint DIR`, and reads each child's
peak resident set size (ru_maxrss from os.wait4, the child and the processes it waited
for) and wall time. A third process that only imports the training code gives the fixed
cost of Python, JAX and the libraries. The training run includes its end-of-epoch dev
evaluation and the final dev/test predictions (train/loop.py finish_run), so its peak
covers both; the XLA compilation cache (.cache/jax) is used as in any run.
Prints a table and one `JSON: ` line; exits 1 if a child fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402


def measure(command: list[str], timeout: float) -> dict:
    """Runs `command` from the repository root; returns exit code, peak RSS (MiB), seconds, output tail."""
    env = {**os.environ, "PYTHONPATH": str(common.REPO)}
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(command, cwd=common.REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.05)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        tail = out.read().decode(errors="replace")[-2000:]
    return {
        "command": " ".join(command[1:]),
        "returncode": process.returncode,
        "max_rss_mib": usage.ru_maxrss / 1024,  # Linux reports KiB
        "seconds": round(time.perf_counter() - start, 2),
        "output_tail": tail,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples-per-task", type=int, default=64)
    parser.add_argument("--preset", default="cosfeat-pcgrad-mean",
                        help="a train.config preset; 'none' for the defaults")
    parser.add_argument("--tasks", default="sst,sts",
                        help="default sst,sts: the Quora dev and test splits (10k pairs each) take about ten minutes "
                             "per pass with MiniLM on 2 cores; add para for the full set")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=128)
    parser.add_argument("--init-checkpoint", default=str(common.DEFAULT_CHECKPOINT))
    parser.add_argument("--data-dir", help="task CSV directory (default: the vendored data/cs224n)")
    parser.add_argument("--splits", default="dev,test", help="splits `train.evaluate` predicts")
    parser.add_argument("--run-dir", help="default: a fresh directory under /tmp, removed afterwards")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per child process")
    args = parser.parse_args(argv)

    load_before = common.load_average()
    run_dir = Path(args.run_dir) if args.run_dir else Path(tempfile.mkdtemp(prefix="bench-memory-", dir="/tmp"))
    python = sys.executable
    train_command = [python, "-m", "train.main", "--epochs", "1", "--samples-per-task", str(args.samples_per_task),
                     "--tasks", args.tasks, "--batch-size", str(args.batch_size), "--eval-batch-size",
                     str(args.eval_batch_size), "--init-checkpoint", args.init_checkpoint, "--quiet",
                     "--run-dir", str(run_dir / "run")]
    if args.data_dir:
        train_command += ["--data-dir", args.data_dir]
    if args.preset not in ("none", ""):
        train_command[3:3] = ["--preset", args.preset]
    results = {}
    try:
        results["imports"] = measure([python, "-c", "import jax, flax, optax, orbax.checkpoint, train.loop"],
                                     args.timeout)
        results["train"] = measure(train_command, args.timeout)
        if results["train"]["returncode"] == 0:
            results["evaluate"] = measure([python, "-m", "train.evaluate", "--checkpoint", str(run_dir / "run"),
                                           "--splits", args.splits], args.timeout)
    finally:
        if not args.run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)

    info = {"cpu": common.cpu_name(), "cores": common.num_cores(), "load_average_before": load_before,
            "load_average": common.load_average()}
    print(f"{info['cpu']}, {info['cores']} cores, load average {load_before} before / {info['load_average']} after")
    print(f"preset {args.preset}, tasks {args.tasks}, {args.samples_per_task} examples per task, batch "
          f"{args.batch_size}, eval batch {args.eval_batch_size}, checkpoint {args.init_checkpoint}")
    common.print_table([{"process": k, **v} for k, v in results.items()], [
        ("process", "process", "s"), ("max_rss_mib", "peak RSS MiB", ".0f"), ("seconds", "seconds", ".1f"),
        ("returncode", "exit", "d"),
    ])
    for name, r in results.items():
        print(f"  {name}: python {r['command']}")
    failed = [k for k, v in results.items() if v["returncode"] != 0]
    for name in failed:
        print(f"--- {name} failed, output tail:\n{results[name]['output_tail']}")
    result = {
        "benchmark": "memory",
        "machine": info,
        "preset": args.preset,
        "tasks": args.tasks,
        "samples_per_task": args.samples_per_task,
        "batch_size": args.batch_size,
        "eval_batch_size": args.eval_batch_size,
        "init_checkpoint": args.init_checkpoint,
        "data_dir": args.data_dir,
        "processes": {k: {x: y for x, y in v.items() if x != "output_tail"} for k, v in results.items()},
        "failed": failed,
    }
    common.emit_json(result)
    if failed:
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
