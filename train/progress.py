"""Where a training run stands between two steps: the `Progress` record kept in its latest checkpoint."""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Progress"]


@dataclasses.dataclass
class Progress:
    """Where a run stands between two steps, and the running sums of its epoch (kept in the checkpoint, so a
    resumed epoch reports what an uninterrupted one would). `window` sums each task's losses since the last
    TensorBoard point. `evaluations` counts the metrics.jsonl lines the checkpoint covers; `since_best`, the
    evaluations since the best one (--early-stopping-patience), which set `stopped_early` when there are
    enough."""

    epoch: int = 0
    next_step: int = 0  # within the epoch
    global_step: int = 0
    best_score: float | None = None
    best_epoch: int | None = None
    best_step: int | None = None  # the global step of the best evaluation
    evaluations: int = 0
    since_best: int = 0
    stopped_early: bool = False
    loss: dict = dataclasses.field(default_factory=dict)
    loss_steps: dict = dataclasses.field(default_factory=dict)
    window: dict = dataclasses.field(default_factory=dict)
    examples: int = 0
    steps: int = 0
    conflicts: float = 0.0
    cosine: list = dataclasses.field(default_factory=list)

    @classmethod
    def restored(cls, meta: dict) -> "Progress":
        """The Progress saved as a checkpoint's metadata. A checkpoint written before evaluations within epochs
        has no `evaluations`: its run evaluated once per finished epoch."""
        return cls(**{"evaluations": meta["epoch"], **meta})

    def start_epoch(self, tasks) -> None:
        """Zeroes the epoch's sums (at an epoch's start, not when resuming inside it)."""
        self.loss, self.loss_steps = dict.fromkeys(tasks, 0.0), dict.fromkeys(tasks, 0)
        self.window = dict.fromkeys(tasks, 0.0)
        self.examples = self.steps = 0
        self.conflicts, self.cosine = 0.0, np.zeros((len(tasks), len(tasks))).tolist()

    def mean_loss(self) -> dict[str, float]:
        return {t: total / max(self.loss_steps[t], 1) for t, total in self.loss.items()}

    def epoch_stats(self, tasks, pcgrad: bool, elapsed: float, ran: int) -> dict:
        """A finished epoch's metrics.jsonl fields: mean losses, counts, speed over the `ran` steps this process
        took in `elapsed` seconds, and with `pcgrad` the conflict rate and mean cosine of each pair of tasks."""
        stats = {
            "loss": self.mean_loss(),
            "steps": self.steps,
            "examples": self.examples,
            "step_time_s": elapsed / ran,
            "examples_per_s": ran * self.examples / self.steps / elapsed,
        }
        if pcgrad:
            pairs = len(tasks) * (len(tasks) - 1) / 2
            stats["pcgrad_conflict_rate"] = self.conflicts / self.steps / max(pairs, 1)
            mean_cosine = np.asarray(self.cosine) / self.steps
            stats["pcgrad_cosine"] = {
                f"{a}-{b}": float(mean_cosine[i, j]) for i, a in enumerate(tasks) for j, b in enumerate(tasks) if i < j
            }
        return stats
