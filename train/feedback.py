"""Feedback on long operations: a tqdm progress bar on a terminal, or else one plain line when the operation ends.

Plain lines replace the bars with --quiet, and whenever stderr is not a terminal: a log file would otherwise fill
with the bars' cursor-movement codes. Only the main process of a multi-process run shows either.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterator

from tqdm import tqdm

from .distributed import is_main_process

__all__ = ["plain", "progress"]


def plain(quiet: bool) -> bool:
    """True where feedback is plain lines instead of progress bars: with --quiet, or stderr not a terminal."""
    return quiet or not sys.stderr.isatty()


@contextlib.contextmanager
def progress(label: str, total: int, unit: str, done: str, quiet: bool) -> Iterator[tqdm]:
    """A progress bar of `total` units named `label`, to `update` as the work advances; with plain feedback,
    no bar but the line `{label}: {done} in {seconds} s` once the work ends (not when it fails)."""
    start = time.perf_counter()
    show_bar = not plain(quiet) and is_main_process()
    with tqdm(total=total, desc=label, unit=unit, disable=not show_bar, leave=False) as bar:
        yield bar
    if plain(quiet) and is_main_process():
        print(f"{label}: {done} in {time.perf_counter() - start:.1f} s", flush=True)
