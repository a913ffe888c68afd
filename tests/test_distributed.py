"""Multi-process training: two processes with one CPU device each (jax.distributed over localhost) train the
same run as one process with two devices, and only the main process writes the run's files."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from train import main

REPO = Path(__file__).resolve().parents[1]


def run_flags(tiny_encoder, small_data, run_dir) -> list[str]:
    return ["--init-checkpoint", str(tiny_encoder), "--data-dir", str(small_data), "--epochs", "1",
            "--samples-per-task", "16", "--batch-size", "8", "--eval-batch-size", "32", "--max-length", "32",
            "--num-buckets", "2", "--lr", "1e-3", "--pcgrad", "--pooling", "mean", "--tasks", "sst,sts", "--run-dir", str(run_dir), "--quiet"]


def launch(flags, devices: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    return subprocess.Popen([sys.executable, "-m", "train.main", *flags], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc) -> str:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_predictions(run_dir: Path) -> dict[str, list[str]]:
    return {p.name: p.read_text().splitlines() for p in sorted((run_dir / "predictions").iterdir())}


@pytest.fixture(scope="module")
def two_runs(tiny_encoder, small_data, tmp_path_factory):
    """The same run as 2 processes x 1 device and as 1 process x 2 devices."""
    root = tmp_path_factory.mktemp("distributed")
    address = f"127.0.0.1:{free_port()}"
    procs = [launch(run_flags(tiny_encoder, small_data, root / "multi") + [
        "--coordinator-address", address, "--num-processes", "2", "--process-id", str(i)], devices=1) for i in (0, 1)]
    outputs = [finish(p) for p in procs]
    reference = finish(launch(run_flags(tiny_encoder, small_data, root / "single"), devices=2))
    return root / "multi", root / "single", outputs, reference


def test_two_processes_train_like_one_process_with_two_devices(two_runs):
    multi, single, _, _ = two_runs
    got, want = ([json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (multi, single))
    assert len(got) == len(want) == 1
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


def test_only_the_main_process_reports(two_runs):
    _, _, (main_out, other_out), _ = two_runs
    assert "epoch 0 dev:" in main_out and "best dev:" in main_out
    # Gloo's connection line comes from C++, not from this project.
    assert [line for line in other_out.splitlines() if not line.startswith("[Gloo]")] == []


def test_distributed_flags_are_checked(capsys):
    assert main.main(["--coordinator-address", "127.0.0.1:1", "--num-processes", "2"]) == 1
    assert "--coordinator-address, --num-processes and --process-id go together" in capsys.readouterr().err
