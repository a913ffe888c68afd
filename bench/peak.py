"""The machine's own GEMM peak, measured in the running process: GFLOP/s of a square matrix product
(2 size^3 FLOPs) per library (JAX, PyTorch) and dtype (float32; bfloat16 inputs with float32
accumulation: JAX's `preferred_element_type=float32`, PyTorch's bf16 matmul, which accumulates in
float32 inside its kernels).

    .venv/bin/python bench/peak.py [--peak-size 2048] [--peak-repeats 10] [--threads 0]

A speed ratio to PyTorch depends on the CPU it was measured on; a share of the GEMM peak of the
same library and dtype, on the same cores, with the same threads and under the same load, says how
close a step comes to the hardware on any machine. The benchmarks call `gemm_peaks` before their
timed runs. PyTorch uses the threads set at the call (the benchmarks set them with
common.start_comparison); JAX uses XLA's CPU thread pool, sized once per process to its cores, the
pool the benchmarked JAX code runs on.

Each figure is the best of `repeats` timed products after two untimed ones (compilation, kernel
choice, allocation). The best rather than the median: a peak is a ceiling, and other processes on
the cores only ever slow a product down, so the fastest run is the closest estimate of what the
hardware gives. Shares of it are therefore conservative on a loaded machine.
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

DTYPES = ("float32", "bfloat16")
WARMUP = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The peak measurement's options, shared by the benchmarks that report shares of it."""
    parser.add_argument("--peak-size", type=int, default=2048, help="side of the square GEMM that measures the peak")
    parser.add_argument("--peak-repeats", type=int, default=10,
                        help="timed GEMMs per library and dtype (the fastest counts)")


def _operands(size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return tuple(rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))


def _best_gflops(product, size: int, repeats: int) -> float:
    """GFLOP/s of the fastest of `repeats` timed calls of `product` (which must wait for its result)."""
    for _ in range(WARMUP):
        product()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        product()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9


def jax_gemm_gflops(dtype: str, size: int = 2048, repeats: int = 10) -> float:
    """JAX's GEMM peak for `dtype` inputs, accumulated and returned in float32."""
    import jax
    import jax.numpy as jnp

    a, b = (jnp.asarray(x, dtype) for x in _operands(size))
    matmul = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    return _best_gflops(lambda: matmul(a, b).block_until_ready(), size, repeats)


def torch_gemm_gflops(dtype: str, size: int = 2048, repeats: int = 10) -> float:
    """PyTorch's GEMM peak for `dtype` tensors (as autocast runs a bfloat16 matmul), on its current threads."""
    import torch

    a, b = (torch.from_numpy(x).to(getattr(torch, dtype)) for x in _operands(size))
    return _best_gflops(lambda: torch.matmul(a, b), size, repeats)


GEMM_GFLOPS = {"jax": jax_gemm_gflops, "torch": torch_gemm_gflops}


def gemm_peaks(libraries=("jax", "torch"), dtypes=DTYPES, size: int = 2048, repeats: int = 10) -> dict:
    """{"size", "repeats", "statistic", "torch_threads", "gflops": {library: {dtype: GFLOP/s}}}."""
    import torch

    return {
        "size": size,
        "repeats": repeats,
        "statistic": "best",
        "torch_threads": torch.get_num_threads(),
        "gflops": {lib: {dtype: GEMM_GFLOPS[lib](dtype, size, repeats) for dtype in dtypes} for lib in libraries},
    }


def describe(peaks: dict) -> str:
    """One line of the peaks, for the benchmarks' printed reports."""
    figures = ", ".join(f"{lib} {dtype} {gflops:.1f}" for lib, by_dtype in peaks["gflops"].items()
                        for dtype, gflops in by_dtype.items())
    return (f"GEMM peak ({peaks['size']}^3, best of {peaks['repeats']}, torch threads {peaks['torch_threads']}, "
            f"XLA's pool on {common.num_cores()} cores): {figures} GFLOP/s")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: the cores XLA uses)")
    args = parser.parse_args(argv)

    load_before = common.start_comparison(args.threads, compile_cache=False)
    peaks = gemm_peaks(size=args.peak_size, repeats=args.peak_repeats)
    info = common.report_machine(load_before)
    print(describe(peaks))
    result = {"benchmark": "gemm_peak", "machine": info, **peaks}
    common.emit_json(result)
    return result


if __name__ == "__main__":
    main()
