"""The benchmark scripts run at their tiniest sizes and end with a parseable `JSON: ` line.

No timing is asserted: these only check that the scripts work (each in a subprocess, on a
one-layer random BERT where a checkpoint is needed, with a small GEMM for the peak). The
PyTorch reference of bench_train.py must compute the same losses as the JAX model on the
same batch.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import DATA_DIR, REPO


@pytest.fixture(scope="module")
def tiny_checkpoint(minilm_torch_dir, tmp_path_factory) -> Path:
    """A one-layer, hidden-32 random BERT with the real vocabulary (so the token caches are shared)."""
    import jax
    import jax.numpy as jnp

    from bert_flax import BertConfig, BertModel, save_pretrained

    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    params = BertModel(config).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    return save_pretrained(tmp_path_factory.mktemp("tiny-bert"), config, params, minilm_torch_dir / "vocab.txt", True)


@pytest.fixture(scope="module")
def small_task_data(tmp_path_factory) -> Path:
    """The first 64 rows of every task file, so that a training run evaluates quickly."""
    out = tmp_path_factory.mktemp("bench-data")
    for path in (DATA_DIR).glob("*.csv"):
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        (out / path.name).write_text("".join(lines[:65]), encoding="utf-8")
    return out


def run_script(name: str, *args: str, timeout: float = 300) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / name), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("JSON: ")]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0][len("JSON: "):])


# A small, quick GEMM peak for the scripts that report shares of it.
PEAK_ARGS = ("--peak-size", "128", "--peak-repeats", "2")


def check_peaks(peaks: dict, libraries: set, dtypes: set) -> None:
    assert set(peaks["gflops"]) == libraries and peaks["statistic"] == "best"
    assert all(set(by_dtype) == dtypes for by_dtype in peaks["gflops"].values())
    assert all(g > 0 for by_dtype in peaks["gflops"].values() for g in by_dtype.values())


def test_peak():
    result = run_script("peak.py", *PEAK_ARGS)
    assert result["benchmark"] == "gemm_peak" and result["size"] == 128
    check_peaks(result, {"jax", "torch"}, {"float32", "bfloat16"})


def test_bench_gpu_tiny():
    result = run_script("bench_gpu.py", "--tiny", "--layers", "1")
    assert result["benchmark"] == "gpu_step" and result["tiny"]
    assert result["tokens_per_s"] > 0 and result["mfu"] > 0


def test_bench_padding():
    result = run_script("bench_padding.py", "--samples-per-task", "320")
    for mode in ("bi", "cross"):
        overall = result["modes"][mode]["all"]
        # Padding to a bucket never feeds fewer tokens than padding to the longest sentence.
        assert overall["bucketed_ratio"] >= overall["longest_ratio"] >= overall["longest_per_side_ratio"] >= 1.0


@pytest.mark.parametrize("malloc_flags, malloc", [((), "kept (train.run.keep_freed_memory)"),
                                                  (("--glibc-malloc",), "glibc default")])
def test_bench_train_tiny(tiny_checkpoint, malloc_flags, malloc):
    result = run_script("bench_train.py", "--init-checkpoint", str(tiny_checkpoint), "--steps", "1", *malloc_flags,
                        *PEAK_ARGS)
    assert result["malloc"] == malloc
    names = {row["name"] for row in result["rows"]}
    assert names == {"jax sum", "jax pcgrad", "torch eager sum", "torch eager pcgrad"}
    assert all(row["examples_per_s"] > 0 for row in result["rows"])
    check_peaks(result["peak"], {"jax", "torch"}, {"float32"})
    for row in result["rows"]:
        assert row["peak_gflops"] == round(result["peak"]["gflops"][row["framework"]][row["dtype"]], 4)
        # Fed lengths are never shorter than real ones.
        assert 0 < row["peak_share"] <= row["peak_share_fed"]
    check = result["notes"]["float32"]["loss_check"]
    assert set(check) == {"sst", "para", "sts"}
    assert all(c["abs_diff"] < 1e-4 for c in check.values()), check


def test_bench_eval_tiny(tiny_checkpoint):
    result = run_script("bench_eval.py", "--init-checkpoint", str(tiny_checkpoint), "--max-examples", "40",
                        "--repeats", "1", *PEAK_ARGS)
    assert set(result["tasks"]) == {"sst", "para", "sts"}
    assert all(task["examples"] == 40 for task in result["tasks"].values())
    assert result["tasks"]["para"]["agreement"] == result["tasks"]["sst"]["agreement"] == 1.0
    assert result["tasks"]["sts"]["max_abs_diff"] < 1e-4
    assert result["all"]["jax_sentences_per_s"] > 0 and result["all"]["torch_sentences_per_s"] > 0
    check_peaks(result["peak"], {"jax", "torch"}, {"float32"})
    for figures in (*result["tasks"].values(), result["all"]):
        assert figures["jax_peak_share"] > 0 and figures["torch_peak_share"] > 0


def test_bench_pipeline_tiny(tiny_checkpoint, small_task_data):
    result = run_script("bench_pipeline.py", "--init-checkpoint", str(tiny_checkpoint), "--epochs", "1",
                        "--train-steps", "1", "--data-dir", str(small_task_data))
    pipeline, training = result["pipeline"], result["training"]
    assert pipeline["steps"] > 0 and training["steps"] == 1
    assert set(pipeline["padding_ratio"]) == {"sst", "para", "sts"}
    assert all(ratio >= 1.0 for ratio in pipeline["padding_ratio"].values())
    assert result["pipeline_over_training"] == round(pipeline["examples_per_s"] / training["examples_per_s"], 1)


def test_bench_memory_tiny(tiny_checkpoint, small_task_data):
    result = run_script("bench_memory.py", "--init-checkpoint", str(tiny_checkpoint), "--tasks", "sst",
                        "--samples-per-task", "32", "--preset", "none", "--splits", "dev",
                        "--data-dir", str(small_task_data))
    assert not result["failed"]
    assert all(p["max_rss_mib"] > 0 for p in result["processes"].values())
    assert set(result["processes"]) == {"imports", "train", "evaluate"}


def test_bench_trace_tiny(tiny_checkpoint):
    result = run_script("bench_trace.py", "--init-checkpoint", str(tiny_checkpoint), "--steps", "1", "--repeats", "1",
                        "--step-repeats", "1")
    assert result["benchmark"] == "trace" and result["traces"] == 3  # one batch of each task
    assert [row["variant"] for row in result["rows"]] == ["one jitted layer", "per-layer reference"]
    assert all(row["trace_s"] > 0 and row["run_median_s"] > 0 for row in result["rows"])
    assert result["rows"][1]["vs_reference"] == result["rows"][1]["run_vs_reference"] == 1.0


def test_bench_malloc_tiny(tiny_checkpoint):
    result = run_script("bench_malloc.py", "--init-checkpoint", str(tiny_checkpoint), "--steps", "1", "--rounds", "1",
                        "--dtype", "float32")
    assert [row["setting"] for row in result["rows"]] == ["kept", "glibc default"]
    assert all(row["median_s"] > 0 and row["page_faults_median"] >= 0 for row in result["rows"])


def test_bench_profile_tiny(tiny_checkpoint):
    result = run_script("bench_profile.py", "--init-checkpoint", str(tiny_checkpoint), "--steps", "1",
                        "--dtype", "float32")
    assert result["benchmark"] == "profile" and result["wall_s"] > 0 and result["thunk_s"] > 0
    assert result["rows"][0]["kind"] == "products" and 0 < result["products_share"] <= 1
    assert result["rows"][0]["share"] == result["products_share"]
    assert sum(row["share"] for row in result["rows"]) <= 1 + 1e-9  # the top kinds: a part of the whole
    assert not any(row["kind"].startswith(("ThunkExecutor", "products.")) for row in result["rows"][1:])


def test_thunk_kinds_group_products_and_fusion_numbers():
    from bench.bench_profile import thunk_kind

    assert [thunk_kind(n) for n in ("ynn_fusion.226", "dot.3", "xnn_fusion", "add_convert_fusion.12",
                                    "wrapped_convert")] == ["products", "products", "products",
                                                            "add_convert_fusion", "wrapped_convert"]
