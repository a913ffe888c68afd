"""results/sst_errors.py: the error profile of SST dev predictions, the majority vote, and refusals."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO

spec = importlib.util.spec_from_file_location("sst_errors", REPO / "results" / "sst_errors.py")
sst_errors = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sst_errors)


def test_error_profile_by_hand():
    labels = np.array([0, 1, 2, 3, 4, 2])
    preds = np.array([0, 2, 2, 1, 4, 3])
    profile = sst_errors.error_profile(preds, labels)
    assert profile["accuracy"] == pytest.approx(3 / 6)
    assert profile["within_one"] == pytest.approx(5 / 6)  # only 3 -> 1 is two classes off
    assert profile["recall"] == pytest.approx([1.0, 0.0, 0.5, 0.0, 1.0])
    assert profile["predicted"] == pytest.approx([1 / 6, 1 / 6, 2 / 6, 1 / 6, 1 / 6])
    low, high = profile["interval"]
    assert 0.0 <= low < 0.5 < high <= 1.0


def write_row(folder: Path, lines: list[str]) -> Path:
    (folder / "predictions").mkdir(parents=True)
    (folder / "predictions" / "sst-dev-output.csv").write_text("id \t Predicted_Sentiment \n" + "".join(lines))
    return folder


def test_command_line_reads_rows_and_refuses_a_missing_id(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "ids-sst-dev.csv").write_text("\tid\tsentence\tsentiment\n0\taa\tgood .\t3\n1\tbb\tbad .\t1\n")
    first = write_row(tmp_path / "first", ["aa , 3 \n", "bb , 2 \n"])
    second = write_row(tmp_path / "second", ["bb , 1 \n", "aa , 3 \n"])  # any order of ids
    assert sst_errors.main([str(first), str(second), "--data-dir", str(data)]) == 0
    table = capsys.readouterr().out
    assert "| first | 0.500 |" in table and "| second | 1.000 |" in table
    assert "| - 0.00 - 1.00 - |" in table  # first's recall: classes 0, 2 and 4 have no sentence
    assert "| majority vote of 2 | 1.000 |" in table  # sentence bb: votes 2 and 1 tie, to the lower class 1

    short = write_row(tmp_path / "short", ["aa , 3 \n"])
    assert sst_errors.main([str(short), "--data-dir", str(data)]) == 1
    assert "no prediction for 1 dev id(s), e.g. bb" in capsys.readouterr().err
