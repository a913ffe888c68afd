"""train/tensorboard.py: scalars read back as written, a resumed run logs every step once, a disabled log writes
nothing, and a file cut short by a kill or corrupted is handled."""

import math

import numpy as np
import pytest

from train.tensorboard import EventLog, _read_events, read_scalars

TAGS = ("loss/sst", "loss/sts", "lr")


def values(step: int, run: int) -> dict[str, float]:
    """Scalars of `step` that differ between tags and between the runs that log the same step."""
    return {tag: 10.0 * run + step + 0.1 * i + 1e-7 for i, tag in enumerate(TAGS)}


def log_run(log_dir, start_step: int, stop_step: int, run: int) -> None:
    with EventLog(log_dir, start_step=start_step) as log:
        for step in range(start_step, stop_step):
            log.scalars(step, values(step, run))


def expected(runs: list[tuple[int, int]]) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] after `runs` (start_step, stop_step) in order, each dropping the steps >= its start
    that earlier runs logged; values rounded to float32."""
    logged_by = {}
    for run, (start, stop) in enumerate(runs):
        logged_by = {step: r for step, r in logged_by.items() if step < start} | dict.fromkeys(range(start, stop), run)
    return {tag: [(step, float(np.float32(values(step, run)[tag]))) for step, run in sorted(logged_by.items())]
            for tag in TAGS}


def test_scalars_read_back_as_written(tmp_path):
    log_run(tmp_path, 0, 5, run=0)
    log_run(tmp_path, 5, 9, run=1)
    assert read_scalars(tmp_path) == expected([(0, 5), (5, 9)])
    assert len(list(tmp_path.glob("*tfevents*"))) == 2


@pytest.mark.parametrize("runs", [
    [(0, 10), (4, 12)],               # killed after step 9, resumed from the checkpoint of step 4
    [(0, 10), (0, 6)],                # restarted from scratch
    [(0, 10), (10, 13)],              # nothing to drop
    [(0, 10), (7, 11), (3, 14)],      # resumed twice, the second time before the first resume
])
def test_resume_logs_every_step_once(tmp_path, runs):
    for run, (start, stop) in enumerate(runs):
        log_run(tmp_path, start, stop, run)
    assert read_scalars(tmp_path) == expected(runs)
    # TensorBoard reads the file version from the first event; without it, steps going back discard data.
    assert all(next(_read_events(path)).file_version == "brain.Event:2" for path in tmp_path.glob("*tfevents*"))


def test_non_finite_values_are_kept(tmp_path):
    with EventLog(tmp_path) as log:
        log.scalars(3, {"loss": math.nan, "grad_norm": math.inf})
    scalars = read_scalars(tmp_path)
    assert scalars["grad_norm"] == [(3, math.inf)]
    assert scalars["loss"][0][0] == 3 and math.isnan(scalars["loss"][0][1])


def test_disabled_writes_nothing(tmp_path):
    with EventLog(tmp_path / "runs", start_step=5, enabled=False) as log:
        log.scalars(5, {"lr": 1e-5})
        log.flush()
    assert not (tmp_path / "runs").exists()


def test_record_cut_short_ends_the_file(tmp_path):
    log_run(tmp_path, 0, 6, run=0)
    (path,) = tmp_path.glob("*tfevents*")
    path.write_bytes(path.read_bytes()[:-3])
    assert read_scalars(tmp_path) == expected([(0, 5)])
    log_run(tmp_path, 3, 8, run=1)
    assert read_scalars(tmp_path) == expected([(0, 3), (3, 8)])


def test_corrupt_record_raises(tmp_path):
    log_run(tmp_path, 0, 3, run=0)
    (path,) = tmp_path.glob("*tfevents*")
    data = bytearray(path.read_bytes())
    data[-6] ^= 0xFF  # inside the last event
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="CRC"):
        read_scalars(tmp_path)
