"""Accelerator benchmark: a BERT forward+backward step at bert-base shape, tokens/s and MFU.

    .venv/bin/python bench/bench_gpu.py [--batch-size 32] [--seq-len 128] [--steps 20] [--peak-tflops 989]
    .venv/bin/python bench/bench_gpu.py --tiny        # 2 layers, hidden 64, sequence 32: runs anywhere (CPU test)

bert_flax.BertModel with random weights (BertConfig hidden 768, 12 layers, 12 heads,
intermediate 3072; float32 parameters, --dtype bfloat16 computation by default), random
token ids with full attention, loss = mean square of the last hidden states, one jitted
step = value_and_grad + an SGD update of every parameter (buffers donated). Dropout is
off unless --dropout. After --warmup steps (compilation included, reported apart), times
--steps steps dispatched back to back and blocked at the end.

    FLOPs per step = 6 x N x B x L + 12 x layers x hidden x L^2 x B
    (N: non-embedding parameters; the attention term is Q K^T and probs V, forward and backward)
    MFU = FLOPs per second / (--peak-tflops x 1e12)

--peak-tflops is the card's dense bf16 peak: 989 for an H100 SXM (default), 756 for H100
PCIe, 989 for H200. On a CPU the MFU column means nothing; --tiny exists so a test can
check that the script runs. Prints a table and one `JSON: ` line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench import common  # noqa: E402

BERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="2 layers, hidden 64, sequence 32, batch 4, 3 steps")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--layers", type=int, help="override the number of layers")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="computation dtype")
    parser.add_argument("--dropout", action="store_true", help="dropout 0.1 as in BERT (default off)")
    parser.add_argument("--hidden-act", default="gelu", choices=("gelu", "gelu_new"),
                        help="feed-forward activation: BERT's erf GELU, or the tanh approximation")
    parser.add_argument(
        "--fused-attention", action="store_true", help="cuDNN flash attention (NVIDIA GPUs, 16-bit; not with --dropout)"
    )
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense peak of the device in the dtype")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.fused_attention and args.dropout:
        # The model would fall back to the einsum path, and the figures would be labelled fused.
        parser.error("--fused-attention runs without attention dropout only: leave out --dropout")

    import jax
    import jax.numpy as jnp

    from bert_flax import BertConfig, BertModel

    shape = dict(TINY if args.tiny else BERT_BASE)
    if args.layers:
        shape["num_hidden_layers"] = args.layers
    batch_size = args.batch_size or (4 if args.tiny else 32)
    seq_len = args.seq_len or (32 if args.tiny else 128)
    steps = args.steps or (3 if args.tiny else 20)
    rate = 0.1 if args.dropout else 0.0
    config = BertConfig(vocab_size=30522, hidden_act=args.hidden_act, hidden_dropout_prob=rate,
                        attention_probs_dropout_prob=rate, **shape)
    dtype = jnp.dtype(args.dtype)
    model = BertModel(config, dtype=dtype, fused_attention=args.fused_attention)

    key = jax.random.key(args.seed)
    ids = jax.random.randint(key, (batch_size, seq_len), 0, config.vocab_size, dtype=jnp.int32)
    mask = jnp.ones_like(ids)
    types = jnp.zeros_like(ids)
    start = time.perf_counter()
    params = jax.jit(model.init)(key, ids[:1, :8], mask[:1, :8], types[:1, :8])["params"]
    jax.block_until_ready(params)
    init_s = time.perf_counter() - start

    def loss_fn(p, rng):
        out = model.apply({"params": p}, ids, mask, types, deterministic=not args.dropout, rngs={"dropout": rng})
        return jnp.mean(jnp.square(out["last_hidden_state"].astype(jnp.float32)))

    def step(p, rng):
        loss, grads = jax.value_and_grad(loss_fn)(p, rng)
        return jax.tree_util.tree_map(lambda w, g: w - 1e-4 * g, p, grads), loss

    step = jax.jit(step, donate_argnums=(0,))
    start = time.perf_counter()
    for i in range(args.warmup):
        params, loss = step(params, jax.random.fold_in(key, i))
    jax.block_until_ready(params)
    warmup_s = time.perf_counter() - start

    start = time.perf_counter()
    for i in range(steps):
        params, loss = step(params, jax.random.fold_in(key, args.warmup + i))
    jax.block_until_ready((params, loss))
    seconds = time.perf_counter() - start

    tokens = batch_size * seq_len * steps
    flops = steps * common.encoder_flops(config, np.full(batch_size, seq_len), train=True)
    achieved = flops / seconds
    device = jax.devices()[0]
    result = {
        "benchmark": "gpu_step",
        "device": f"{device.platform} {device.device_kind}",
        "devices": jax.device_count(),
        "tiny": args.tiny,
        "config": shape,
        "dtype": args.dtype,
        "dropout": args.dropout,
        "hidden_act": args.hidden_act,
        "fused_attention": args.fused_attention,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "batch_size": batch_size,
        "seq_len": seq_len,
        "steps": steps,
        "nonembedding_params": common.nonembedding_params(config),
        "init_s": round(init_s, 3),
        "warmup_s": round(warmup_s, 3),
        "seconds": round(seconds, 4),
        "step_ms": 1000 * seconds / steps,
        "tokens_per_s": tokens / seconds,
        "flops_per_step": flops / steps,
        "tflops": achieved / 1e12,
        "peak_tflops": args.peak_tflops,
        "mfu": achieved / (args.peak_tflops * 1e12),
        "loss": float(loss),
        "load_average": common.load_average(),
        "jax": jax.__version__,
    }
    print(f"{result['device']} x{result['devices']}, jax {jax.__version__}, {args.dtype} compute, "
          f"{'fused' if args.fused_attention else 'einsum'} attention, {args.hidden_act}, "
          f"{shape['num_hidden_layers']} layers hidden {shape['hidden_size']}, batch {batch_size} x {seq_len} tokens, "
          f"{steps} steps after {args.warmup} warm-up steps ({warmup_s:.1f} s incl. compilation)")
    common.print_table([result], [
        ("step_ms", "step ms", ".2f"), ("tokens_per_s", "tokens/s", ",.0f"), ("tflops", "TFLOP/s", ".3f"),
        ("peak_tflops", "peak TFLOP/s", ".0f"), ("mfu", "MFU", ".2%"),
    ])
    common.emit_json(result)
    return result


if __name__ == "__main__":
    main()
