"""results/teacher_fit.py: how closely teacher files follow the gold labels, by hand, and a file that does not fit."""

import importlib.util

import numpy as np
import pytest

from data.tasks import read_rows, registry
from data.teachers import write_teacher
from tests.helpers import REPO
from tests.test_tasks import declared_sts_copy

spec = importlib.util.spec_from_file_location("teacher_fit", REPO / "results" / "teacher_fit.py")
teacher_fit = importlib.util.module_from_spec(spec)
spec.loader.exec_module(teacher_fit)


def test_fit_by_hand():
    targets = np.array([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0], [0.1, 0.3, 0.6]])
    scores = teacher_fit.fit(targets, np.array([0, 1, 1]))
    assert scores["agreement"] == pytest.approx(1 / 3)  # the tie goes to class 0, not the gold 1
    assert scores["gold_probability"] == pytest.approx((0.7 + 0.5 + 0.3) / 3)
    entropy = -np.mean([0.7 * np.log(0.7) + 0.2 * np.log(0.2) + 0.1 * np.log(0.1), 2 * 0.5 * np.log(0.5),
                        0.1 * np.log(0.1) + 0.3 * np.log(0.3) + 0.6 * np.log(0.6)])
    assert scores["entropy"] == pytest.approx(entropy)
    regression = teacher_fit.fit(np.array([1.0, 2.0, 4.0]), np.array([1.0, 3.0, 5.0]))
    assert regression["pearson"] == pytest.approx(np.corrcoef([1, 2, 4], [1, 3, 5])[0, 1])
    assert regression["mean_abs_difference"] == pytest.approx(2 / 3)


def test_files_of_gold_targets_fit_exactly_and_others_are_refused(small_data, tmp_path, capsys):
    tasks = registry((), small_data)
    sst, sts = (read_rows(tasks[t].files["train"], tasks[t], labeled=True) for t in ("sst", "sts"))
    write_teacher(tmp_path / "sst.npz", tasks["sst"], sst.ids, np.eye(5)[sst.labels.astype(int)], ["x"])
    write_teacher(tmp_path / "sts.npz", tasks["sts"], sts.ids, sts.labels, ["x"])
    argv = [str(tmp_path / "sst.npz"), str(tmp_path / "sts.npz"), "--data-dir", str(small_data)]
    assert teacher_fit.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == f"| {tmp_path / 'sst.npz'} | sst | {len(sst)} | 1.000 | 1.000 | 0.000 |"
    assert lines[3] == f"| {tmp_path / 'sts.npz'} | sts | {len(sts)} | Pearson 1.000 | mean abs difference 0.000 |  |"
    write_teacher(tmp_path / "short.npz", tasks["sst"], sst.ids[:-1], np.eye(5)[sst.labels[:-1].astype(int)], ["x"])
    assert teacher_fit.main([str(tmp_path / "short.npz"), "--data-dir", str(small_data)]) == 1
    assert f"{tmp_path / 'short.npz'}: targets of shape" in capsys.readouterr().err


def test_a_task_of_ones_own_needs_its_task_file(small_data, tmp_path, capsys):
    toml = declared_sts_copy(small_data, tmp_path / "mine")
    tasks = registry((str(toml),), small_data)
    rows = read_rows(tasks["mysts"].files["train"], tasks["mysts"], labeled=True)
    write_teacher(tmp_path / "mysts.npz", tasks["mysts"], rows.ids, rows.labels, ["x"])
    assert teacher_fit.main([str(tmp_path / "mysts.npz"), "--data-dir", str(small_data)]) == 1
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path / 'mysts.npz'}: its task 'mysts' is not built in; name the task file declaring " \
                  "it with --task-file\n"
    argv = [str(tmp_path / "mysts.npz"), "--data-dir", str(small_data), "--task-file", str(toml)]
    assert teacher_fit.main(argv) == 0
    assert capsys.readouterr().out.splitlines()[2].startswith(f"| {tmp_path / 'mysts.npz'} | mysts | {len(rows)} | "
                                                             "Pearson 1.000 |")
    assert teacher_fit.main([*argv, "--task-file", str(tmp_path / "none.toml")]) == 1
    assert str(tmp_path / "none.toml") in capsys.readouterr().err
