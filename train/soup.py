"""Model soups: `python -m train.soup --run-dir OUT RUN_DIR RUN_DIR [...]`.

A uniform soup (Wortsman et al. 2022, "Model soups") averages, weight by weight, the best parameters of runs
fine-tuned from the same pretrained encoder: one model of the same size, predicting as fast as each run. Where such
runs stay in one basin of the loss, their mean can score above each of them (the paper's finding); for this
project's best setup after 5 epochs it scored below (results/README.md). The runs must describe one model: the
settings in SOUP_FIELDS (tasks, heads, poolings, encodings, the pretrained encoder, the data) must agree; seeds and
training settings may differ.

The soup is a run directory like a trained one, so train.evaluate and train.predict take it:
    config.json         the first run's settings
    metrics.jsonl       one line: the soup's dev metrics, and each run's directory and best dev metrics
    checkpoints/best    the averaged parameters; best_encoder/ the averaged encoder
    predictions/        dev and test predictions of the soup
    curves.png          each run's dev metrics per epoch, with the soup's as dashed lines
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import jax
import numpy as np

from data import input_pipeline
from data.atomic import atomic_write

from .config import TrainConfig
from .plots import plot_soup
from .run import RunError, finish_run, load_run, read_metrics, save_best

__all__ = ["SOUP_FIELDS", "UNFINISHED", "average_params", "make_soup"]

# The settings that define the parameters and what the model predicts from them; the rest only shape training.
SOUP_FIELDS = ("tasks", "task_files", "pooling", "pair_encoding", "cos_feature", "swap_pairs", "regression_head",
               "regression_target", "shared_layer", "max_length", "init_checkpoint", "data_dir")
# Lies in a soup's directory until the soup is written whole: a soup stopped part-way is made again from the start.
UNFINISHED = "soup-unfinished"


def average_params(trees: list) -> dict:
    """The mean of parameter trees of one structure, leaf by leaf, summed in float64 in the order given."""
    def mean(*leaves):
        return (np.sum([np.asarray(leaf, np.float64) for leaf in leaves], axis=0) / len(leaves)).astype(leaves[0].dtype)

    return jax.tree_util.tree_map(mean, *[jax.device_get(tree) for tree in trees])


def _check_one_model(run_dirs: list[Path], configs: list[TrainConfig]) -> None:
    differing = [name for name in SOUP_FIELDS if len({getattr(c, name) for c in configs}) > 1]
    if differing:
        values = "; ".join(f"{name}: " + ", ".join(f"{d} has {getattr(c, name)!r}" for d, c in zip(run_dirs, configs))
                           for name in differing)
        raise RunError(f"the runs are not one model, their settings differ ({values})")


def _best_dev(records: list[dict], select_by: str) -> dict:
    return max(records, key=lambda r: r["dev"].get(select_by, -np.inf))["dev"]


def make_soup(run_dirs: list[Path], run_dir: Path, quiet: bool = False) -> dict:
    """Averages the best parameters of finished runs of one model into a new run directory (see the module
    docstring) and returns the soup's dev metrics; a progress bar per task and split predicted, or with `quiet` a
    line for each."""
    if len(run_dirs) < 2:
        raise RunError("a soup needs two runs or more")
    if (run_dir / "config.json").exists() and not (run_dir / UNFINISHED).exists():
        raise RunError(f"{run_dir} holds a run already: choose another --run-dir")
    loaded = [load_run(d, quiet) for d in run_dirs]  # a RunError names a directory with no config or no best checkpoint
    _check_one_model(run_dirs, [run.config for run, _ in loaded])
    run = loaded[0][0]
    params = input_pipeline.place(average_params([p for _, p in loaded]), run.replicated)
    if (run_dir / UNFINISHED).exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / UNFINISHED).touch()
    run.config.to_json(run_dir / "config.json")
    dev = run.evaluate(params, "dev", run_dir)
    ingredients = [(d, read_metrics(d)) for d in run_dirs]  # a run given twice counts twice
    record = {"epoch": 0, "soup": [{"run_dir": str(d), "dev": _best_dev(r, run.config.select_by)}
                         for d, r in ingredients], "dev": dev}
    with atomic_write(run_dir / "metrics.jsonl") as f:
        f.write(json.dumps(record) + "\n")
    save_best(run_dir, params, dev)
    finish_run(run, run_dir, plot=lambda out: plot_soup(out, ingredients, dev))
    (run_dir / UNFINISHED).unlink()
    return dev


def main(argv=None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m train.soup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="the soup's run directory (new)")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished runs of one model")
    parser.add_argument("--quiet", action="store_true",
                        help="plain log lines instead of progress bars (as whenever stderr is not a terminal)")
    args = parser.parse_args(argv)
    try:
        dev = make_soup([Path(d) for d in args.runs], Path(args.run_dir), args.quiet)
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted: {args.run_dir} is unfinished; the same command makes it again", file=sys.stderr)
        return 130
    print("soup dev: " + " ".join(f"{k}={v:.4f}" for k, v in dev.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
