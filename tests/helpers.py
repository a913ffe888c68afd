"""Test helpers: real sentences from the task data, the PyTorch reference forward pass, and the environment of
subprocesses with several CPU devices."""

import csv
import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "data" / "cs224n"


def task_sentences(count: int, seed: int = 0) -> list[str]:
    """A seeded sample of real sentences from the SST, Quora and STS training files."""
    sentences = []
    for name, columns in (("ids-sst-train.csv", ("sentence",)), ("quora-train.csv", ("sentence1", "sentence2")),
                          ("sts-train.csv", ("sentence1", "sentence2"))):
        with open(DATA_DIR / name, encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                sentences.extend(row[c] for c in columns if row.get(c))
    rng = np.random.default_rng(seed)
    return [sentences[i] for i in rng.choice(len(sentences), count, replace=False)]


def torch_forward(torch_model, batch: dict) -> tuple[np.ndarray, np.ndarray]:
    """last_hidden_state and pooler_output of a transformers BertModel on a padded numpy batch."""
    import torch

    with torch.no_grad():
        out = torch_model(**{k: torch.from_numpy(np.asarray(v)).long() for k, v in batch.items()})
    return out.last_hidden_state.numpy(), out.pooler_output.numpy()


def devices_env(count: int) -> dict[str, str]:
    """os.environ for a subprocess that sees `count` CPU devices and imports this repository, keeping the XLA flags
    conftest.py sets."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}".strip()
    return {**os.environ, "XLA_FLAGS": flags, "PYTHONPATH": str(REPO)}


class InterruptAfter:
    """Stands in for the training loop's SIGINT flag (patched in as train.loop._InterruptFlag): raised once `steps`
    checks have been made."""

    def __init__(self, steps):
        self.remaining = steps

    @property
    def raised(self):
        self.remaining -= 1
        return self.remaining < 0

    def restore(self):
        pass


def tiny_config(tiny_encoder, small_data, **overrides):
    """A TrainConfig for quick runs on the tiny encoder and the small data copy (tests/conftest.py)."""
    from train.config import TrainConfig

    values = dict(init_checkpoint=str(tiny_encoder), data_dir=str(small_data), epochs=2, samples_per_task=24,
                  batch_size=8, eval_batch_size=32, max_length=32, num_buckets=2, lr=1e-3)
    return TrainConfig(**{**values, **overrides})


def cosent_float64(scores, labels, weights, scale: float = 20.0) -> float:
    """CoSENT in float64 loops: log(1 + sum over rows i, j of weight 1 with label_i > label_j of
    exp(scale (score_j - score_i)))."""
    terms = [scale * (scores[j] - scores[i]) for i in range(len(scores)) for j in range(len(scores))
             if weights[i] and weights[j] and labels[i] > labels[j]]
    return float(np.log1p(np.exp(np.asarray(terms, np.float64)).sum()))
