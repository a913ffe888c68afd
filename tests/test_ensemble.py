"""results/ensemble.py: the rows' scores, their vote and mean against statements by hand, and refusals."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import pearsonr

from data.tasks import DataError
from tests.helpers import REPO

spec = importlib.util.spec_from_file_location("ensemble", REPO / "results" / "ensemble.py")
ensemble = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ensemble)

SST_DEV = "\tid\tsentence\tsentiment\n0\taa\tgood .\t3\n1\tbb\tbad .\t1\n2\tcc\tfine .\t2\n"
STS_DEV = "\tid\tsentence1\tsentence2\tsimilarity\n" + "".join(
    f"{i}\ts{i}\ta {i} .\tb {i} .\t{label}\n" for i, label in enumerate([0.0, 1.5, 3.0, 4.5]))


def test_majority_vote_ties_to_the_lower_class():
    preds = np.array([[0, 4, 1], [1, 4, 3], [1, 2, 3], [0, 2, 2]])
    assert ensemble.majority_vote(preds, 5).tolist() == [0, 2, 3]


def write_row(folder: Path, **files: list[str]) -> Path:
    (folder / "predictions").mkdir(parents=True)
    for task, lines in files.items():
        (folder / "predictions" / f"{task}-dev-output.csv").write_text("id \t Predicted \n" + "".join(lines))
    return folder


def sts_lines(values: list[float]) -> list[str]:
    return [f"s{i} , {v:.4f} \n" for i, v in enumerate(values)]


@pytest.fixture
def data(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "ids-sst-dev.csv").write_text(SST_DEV)
    (folder / "sts-dev.csv").write_text(STS_DEV)
    return folder


def test_rows_their_mean_and_their_combination(tmp_path, data, capsys):
    sts_a, sts_b, sts_c = [0.5, 1.0, 3.5, 4.0], [0.0, 2.5, 2.0, 5.0], [1.0, 1.0, 4.0, 3.0]
    rows = [write_row(tmp_path / "a", sst=["aa , 3 \n", "bb , 2 \n", "cc , 2 \n"], sts=sts_lines(sts_a)),
            write_row(tmp_path / "b", sst=["cc , 0 \n", "bb , 1 \n", "aa , 3 \n"],  # any order of ids
                      sts=sts_lines(sts_b)),
            write_row(tmp_path / "c", sst=["aa , 4 \n", "bb , 0 \n", "cc , 0 \n"], sts=sts_lines(sts_c), para=[])]
    table = ensemble.scores(rows, ensemble.registry(data_dir=str(data)))
    labels = [0.0, 1.5, 3.0, 4.5]
    expected_sts = [pearsonr(v, labels).statistic for v in (sts_a, sts_b, sts_c)]
    assert [table[r]["sst"] for r in "abc"] == pytest.approx([2 / 3, 2 / 3, 0.0])
    assert [table[r]["sts"] for r in "abc"] == pytest.approx(expected_sts)
    assert list(table["a"]) == ["sst", "sts", "overall"]  # para is not in every row
    assert table["a"]["overall"] == pytest.approx((2 / 3 + (expected_sts[0] + 1) / 2) / 2)
    mean = table["mean of 3 rows' scores"]
    assert mean["sst"] == pytest.approx(4 / 9) and mean["sts"] == pytest.approx(np.mean(expected_sts))
    assert mean["overall"] == pytest.approx(np.mean([table[r]["overall"] for r in "abc"]))
    combined = table["3 rows combined"]
    assert combined["sst"] == pytest.approx(1 / 3)  # votes: aa 3, bb 0 (a three-way tie), cc 0
    combined_sts = pearsonr(np.mean([sts_a, sts_b, sts_c], axis=0), labels).statistic
    assert combined["sts"] == pytest.approx(combined_sts)
    assert combined["overall"] == pytest.approx((1 / 3 + (combined_sts + 1) / 2) / 2)

    twin = write_row(tmp_path / "other" / "a", sst=["aa , 3 \n", "bb , 1 \n", "cc , 2 \n"])
    assert ensemble.scores([rows[0], twin], ensemble.registry(data_dir=str(data)))[str(twin)]["sst"] == 1.0

    assert ensemble.main([*map(str, rows), "--data-dir", str(data)]) == 0
    printed = capsys.readouterr().out
    assert "| row | sst | sts | overall |" in printed and f"| 3 rows combined | {1 / 3:.4f} |" in printed


def test_refusals_name_the_file(tmp_path, data, capsys):
    full = write_row(tmp_path / "full", sst=["aa , 3 \n", "bb , 1 \n", "cc , 2 \n"])
    short = write_row(tmp_path / "short", sst=["aa , 3 \n"])
    assert ensemble.main([str(full), str(short), "--data-dir", str(data)]) == 1
    assert f"{short}/predictions/sst-dev-output.csv: no prediction for 2 dev id(s), e.g. bb" in capsys.readouterr().err
    bad = write_row(tmp_path / "bad", sst=["aa , x \n"])
    with pytest.raises(DataError, match="bad/predictions/sst-dev-output.csv: not a prediction file"):
        ensemble.read_predictions(bad / "predictions" / "sst-dev-output.csv")
    empty = write_row(tmp_path / "empty")
    assert ensemble.main([str(full), str(empty), "--data-dir", str(data)]) == 1
    assert "no task with dev predictions in every row" in capsys.readouterr().err


def test_prediction_files_read_back_what_was_written(tmp_path):
    """train.metrics: read_predictions gives back write_predictions' ids and values (classes exact, scores to the 4
    decimals written), from the file prediction_file names."""
    from data.tasks import registry
    from train.metrics import prediction_file, read_predictions, write_predictions

    specs = registry()
    ids = ["a1", "b2", "c3"]
    for task, preds, want in (("sst", np.array([4, 0, 2]), [4.0, 0.0, 2.0]),
                              ("sts", np.array([0.12344, 4.99996, 2.5]), [0.1234, 5.0, 2.5])):
        path = prediction_file(tmp_path, task, "dev")
        assert path == tmp_path / "predictions" / f"{task}-dev-output.csv"
        write_predictions(path, specs[task], ids, preds)
        assert read_predictions(path) == dict(zip(ids, want))
