"""Each task's encoder gradient norm on the first batches of a run, at its starting parameters: how strongly each
task pulls on the shared encoder, and so what a loss weight or an added loss term does to that balance.

    python results/grad_norms.py --batches 6 -- --preset cosfeat-pcgrad-mean --pair-encoding para=cross \\
        --cos-feature "" --regression-target scaled --lr 5e-5 --rdrop 1 --ranking-loss 0.02

The flags after `--` are train.main's; the batches are those of the run's first epoch, the dropout seeded per batch.
Prints one line per task: the norms batch by batch, and their range.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.cli import parse_args  # noqa: E402
from train.run import Run, ensure_init_checkpoint  # noqa: E402
from train.step import make_grad_fns  # noqa: E402


def encoder_norm(grads) -> float:
    """Global L2 norm of the encoder ("bert") part of a gradient pytree."""
    return float(jnp.sqrt(sum(jnp.vdot(g, g) for g in jax.tree_util.tree_leaves(grads["bert"]))))


def grad_norms(train_argv: list[str], batches: int) -> dict[str, list[float]]:
    """{task: encoder gradient norm of each of the first `batches` batches} of the run train_argv describes."""
    config, _ = parse_args(train_argv)
    run = Run(config, ensure_init_checkpoint(config.init_checkpoint), quiet=True)
    params, grad_fns = run.init_params(), make_grad_fns(run.model, config)
    norms = {task: [] for task in config.tasks}
    step = jnp.zeros((), jnp.int32)
    for i, (task_batches, _) in zip(range(batches), run.train_steps(0)):
        for task, grad_fn in grad_fns.items():
            _, grads = grad_fn(params, task_batches[task], jax.random.PRNGKey(i), step)
            norms[task].append(encoder_norm(grads))
    return norms


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=6, help="first batches of the run to measure")
    parser.add_argument("train_argv", nargs="*", help="train.main flags (after --)")
    args = parser.parse_args(argv)
    for task, values in grad_norms(args.train_argv, args.batches).items():
        print(f"{task}: {' '.join(f'{v:.3f}' for v in values)} (range {min(values):.3f}-{max(values):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
