"""Ctrl-C in a training run: during the steps and evaluations a flag that stops the run at its next checkpoint
(a second Ctrl-C stops it at once); before and after them, the end of the process."""

from __future__ import annotations

import os
import signal
from pathlib import Path

__all__ = ["InterruptFlag", "exit_interrupted"]


def exit_interrupted(run_dir: Path, *_) -> None:
    """SIGINT outside the training steps and evaluations (set-up, final predictions), or a second one inside them:
    every file is written atomically or redone on resume, so the process ends at once, as after a kill, and the
    run resumes from its last checkpoint. (Python's KeyboardInterrupt would not do: raised inside a
    garbage-collection callback, it is printed and lost.)"""
    hint = f"continue with --resume {run_dir}" if (run_dir / "config.json").exists() else "nothing was saved"
    os.write(2, f"interrupted; {hint}\n".encode())
    os._exit(130)


class InterruptFlag:
    """Turns SIGINT into a flag checked between steps, so a checkpoint is taken at a clean position.

    The first Ctrl-C says what the run finishes before it stops: `finishing`, which the loop sets during an
    evaluation (which can take minutes). A second one goes to the handler that was in place before, train()'s
    `exit_interrupted`, which ends the process now."""

    STEP = "the step in progress"

    def __init__(self):
        self.raised = False
        self.finishing = self.STEP
        self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.raised:
            self._previous(signum, frame)
            return
        self.raised = True
        # os.write, not print: the signal may arrive while the main thread is inside a print to the same stream.
        os.write(2, f"finishing {self.finishing}; Ctrl-C again stops now (the run resumes from its last "
                    "checkpoint)\n".encode())

    def restore(self):
        signal.signal(signal.SIGINT, self._previous)
