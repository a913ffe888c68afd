"""One way to write a file so that a kill or a full disk never leaves it half-written."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

__all__ = ["atomic_write"]


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_kwargs):
    """Opens a temporary file beside `path` (same folder, so the final rename is atomic) and moves it onto
    `path` when the block ends without error: `path` then holds its old content or the new one, never a part.
    On an error the temporary file is removed and the error goes on."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
