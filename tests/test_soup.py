"""Model soups (train/soup.py) of tiny runs: the float64 mean of the runs' best parameters, a run directory that
evaluates and predicts like a trained one, and runs that are not one model refused by name."""

import json
import shutil

import jax
import numpy as np
import pytest

from train import evaluate, main, predict, soup
from train.evaluate import evaluate_run
from train.run import load_run


def train_tiny(tiny_encoder, small_data, run_dir, *flags):
    argv = ["--preset", "cosfeat-pcgrad-mean", "--init-checkpoint", str(tiny_encoder), "--data-dir", str(small_data),
            "--epochs", "2", "--samples-per-task", "24", "--batch-size", "8", "--eval-batch-size", "32",
            "--max-length", "32", "--num-buckets", "1", "--lr", "1e-3", "--run-dir", str(run_dir), "--quiet", *flags]
    assert main.main(argv) == 0
    return run_dir


@pytest.fixture(scope="module")
def ingredients(tiny_encoder, small_data, tmp_path_factory):
    """Three runs of one model: different seeds and learning rates (three, so that a float32 sum would round)."""
    root = tmp_path_factory.mktemp("ingredients")
    return [train_tiny(tiny_encoder, small_data, root / "a"),
            train_tiny(tiny_encoder, small_data, root / "b", "--seed", "2", "--lr", "3e-3"),
            train_tiny(tiny_encoder, small_data, root / "c", "--seed", "3", "--lr", "2e-3")]


@pytest.fixture(scope="module")
def soup_dir(ingredients, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("soups") / "soup"
    assert soup.main(["--run-dir", str(run_dir), *map(str, ingredients)]) == 0
    return run_dir


def test_soup_holds_the_float64_mean_of_the_runs_best_parameters(ingredients, soup_dir):
    runs = [jax.device_get(load_run(d)[1]) for d in ingredients]
    souped = jax.device_get(load_run(soup_dir)[1])
    expected = jax.tree_util.tree_map(lambda *leaves: (sum(map(np.float64, leaves)) / 3).astype(np.float32), *runs)
    assert jax.tree_util.tree_structure(souped) == jax.tree_util.tree_structure(expected)
    for (path, leaf), want in zip(jax.tree_util.tree_leaves_with_path(souped), jax.tree_util.tree_leaves(expected)):
        assert leaf.dtype == np.float32
        np.testing.assert_array_equal(leaf, want, err_msg=jax.tree_util.keystr(path))
    # The runs differ in the encoder, not only in their heads: the mean is not either run.
    encoders = [jax.tree_util.tree_leaves(r["bert"]) for r in runs]
    assert any(not np.array_equal(a, b) for a, b in zip(*encoders[:2]))


def test_soup_is_a_run_directory_that_evaluates_and_predicts(ingredients, soup_dir, capsys):
    (record,) = [json.loads(line) for line in (soup_dir / "metrics.jsonl").read_text().splitlines()]
    assert [item["run_dir"] for item in record["soup"]] == [str(d) for d in ingredients]
    for item, run_dir in zip(record["soup"], ingredients):
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert item["dev"] == max(records, key=lambda r: r["dev"]["overall"])["dev"]
    assert evaluate_run(soup_dir, ("dev",))["dev_overall"] == pytest.approx(record["dev"]["overall"], abs=1e-6)
    assert sorted(p.name for p in (soup_dir / "predictions").iterdir()) == sorted(
        f"{task}-{split}-output.csv" for task in ("sst", "para", "sts") for split in ("dev", "test"))
    assert json.loads((soup_dir / "config.json").read_text()) == json.loads(
        (ingredients[0] / "config.json").read_text())
    assert (soup_dir / "best_encoder" / "params").is_dir() and (soup_dir / "curves.png").stat().st_size > 1000
    assert predict.main(["--checkpoint", str(soup_dir), "A gripping film."]) == 0
    assert "sst: " in capsys.readouterr().out
    assert evaluate.main(["--checkpoint", str(soup_dir), "--splits", "dev"]) == 0


def test_soup_of_a_run_with_itself_scores_as_the_run(ingredients, tmp_path, capsys):
    run = ingredients[0]
    assert soup.main(["--run-dir", str(tmp_path / "same"), str(run), str(run), "--quiet"]) == 0
    # A line for each task and split it predicted (a bar on a terminal without --quiet).
    assert [line.split(":")[0] for line in capsys.readouterr().out.splitlines() if " examples in " in line] == [
        f"{split} {task}" for split in ("dev", "test") for task in ("sst", "para", "sts")]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (record,) = [json.loads(line) for line in (tmp_path / "same" / "metrics.jsonl").read_text().splitlines()]
    assert record["dev"] == max(records, key=lambda r: r["dev"]["overall"])["dev"]


def test_runs_of_another_model_are_refused_by_setting(ingredients, tmp_path, capsys):
    # A run that pools [CLS]: a copy of the first run with that setting in its config.json (the soup reads
    # settings from there; training it would only cost time).
    other = shutil.copytree(ingredients[0], tmp_path / "cls")
    config = json.loads((other / "config.json").read_text())
    assert config["pooling"] == "mean"
    (other / "config.json").write_text(json.dumps({**config, "pooling": "cls"}))
    assert soup.main(["--run-dir", str(tmp_path / "soup"), str(ingredients[0]), str(other)]) == 1
    err = capsys.readouterr().err
    assert "pooling" in err and f"{other} has 'cls'" in err and f"{ingredients[0]} has 'mean'" in err
    assert not (tmp_path / "soup").exists()


@pytest.mark.parametrize("case", ["one run", "not a run", "existing soup"])
def test_bad_soups_are_refused_with_the_reason(case, ingredients, soup_dir, tmp_path, capsys):
    runs = {"one run": [ingredients[0]], "not a run": [ingredients[0], tmp_path],
            "existing soup": ingredients}[case]
    out = soup_dir if case == "existing soup" else tmp_path / "soup"
    assert soup.main(["--run-dir", str(out), *map(str, runs)]) == 1
    message = {"one run": "a soup needs two runs or more", "not a run": f"{tmp_path}: not a run directory",
               "existing soup": f"{soup_dir} holds a run already"}[case]
    assert message in capsys.readouterr().err


# Stopped before its checkpoint is saved (its config and predictions written), or at the last step (the plot).
@pytest.mark.parametrize("step", ["save_best", "plot_soup"])
def test_a_soup_stopped_part_way_is_made_again_by_the_same_command(step, ingredients, soup_dir, tmp_path, monkeypatch,
                                                                     capsys):
    out, argv = tmp_path / "soup", ["--run-dir", str(tmp_path / "soup"), *map(str, ingredients)]

    def interrupt(*args):
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(soup, step, interrupt)
        assert soup.main(argv) == 130
    assert "the same command makes it again" in capsys.readouterr().err
    assert (out / soup.UNFINISHED).exists() and (out / "predictions").is_dir()
    assert (out / "checkpoints").is_dir() == (step == "plot_soup")
    assert soup.main(argv) == 0
    assert not (out / soup.UNFINISHED).exists()
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    (expected,) = [json.loads(line) for line in (soup_dir / "metrics.jsonl").read_text().splitlines()]
    assert record == expected
    # Once finished, the directory is a run like any other: refused as a new soup's directory.
    assert soup.main(argv) == 1
    assert f"{out} holds a run already" in capsys.readouterr().err
