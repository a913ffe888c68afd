"""Multi-process training: two processes with one CPU device each (jax.distributed over localhost) train the
same run as one process with two devices, and only the main process writes the run's files."""

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO, devices_env
from train import main


def run_flags(tiny_encoder, small_data, run_dir) -> list[str]:
    # One length bucket: process 1 never reads JAX's compilation cache (its cache keys name its own devices, and
    # JAX writes the cache from process 0 only), so it compiles every program of every run; a second bucket
    # doubles the programs and adds about 10 s to each two-process run.
    return ["--init-checkpoint", str(tiny_encoder), "--data-dir", str(small_data), "--epochs", "2",
            "--samples-per-task", "16", "--batch-size", "8", "--eval-batch-size", "32", "--max-length", "32",
            "--num-buckets", "1", "--lr", "1e-3", "--pcgrad", "--pooling", "mean", "--tasks", "sst,sts",
            "--run-dir", str(run_dir), "--quiet"]


def launch(flags, devices: int) -> subprocess.Popen:
    env = {**devices_env(devices), "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "train.main", *flags], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, before: str = "", returncode: int = 0) -> str:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == returncode, err[-3000:]
    return before + out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_predictions(run_dir: Path) -> dict[str, list[str]]:
    return {p.name: p.read_text().splitlines() for p in sorted((run_dir / "predictions").iterdir())}


def launch_processes(flags) -> list[subprocess.Popen]:
    address = f"127.0.0.1:{free_port()}"
    return [launch(flags + ["--coordinator-address", address, "--num-processes", "2", "--process-id", str(i)],
                   devices=1) for i in (0, 1)]


@pytest.fixture(scope="module")
def two_runs(tiny_encoder, small_data, tmp_path_factory):
    """The same run as 2 processes x 1 device, Ctrl-C'd in process 1 only after the first epoch's steps and
    resumed, and as 1 process x 2 devices without a stop."""
    root = tmp_path_factory.mktemp("distributed")
    flags = run_flags(tiny_encoder, small_data, root / "multi")
    procs = launch_processes(flags)
    seen = ""
    for line in procs[0].stdout:
        seen += line
        if line.startswith("epoch 0:"):
            procs[1].send_signal(signal.SIGINT)
            break
    interrupted = [finish(procs[0], seen, returncode=130), finish(procs[1], returncode=130)]
    resumed = [finish(p) for p in launch_processes(["--resume", str(root / "multi")] + flags[-1:])]
    reference = finish(launch(run_flags(tiny_encoder, small_data, root / "single"), devices=2))
    return root / "multi", root / "single", interrupted, resumed, reference


def test_two_processes_train_like_one_process_with_two_devices(two_runs):
    multi, single, *_ = two_runs
    got, want = ([json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (multi, single))
    assert len(got) == len(want) == 2
    for g, w in zip(got, want):
        np.testing.assert_allclose(list(g["loss"].values()), list(w["loss"].values()), rtol=1e-5)
        np.testing.assert_allclose(list(g["dev"].values()), list(w["dev"].values()), rtol=1e-5)
        np.testing.assert_allclose(g["pcgrad_conflict_rate"], w["pcgrad_conflict_rate"])
    got, want = read_predictions(multi), read_predictions(single)
    assert sorted(got) == sorted(want) == sorted(f"{t}-{s}-output.csv" for t in ("sst", "sts") for s in ("dev", "test"))
    for name in got:
        if name.startswith("sts"):
            values = [np.array([float(line.split(",")[1]) for line in lines[1:]]) for lines in (got[name], want[name])]
            np.testing.assert_allclose(values[0], values[1], atol=2e-4)
        else:
            assert got[name] == want[name], name
    assert (multi / "best_encoder" / "params").is_dir() and (multi / "curves.png").exists()


def test_ctrl_c_in_one_process_stops_both_at_the_same_step(two_runs):
    _, _, (main_out, other_out), (resumed_main, resumed_other), _ = two_runs
    assert "interrupted: checkpoint saved" in main_out and "best dev:" not in main_out
    assert "epoch 1 dev:" in resumed_main and "best dev:" in resumed_main
    # Only the main process prints (Gloo's connection line comes from C++, not from this project).
    assert [line for line in (other_out + resumed_other).splitlines() if not line.startswith("[Gloo]")] == []


def test_distributed_flags_are_checked(capsys):
    assert main.main(["--coordinator-address", "127.0.0.1:1", "--num-processes", "2"]) == 1
    assert "--coordinator-address, --num-processes and --process-id go together" in capsys.readouterr().err
