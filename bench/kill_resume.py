"""Kills default-size training runs (all-MiniLM-L6-v2) with SIGKILL at random moments, resumes each, and checks
that they end exactly where a run never stopped ends.

    .venv/bin/python bench/kill_resume.py [--kills 3] [--seed 0] [--rows 256] [--samples-per-task 64]

Every run is `python -m train.main --preset cosfeat-pcgrad-mean --epochs 2 --save-every-steps 2 --quiet` on the
first --rows rows of every task file (0: all of them), from the repository root (so with the usual compilation
cache, .cache/jax), with run directories under a fresh /tmp directory (removed afterwards unless --keep).

The reference run trains first (it may compile); a second uninterrupted run then shows that two runs never stopped
agree (without that, no comparison means anything) and, with the compilation cache warm, sets the time scale T.
Then each of --kills runs starts afresh, is killed after a random delay, and is resumed with --resume to the end;
the delays are drawn from --kills equal slices of [5%, 95%] of T, one from each, so they spread over the run. For
each kill the script prints where it landed (set-up, a step, the dev evaluation, a checkpoint write, the final
predictions), judged from the run's output and files, and whether the resumed run matches the reference: the same
metrics.jsonl (timing fields aside), latest and best checkpoints (parameters, optimizer state, position) and
prediction files. Prints one `JSON: ` line at the end; exits 1 if a run fails or differs from the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TIMING_FIELDS = ("step_time_s", "examples_per_s")
EPOCHS = 2


class Training:
    """A `python -m train.main` child process; its stdout lines (without the newline) are collected as they come.
    tests/test_reliability.py drives its runs with this class too."""

    def __init__(self, argv: list[str], cwd: Path, stderr: Path):
        self.stderr = stderr
        with open(stderr, "a") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "train.main", *argv], cwd=cwd, stdout=subprocess.PIPE, stderr=err,
                text=True, env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},
            )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code, or None if still running after `timeout` seconds."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._reader.join()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL, then reap."""
        self.proc.kill()
        self.wait()

    def output(self) -> str:
        """Its stdout and the end of its stderr file, for failure messages."""
        return "\n".join(self.lines) + "\n--- stderr:\n" + self.stderr.read_text()[-3000:]


def small_data(rows: int, out: Path) -> Path:
    """The first `rows` rows of every task file (the vendored data itself if rows is 0)."""
    source = REPO / "data" / "cs224n"
    if rows == 0:
        return source
    out.mkdir(parents=True)
    for path in source.glob("*.csv"):
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        (out / path.name).write_text("".join(lines[: rows + 1]), encoding="utf-8")
    return out


def complete_steps(manager_dir: Path) -> list[int]:
    """The complete checkpoints of an orbax checkpoint manager directory."""
    return sorted(int(p.name) for p in manager_dir.glob("*") if p.name.isdigit())


def snapshot(run_dir: Path) -> str:
    """The run's checkpoints and metrics lines, in a few words."""
    metrics = run_dir / "metrics.jsonl"
    lines = len(metrics.read_text().splitlines()) if metrics.exists() else 0
    return (f"latest {complete_steps(run_dir / 'checkpoints' / 'latest')}, "
            f"best {complete_steps(run_dir / 'checkpoints' / 'best')}, metrics lines {lines}")


def where(run_dir: Path, training: Training) -> str:
    """Where a killed run stopped, judged from its files and its last line of output (one per epoch, --quiet)."""
    last = training.lines[-1] if training.lines else ""
    latest = run_dir / "checkpoints" / "latest"
    if list((run_dir / "checkpoints").glob("*/*orbax-checkpoint-tmp*")):
        return "during a checkpoint write"
    if not complete_steps(latest):
        return "in set-up (imports, data, compilation) or a step before the first checkpoint"
    if json.loads((latest / str(complete_steps(latest)[-1]) / "meta" / "metadata").read_text())["epoch"] == EPOCHS:
        return "after the last epoch (final predictions, best_encoder/, curves.png)"
    if last.startswith("epoch ") and " dev: " not in last:
        return "during the dev evaluation (or the checkpoint writes after it)"
    return "during a step"


def outcome(run_dir: Path) -> dict:
    """What a finished run leaves: metrics without timings, checkpoints (as numpy), prediction files."""
    import jax
    import orbax.checkpoint as ocp

    from train.metrics import predictions_dir

    result = {"metrics": [{k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS}
                          for line in (run_dir / "metrics.jsonl").read_text().splitlines()]}
    for name in ("latest", "best"):
        directory = run_dir / "checkpoints" / name
        step = complete_steps(directory)[-1]
        result[name] = jax.device_get(ocp.StandardCheckpointer().restore(directory / str(step) / "state"))
        result[f"{name}_meta"] = json.loads((directory / str(step) / "meta" / "metadata").read_text())
    result["predictions"] = {p.name: p.read_bytes() for p in sorted(predictions_dir(run_dir).iterdir())}
    return result


def differences(ours: dict, reference: dict) -> list[str]:
    """What differs between two outcomes, one line each (empty: identical)."""
    import jax
    import numpy as np

    found = []
    for key in ("metrics", "latest_meta", "best_meta", "predictions"):
        if ours[key] != reference[key]:
            found.append(f"{key} differ")
    for name in ("latest", "best"):
        a, b = (jax.tree_util.tree_flatten_with_path(x[name])[0] for x in (ours, reference))
        if [p for p, _ in a] != [p for p, _ in b]:
            found.append(f"{name}: different trees")
            continue
        for (path, x), (_, y) in zip(a, b):
            if not np.array_equal(x, y):
                found.append(f"{name} {jax.tree_util.keystr(path)}: max |difference| "
                             f"{float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))):.3g}")
    return found


def main(argv: list[str] | None = None) -> int:
    """Runs the reference, the repeat and the killed and resumed runs, and compares them; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill delays")
    parser.add_argument("--rows", type=int, default=256, help="rows kept per task file (0: all)")
    parser.add_argument("--samples-per-task", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--init-checkpoint", default="checkpoints/minilm-l6")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per child process")
    parser.add_argument("--keep", action="store_true", help="keep the run directories")
    args = parser.parse_args(argv)

    from train.run import ensure_init_checkpoint

    ensure_init_checkpoint(args.init_checkpoint)
    root = Path(tempfile.mkdtemp(prefix="kill-resume-", dir="/tmp"))
    log = root / "stderr.txt"
    flags = ["--preset", "cosfeat-pcgrad-mean", "--init-checkpoint", args.init_checkpoint,
             "--data-dir", str(small_data(args.rows, root / "data")), "--epochs", str(EPOCHS),
             "--samples-per-task", str(args.samples_per_task), "--batch-size", str(args.batch_size),
             "--max-length", str(args.max_length), "--save-every-steps", "2", "--quiet"]
    print(f"runs under {root}; child stderr in {log}")
    print("train.main " + " ".join(flags))
    report = {"kills": [], "seed": args.seed, "rows": args.rows, "samples_per_task": args.samples_per_task}
    try:
        for name in ("reference", "repeat"):
            start = time.perf_counter()
            training = Training(flags + ["--run-dir", str(root / name)], REPO, log)
            if training.wait(args.timeout) != 0:
                print(f"the {name} run failed (exit code {training.proc.returncode}); see {log}")
                return 1
            report[f"{name}_s"] = time.perf_counter() - start
            print(f"{name} run: {report[f'{name}_s']:.1f} s")
        found = differences(outcome(root / "repeat"), outcome(root / "reference"))
        if found:
            print("two runs never stopped differ, so a resumed run cannot be compared:\n  " + "\n  ".join(found))
            return 1

        rng = random.Random(args.seed)
        slice_width = 0.9 / args.kills
        for kill in range(args.kills):
            delay = (0.05 + slice_width * (kill + rng.random())) * report["repeat_s"]
            run_dir = root / f"killed-{kill}"
            training = Training(flags + ["--run-dir", str(run_dir)], REPO, log)
            code = training.wait(delay)
            if code is None:
                training.kill()
                landed = where(run_dir, training)
            elif code == 0:
                landed = "after the end"
            else:
                print(f"kill {kill}: the run failed (exit code {code}) before the kill; see {log}")
                return 1
            print(f"kill {kill} after {delay:.1f} s: {landed}; {snapshot(run_dir)}")
            start = time.perf_counter()
            resumed = Training(["--resume", str(run_dir), "--quiet"], REPO, log)
            if resumed.wait(args.timeout) != 0:
                print(f"  the resumed run failed (exit code {resumed.proc.returncode}); see {log}")
                return 1
            found = differences(outcome(run_dir), outcome(root / "reference"))
            print(f"  resumed in {time.perf_counter() - start:.1f} s: " +
                  ("MATCH (metrics, checkpoints and predictions equal the reference's)" if not found
                   else "MISMATCH\n    " + "\n    ".join(found)))
            report["kills"].append({"delay_s": delay, "landed": landed, "match": not found})
            if not args.keep:
                shutil.rmtree(run_dir)
        report["match"] = all(k["match"] for k in report["kills"])
        print("JSON: " + json.dumps(report))
        return 0 if report["match"] else 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
