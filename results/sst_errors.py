"""Where sentiment goes wrong: `python results/sst_errors.py ROW_DIR [ROW_DIR ...]`.

Reads each row's predictions/sst-dev-output.csv (a row's folder in results/<budget>/, or a run directory) and the
shipped SST dev labels, and prints per row: accuracy with its bootstrap 95% interval, the share of predictions
within one class of the gold label, recall per class and how often each class is predicted. With two rows or more
it adds their majority vote (ties to the lower class): an ensemble of the rows' predictions, as a bound on what
averaging runs can give (it is several models, not one).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data.tasks import DataError, read_rows  # noqa: E402
from results.ensemble import majority_vote, row_predictions  # noqa: E402

CLASSES = 5
BOOTSTRAP_SAMPLES = 10_000


def error_profile(preds: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict:
    """Accuracy, its bootstrap 95% interval (resampling sentences), the share within one class, recall per class
    (None for a class with no sentence) and the share of predictions per class."""
    correct = preds == labels
    rng = np.random.default_rng(seed)
    resampled = correct[rng.integers(0, len(correct), (BOOTSTRAP_SAMPLES, len(correct)))].mean(axis=1)
    return {
        "accuracy": correct.mean(),
        "interval": tuple(np.percentile(resampled, [2.5, 97.5])),
        "within_one": (np.abs(preds - labels) <= 1).mean(),
        "recall": [correct[labels == c].mean() if (labels == c).any() else None for c in range(CLASSES)],
        "predicted": np.bincount(preds, minlength=CLASSES) / len(preds),
    }


def main(argv=None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", nargs="+", type=Path, metavar="ROW_DIR")
    parser.add_argument("--data-dir", type=Path, default=REPO / "data" / "cs224n")
    args = parser.parse_args(argv)
    try:
        dev = read_rows(args.data_dir / "ids-sst-dev.csv", "sst", labeled=True)
        preds = {row.name: row_predictions(row, "sst", dev.ids).astype(int) for row in args.rows}
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    labels = dev.labels.astype(int)
    if len(preds) > 1:
        preds[f"majority vote of {len(preds)}"] = majority_vote(np.stack(list(preds.values())), CLASSES)
    print(f"SST dev, {len(labels)} sentences; gold share per class: "
          + " ".join(f"{share:.3f}" for share in np.bincount(labels, minlength=CLASSES) / len(labels)))
    print("| row | accuracy | 95% interval | within one class | recall per class 0-4 | predicted share per class 0-4 |")
    print("|---|---|---|---|---|---|")
    for name, row_preds in preds.items():
        p = error_profile(row_preds, labels)
        recall = " ".join("-" if r is None else f"{r:.2f}" for r in p["recall"])
        predicted = " ".join(f"{share:.2f}" for share in p["predicted"])
        print(f"| {name} | {p['accuracy']:.3f} | {p['interval'][0]:.3f}-{p['interval'][1]:.3f} | "
              f"{p['within_one']:.3f} | {recall} | {predicted} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
