"""`python -m train.evaluate --checkpoint RUN_DIR`: re-scores a run's best checkpoint and rewrites its
predictions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .run import RunError, load_run

__all__ = ["evaluate_run", "main"]


def evaluate_run(run_dir: Path, splits: tuple[str, ...] = ("dev", "test"), quiet: bool = False) -> dict:
    """Scores a run's best checkpoint on `splits` (metrics where labels exist) and rewrites its prediction
    files; a progress bar per task and split, or with `quiet` a line for each."""
    run, params = load_run(run_dir, quiet)
    metrics = {}
    for split in splits:
        scores = run.evaluate(params, split, run_dir)
        metrics.update({f"{split}_{k}": v for k, v in scores.items()})
    return metrics


def main(argv=None) -> int:
    """Re-scores a run's best checkpoint and rewrites its predictions."""
    parser = argparse.ArgumentParser(prog="python -m train.evaluate", description=main.__doc__)
    parser.add_argument("--checkpoint", required=True, metavar="RUN_DIR", help="a training run directory")
    parser.add_argument("--splits", default="dev,test", help="comma-separated splits to predict (default: dev,test)")
    parser.add_argument("--quiet", action="store_true",
                        help="plain log lines instead of progress bars (as whenever stderr is not a terminal)")
    args = parser.parse_args(argv)
    try:
        metrics = evaluate_run(Path(args.checkpoint), tuple(args.splits.split(",")), args.quiet)
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(" ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
