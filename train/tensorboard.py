"""Training scalars as TensorBoard event files, written without TensorFlow.

tensorboardX supplies the Event protocol buffers and the TFRecord writer. Its own SummaryWriter is not used: it
writes one record per tag from a background thread and cannot drop the steps that a resumed run repeats. An
event file is a TFRecord file: each record is a little-endian u64 length, the masked CRC-32C of those 8 bytes,
the serialized Event, and the masked CRC-32C of the Event.
"""

import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

from tensorboardX.proto.event_pb2 import Event
from tensorboardX.proto.summary_pb2 import Summary
from tensorboardX.record_writer import RecordWriter, masked_crc32c

# Not matching "*tfevents*", so TensorBoard never reads a rewrite left half-done by a kill.
_REWRITE_TMP = ".rewrite.tmp"


class EventLog:
    """Scalars of a run as TensorBoard event files in `log_dir` (view with `tensorboard --logdir runs/`).

    Opened with `start_step=S`, it first removes the scalars of steps >= S from the event files already in
    `log_dir`: a run resumed from the checkpoint of step S repeats those steps. Each opening writes a new file.
    flush() makes the events written so far visible and durable; calling it at each checkpoint keeps every step
    before the checkpoint for a resume. With `enabled=False`, and after close(), every method does nothing.
    """

    def __init__(self, log_dir: Path, start_step: int = 0, enabled: bool = True):
        self._writer = None
        if not enabled:
            return
        log_dir.mkdir(parents=True, exist_ok=True)
        for path in _event_files(log_dir):
            _drop_steps_from(path, start_step)
        # Nanoseconds keep the names of successive files unique and sorted by creation time.
        self._writer = RecordWriter(str(log_dir / f"events.out.tfevents.{time.time_ns()}.{socket.gethostname()}"))
        self._writer.write(Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Writes tag -> value at `step` as one event; values are stored as float32, nan and inf included."""
        if self._writer is not None:
            self._writer.write(_scalar_event(step, values, time.time()).SerializeToString())

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "EventLog":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _scalar_event(step: int, values: dict[str, float], wall_time: float) -> Event:
    """The Event of the scalars `values` (tag -> value) at `step`."""
    return Event(wall_time=wall_time, step=step,
                 summary=Summary(value=[Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items()]))


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value), ...] of the event files in `log_dir`, in the order of the files and of their events."""
    scalars = {}
    for path in _event_files(log_dir):
        for event in _read_events(path):
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def _read_events(path: Path) -> Iterator[Event]:
    """The events of the event file `path`. A record cut short, as by a writer killed mid-write, ends the file;
    a checksum mismatch raises ValueError."""
    with open(path, "rb") as f:
        while len(header := f.read(12)) == 12:
            (length,), (length_crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
            _check_crc(header[:8], length_crc, path)
            body = f.read(length + 4)
            if len(body) < length + 4:
                return
            _check_crc(body[:length], struct.unpack("<I", body[length:])[0], path)
            yield Event.FromString(body[:length])


def _check_crc(data: bytes, expected: int, path: Path) -> None:
    if masked_crc32c(data) != expected:
        raise ValueError(f"{path}: corrupt record (CRC mismatch)")


def _event_files(log_dir: Path) -> list[Path]:
    """The event files of `log_dir`, oldest first."""
    return sorted(log_dir.glob("*tfevents*"))


def _drop_steps_from(path: Path, start_step: int) -> None:
    """Rewrites the event file `path` without its scalar events of steps >= start_step. The new content is written
    to a temporary file and moved over `path`, so a kill leaves either the old or the new file whole."""
    events = list(_read_events(path))
    kept = [e for e in events if not e.HasField("summary") or e.step < start_step]
    if len(kept) == len(events):
        return
    tmp = path.with_name(_REWRITE_TMP)
    writer = RecordWriter(str(tmp))
    for event in kept:
        writer.write(event.SerializeToString())
    writer.flush()
    writer.close()
    os.replace(tmp, path)
