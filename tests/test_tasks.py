"""The task registry: the built-in tasks reproduce the numbers recorded before they were declared in TOML, a
user's own task trains beside them, and bad declarations get one line naming the file and key."""

import itertools
import json
import re
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from data.input_pipeline import length_sorted_batches
from data.tasks import DataError, MalformedRowWarning, load_task_file, registry
from train import evaluate, loop, main, predict
from tests.helpers import tiny_config
from train.metrics import predictions_dir, read_predictions
from train.run import Run, read_metrics
from train.step import make_grad_fns

RECORDED = Path(__file__).parent / "data" / "runs_before_the_task_registry.json"
# The recorded cases' settings, with the names that replaced sts_head and sts_target.
CASES = {
    "sst,sts,cfimdb-mean-sstcls-scaled-pcgrad-rdrop": dict(tasks=("sst", "sts", "cfimdb"), pooling="mean,sst=cls",
                                                           regression_target="scaled", pcgrad=True, rdrop=0.5),
    "sts-linear-binary": dict(tasks=("sts",)),
    "sts-cosine-binary-ema": dict(tasks=("sts",), regression_head="cosine", ema=0.5),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_builtin_tasks_give_the_numbers_recorded_before_the_registry(tiny_encoder, small_data, tmp_path, case):
    """Losses, dev metrics and test predictions of tiny runs equal those the code gave when the four tasks were
    spelled out in code (tests/data/runs_before_the_task_registry.json), up to float32 rounding: on the CPU where
    they were recorded they are equal bit for bit, on another CPU XLA's float32 kernels round otherwise (an Intel
    Xeon, family 6 model 207: losses within 8.3e-8 of them, relative; Pearson's r of the tiny model's STS scores,
    which span about 0.001, within 4.2e-4; predictions as written, 4 decimals, equal). Runs with para are not among
    them: its training stream is now keyed by its one name, para, where it was keyed by quora."""
    recorded = json.loads(RECORDED.read_text())[case]
    loop.train(tiny_config(tiny_encoder, small_data, **CASES[case]), tmp_path / "run", quiet=True)
    got = read_metrics(tmp_path / "run")
    assert [r["loss"] for r in got] == [pytest.approx(r["loss"], rel=1e-6, abs=0) for r in recorded["epochs"]]
    assert [r["dev"] for r in got] == [pytest.approx(r["dev"], rel=0, abs=2e-3) for r in recorded["epochs"]]
    for name, text in recorded["predictions"].items():
        written, recorded_file = predictions_dir(tmp_path / "run") / name, tmp_path / name
        recorded_file.write_text(text)
        assert written.read_text().splitlines()[0] == text.splitlines()[0]
        want, have = read_predictions(recorded_file), read_predictions(written)
        assert list(have) == list(want)
        # Labels exactly; scores to one unit of their 4th decimal, which may round either way.
        assert list(have.values()) == [pytest.approx(v, rel=0, abs=1.5e-4) for v in want.values()]


TOML = """
[tasks.mysts]
kind = "pair-regression"
train = "files/train.tsv"
dev = "files/dev.tsv"
test = "files/test.tsv"
format = "tsv"
text = "sentence1"
text_pair = "sentence2"
label = "similarity"
label_range = [0, 5]
metric = "pearson"
binary_threshold = 2
"""


def declared_sts_copy(small_data: Path, folder: Path, toml: str = TOML) -> Path:
    """A user's task file declaring a copy of the small STS files (ids by row number, the pandas index dropped)."""
    (folder / "files").mkdir(parents=True)
    for split in ("train", "dev", "test"):
        lines = (small_data / f"sts-{split}.csv").read_text(encoding="utf-8").splitlines()
        rows = [line.split("\t")[2:] for line in lines]
        (folder / "files" / f"{split}.tsv").write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    (folder / "my.toml").write_text(toml)
    return folder / "my.toml"


@pytest.mark.parametrize("head", ["cosine", "linear"])
def test_a_declared_copy_of_sts_gives_the_losses_of_the_builtin_sts(tiny_encoder, small_data, tmp_path, head):
    """The same rows, tokens, labels, model and loss: on the same batches and parameters (the linear head's
    parameters copied across) both give the same losses and gradients. A run's batches are drawn by a stream keyed
    by the task's name, so whole runs of the two draw other batches."""
    toml = declared_sts_copy(small_data, tmp_path / "mine")
    common = dict(epochs=1, regression_head=head, regression_target="scaled")
    builtin = Run(tiny_config(tiny_encoder, small_data, tasks=("sts",), **common), tiny_encoder)
    declared = Run(tiny_config(tiny_encoder, small_data, tasks=("mysts",), task_files=(str(toml),), **common),
                   tiny_encoder)
    params = jax.device_get(builtin.init_params())
    copied = {("mysts_regressor" if k == "sts_regressor" else k): v for k, v in params.items()}
    np.testing.assert_array_equal(declared.data["mysts"].train.input_ids, builtin.data["sts"].train.input_ids)
    np.testing.assert_array_equal(declared.data["mysts"].train.labels, builtin.data["sts"].train.labels)
    key = jax.random.key(0, impl="rbg")
    grads = {name: make_grad_fns(run.model, run.config)[name] for name, run in (("sts", builtin), ("mysts", declared))}
    batches = zip(*(length_sorted_batches(run.data[name].train, run.data[name].buckets, 8)
                    for name, run in (("sts", builtin), ("mysts", declared))))
    for a, b in itertools.islice(batches, 3):
        a, b = ({k: v for k, v in x.items() if k != "index"} for x in (a, b))
        loss_a, grads_a = grads["sts"](params, a, key, 0)
        loss_b, grads_b = grads["mysts"](copied, b, key, 0)
        assert float(loss_a) == float(loss_b)
        for x, y in zip(jax.tree_util.tree_leaves(grads_a), jax.tree_util.tree_leaves(grads_b)):
            np.testing.assert_array_equal(x, y)


def test_a_declared_task_trains_evaluates_and_predicts(tiny_encoder, small_data, tmp_path, capsys):
    toml = declared_sts_copy(small_data, tmp_path / "mine")
    run_dir = tmp_path / "run"
    loop.train(tiny_config(tiny_encoder, small_data, tasks=("mysts",), task_files=(str(toml),), epochs=1), run_dir,
               quiet=True)
    (record,) = read_metrics(run_dir)
    assert set(record["loss"]) == {"mysts"} and set(record["dev"]) == {"mysts", "overall"}
    assert record["dev"]["overall"] == pytest.approx((record["dev"]["mysts"] + 1) / 2)
    lines = (run_dir / "predictions" / "mysts-test-output.csv").read_text().splitlines()
    assert lines[0] == "id \t Predicted_Similarity " and len(lines) == 1 + 96 and lines[1].startswith("0 , ")
    assert evaluate.main(["--checkpoint", str(run_dir), "--splits", "dev"]) == 0
    assert f"dev_mysts={record['dev']['mysts']:.4f}" in capsys.readouterr().out
    assert predict.main(["--checkpoint", str(run_dir), "A man plays a guitar.", "A man plays music."]) == 0
    assert "mysts: " in capsys.readouterr().out


def test_the_done_when_command_of_the_task_file_issue(tiny_encoder, small_data, tmp_path, monkeypatch):
    toml = declared_sts_copy(small_data, tmp_path / "mine")
    run_dir = tmp_path / "R"
    argv = ["--task-file", str(toml), "--tasks", "sst,mysts", "--epochs", "1", "--samples-per-task", "64",
            "--batch-size", "16", "--run-dir", str(run_dir), "--init-checkpoint", str(tiny_encoder),
            "--data-dir", str(small_data), "--max-length", "32", "--num-buckets", "2", "--quiet"]
    assert main.main(argv) == 0
    assert (run_dir / "predictions" / "mysts-test-output.csv").exists()
    assert (run_dir / "predictions" / "sst-test-output.csv").exists()
    assert list(run_dir.glob("events.out.tfevents.*"))
    (record,) = read_metrics(run_dir)
    assert set(record["dev"]) == {"sst", "mysts", "overall"}
    assert record["dev"]["overall"] == pytest.approx(record["dev"]["sst"])  # mysts is reported beside it


@pytest.mark.parametrize("edit, message", [
    (('kind = "pair-regression"', 'kind = "ranking"'), "[tasks.mysts]: kind = 'ranking': choose from"),
    (('text_pair = "sentence2"', 'text_pair = "sentence9"'), "no column 'sentence9' (the text_pair of task mysts"),
    (('train = "files/train.tsv"', 'train = "files/nope.tsv"'), "nope.tsv: file not found"),
    (('label_range = [0, 5]', 'label_range = [5, 0]'), "label_range = [5, 0]: expected [low, high]"),
    (('metric = "pearson"', 'metric = "accuracy"'), "metric = 'accuracy': a pair-regression task is scored by"),
    (('[tasks.mysts]', '[tasks.sts]'), "[tasks.sts]: the name is taken by a task of"),
    (('format = "tsv"', 'colour = "red"'), "[tasks.mysts]: unknown key 'colour'"),
    (('label = "similarity"', ''), "[tasks.mysts]: missing key 'label'"),
], ids=["kind", "column", "file", "range", "metric", "clash", "unknown-key", "missing-key"])
def test_bad_declarations_are_one_line_naming_file_and_key(tiny_encoder, small_data, tmp_path, capsys, edit,
                                                           message):
    toml = declared_sts_copy(small_data, tmp_path / "mine", TOML.replace(*edit))
    run_dir = tmp_path / "R"
    argv = ["--task-file", str(toml), "--tasks", "mysts" if "tasks.sts" not in edit[1] else "sts", "--epochs", "1",
            "--samples-per-task", "8", "--batch-size", "8", "--run-dir", str(run_dir), "--init-checkpoint",
            str(tiny_encoder), "--data-dir", str(small_data), "--max-length", "32", "--quiet"]
    assert main.main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and str(toml.parent) in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_labels_outside_the_declaration_are_skipped_with_their_line(small_data, tmp_path):
    toml = declared_sts_copy(small_data, tmp_path / "mine", TOML.replace("label_range = [0, 5]",
                                                                         "label_range = [0, 4]"))
    spec = load_task_file(toml)["mysts"]
    from data.tasks import read_rows

    with pytest.warns(MalformedRowWarning) as caught:
        rows = read_rows(spec.files["train"], spec)
    assert all(rows.labels <= 4)
    *per_row, summary = [str(w.message) for w in caught]
    assert per_row and all(re.fullmatch(r".*train\.tsv: line \d+ \(id \d+\): label '[\d.]+' outside \[0.0, 4.0\]; "
                                        r"row skipped", message) for message in per_row)
    loaded = len(rows.labels)
    assert summary == (f"{spec.files['train']}: skipped {len(per_row)} malformed row(s) of {loaded + len(per_row)}; "
                       f"{loaded} loaded")


def test_jsonl_and_csv_files_read_like_tsv(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"q": "A b", "r": "C d", "y": 1}\n{"q": "E", "r": "F", "y": 0}\n')
    (tmp_path / "a.csv").write_text('q,r,y\n"A b","C d",1\nE,F,0\n')
    (tmp_path / "t.toml").write_text(textwrap.dedent("""
        [tasks.nli]
        kind = "pair-classification"
        train = "a.jsonl"
        dev = "a.csv"
        text = "q"
        text_pair = "r"
        label = "y"
        num_classes = 2
        metric = "f1"
    """))
    from data.tasks import read_rows

    spec = load_task_file(tmp_path / "t.toml")["nli"]
    assert spec.format == "jsonl" and spec.prediction_header == "Predicted_Y"
    first, second = read_rows(spec.files["train"], spec), read_rows(spec.files["dev"], dataclass_format(spec, "csv"))
    assert first.ids == second.ids == ["0", "1"]
    assert first.sentences == second.sentences == (["A b", "E"], ["C d", "F"])
    assert first.labels.tolist() == second.labels.tolist() == [1, 0]


def dataclass_format(spec, fmt):
    import dataclasses

    return dataclasses.replace(spec, format=fmt)


def test_the_builtin_declarations():
    tasks = registry()
    assert list(tasks) == ["sst", "para", "sts", "cfimdb"]
    assert [tasks[t].kind for t in tasks] == ["classification", "pair-classification", "pair-regression",
                                              "classification"]
    assert [tasks[t].prediction_header for t in ("sst", "para", "sts")] == [
        "Predicted_Sentiment", "Predicted_Is_Paraphrase", "Predicted_Similarity"]
    assert "test" not in tasks["cfimdb"].files and all(tasks[t].in_overall for t in tasks)
    with pytest.raises(DataError, match="task file not found"):
        load_task_file("/nonexistent/tasks.toml")
