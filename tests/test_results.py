"""results/reproduce.py on two tiny rows and their soup: per-budget run folders, rows side by side (--jobs), the
soup after its rows, the summary tables, and a Ctrl-C that stops the rows at a checkpoint and leaves them to the next
call; and results/rows.py, the table of the real rows, for names that exist."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import REPO


def tiny_rows(tiny_encoder, small_data) -> dict:
    """Two multi-task rows (sst and sts on the tiny encoder) that differ in learning rate."""
    flags = ["--init-checkpoint", str(tiny_encoder), "--data-dir", str(small_data), "--tasks", "sst,sts",
             "--pooling", "mean", "--pcgrad", "--batch-size", "8", "--eval-batch-size", "32", "--max-length", "32",
             "--num-buckets", "1", "--save-every-steps", "1"]
    return {"tiny-a": ([*flags, "--lr", "1e-3"], {"overall": 0.5}), "tiny-b": ([*flags, "--lr", "3e-3"], {})}


SOUPS = {"tiny-soup": ["tiny-a", "tiny-b"]}


# Loads reproduce.py with its rows, soups and output folder replaced, then runs its command line.
DRIVER = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("reproduce", sys.argv[1])
reproduce = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reproduce)
reproduce.RESULTS = reproduce.Path(sys.argv[2])
reproduce.ROWS = {name: (flags, reference) for name, (flags, reference) in json.loads(sys.argv[3]).items()}
reproduce.SOUPS = json.loads(sys.argv[4])
reproduce.ENCODER_FROM = {name: tuple(source) for name, source in json.loads(sys.argv[5]).items()}
reproduce.TEACHER_FILES = {path: tuple(spec) for path, spec in json.loads(sys.argv[6]).items()}
reproduce.MULTITASK = [*reproduce.ROWS, *reproduce.SOUPS]
reproduce.BEST_ROWS = [("tiny-b", "3x16"), ("tiny-b", "2x16")]
sys.exit(reproduce.main(sys.argv[7:]))
"""


def reproduce(results: Path, rows: dict, *argv: str, encoder_from: dict | None = None,
              teacher_files: dict | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(REPO / "results" / "reproduce.py"), str(results),
                             json.dumps(rows), json.dumps(SOUPS), json.dumps(encoder_from or {}),
                             json.dumps(teacher_files or {}), *argv], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def run_json(results: Path, name: str) -> dict:
    return json.loads((results / "runs" / "2x16" / name / "run.json").read_text())


def test_rows_side_by_side_stop_resume_and_summary(tiny_encoder, small_data, tmp_path):
    rows, results = tiny_rows(tiny_encoder, small_data), tmp_path / "results"
    argv = ["--epochs", "2", "--samples-per-task", "16", "--jobs", "2"]
    # Its own process group: the Ctrl-C of a terminal reaches the rows' processes too.
    first = reproduce(results, rows, *argv, start_new_session=True)
    # Both rows have started (the Ctrl-C finds neither finished): each stops in its set-up or at a checkpoint.
    configs = [results / "runs" / "2x16" / name / "config.json" for name in rows]
    deadline = time.time() + 300
    while not all(path.exists() for path in configs) and first.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGINT)
    output = first.communicate(timeout=300)[0]
    assert first.returncode == 130, output
    assert "stopped: the same command resumes the unfinished rows" in output
    for name in rows:
        assert run_json(results, name)["finished"] is False, output
    assert not (results / "README.md").exists()  # no summary of stopped rows
    assert not (results / "runs" / "2x16" / "tiny-soup").exists()  # nor a soup of them
    here = results_module("reproduce").machine_name()
    assert here.endswith(f" {len(os.sched_getaffinity(0))} cores")
    moved, stayed = rows  # a row stopped on another CPU: run.json names both
    stopped = results / "runs" / "2x16" / moved / "run.json"
    stopped.write_text(json.dumps({**json.loads(stopped.read_text()), "machine": "CPU9, 2 cores"}))

    second = reproduce(results, rows, *argv)
    output = second.communicate(timeout=300)[0]
    assert second.returncode == 0, output
    for name in rows:
        info = run_json(results, name)
        assert info["finished"] is True and info["device"] == "cpu"
        assert info["machine"] == {moved: f"CPU9, 2 cores, then {here}", stayed: here}[name]
        assert info["argv"][:6] == ["-m", "train.main", "--epochs", "2", "--samples-per-task", "16"]
        metrics = (results / "runs" / "2x16" / name / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in metrics] == [0, 1]  # the stopped epoch is not repeated
        copied = results / "2x16" / name
        assert sorted(p.name for p in (copied / "predictions").iterdir()) == [
            "sst-dev-output.csv", "sst-test-output.csv", "sts-dev-output.csv", "sts-test-output.csv"]
        assert (copied / "metrics.jsonl").read_text().splitlines() == metrics

    soup = run_json(results, "tiny-soup")
    assert soup["finished"] is True and soup["argv"] == [
        "-m", "train.soup", "--run-dir", str(results / "runs" / "2x16" / "tiny-soup"),
        *(str(results / "runs" / "2x16" / name) for name in rows)]
    (soup_record,) = [json.loads(line) for line in
                      (results / "2x16" / "tiny-soup" / "metrics.jsonl").read_text().splitlines()]
    assert [item["run_dir"] for item in soup_record["soup"]] == soup["argv"][4:]
    assert len(list((results / "2x16" / "tiny-soup" / "predictions").iterdir())) == 4

    summary = (results / "README.md").read_text()
    assert "## 2 epoch(s) x 16 examples per task" in summary
    best = {}
    for name in [*rows, *SOUPS]:
        records = [json.loads(line) for line in (results / "2x16" / name / "metrics.jsonl").read_text().splitlines()]
        best[name] = max(records, key=lambda r: r["dev"]["overall"])["dev"]
        line = next(line for line in summary.splitlines() if line.startswith(f"| {name} |"))
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        assert cells[2] == "" and cells[4] == f"{best[name]['overall']:.3f}", line
        assert cells[6] == ("soup of 2 rows" if name in SOUPS else "2"), line
        assert cells[5] == ("0.5" if name == "tiny-a" else "")
    # best/ holds the first finished of the rows named before they ran (BEST_ROWS), whatever the others score.
    assert f"`best/` holds tiny-b at 2x16 (overall {best['tiny-b']['overall']:.3f})" in summary
    assert (results / "best" / "predictions" / "sst-test-output.csv").read_text() == \
        (results / "2x16" / "tiny-b" / "predictions" / "sst-test-output.csv").read_text()
    assert (results / "rows.png").stat().st_size > 0

    third = reproduce(results, rows, *argv)
    output = third.communicate(timeout=300)[0]
    assert third.returncode == 0 and output.count("done already") == 3, output

    # A fresh clone has the committed copies but no run directories: the summary stays the same.
    shutil.rmtree(results / "runs")
    (results / "README.md").unlink()
    fourth = reproduce(results, rows, "--summarize-only")
    output = fourth.communicate(timeout=300)[0]
    assert fourth.returncode == 0, output
    assert (results / "README.md").read_text() == summary


def test_row_from_another_rows_encoder(tiny_encoder, small_data, tmp_path):
    """A row in ENCODER_FROM trains its source row first, at the source's own budget, and starts from its
    best_encoder/ (train.main refuses a missing --init-checkpoint, so a wrong path fails the row)."""
    rows, results = tiny_rows(tiny_encoder, small_data), tmp_path / "results"
    rows["tiny-c"] = (rows["tiny-b"][0], {})
    process = reproduce(results, rows, "--rows", "tiny-c", "--epochs", "2", "--samples-per-task", "16",
                        encoder_from={"tiny-c": ["tiny-a", 1, 16]})
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0, output
    source = results / "runs" / "1x16" / "tiny-a"
    assert json.loads((source / "run.json").read_text())["finished"] is True
    assert not (results / "runs" / "2x16" / "tiny-a").exists()  # the source row only at its own budget
    assert output.index("tiny-a: done") < output.index("tiny-c: -m train.main")
    argv = run_json(results, "tiny-c")["argv"]
    # After the row's flags (which name the tiny encoder), so it wins.
    assert argv[-5:-3] == ["--init-checkpoint", str(source / "best_encoder")], argv
    config = json.loads((results / "runs" / "2x16" / "tiny-c" / "config.json").read_text())
    assert config["init_checkpoint"] == str(source / "best_encoder")


def test_student_row_after_its_teacher_rows_and_file(tiny_encoder, small_data, tmp_path):
    """A row with --teacher TASK=FILE, FILE in TEACHER_FILES and missing: its teacher rows train first at their
    own budget, `train.teach` writes FILE from them, then the student trains from FILE."""
    rows, results = tiny_rows(tiny_encoder, small_data), tmp_path / "results"
    teacher = tmp_path / "teachers" / "sts.npz"
    rows["tiny-student"] = ([*rows["tiny-b"][0], "--teacher", f"sts={teacher}"], {})
    process = reproduce(results, rows, "--rows", "tiny-student", "--epochs", "1", "--samples-per-task", "16",
                        teacher_files={str(teacher): ["sts", ["tiny-a"], 1, 16]})
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0, output
    assert json.loads((results / "runs" / "1x16" / "tiny-a" / "run.json").read_text())["finished"] is True
    assert teacher.exists()
    order = [output.index(line) for line in ("tiny-a: done", f"wrote {teacher}", "tiny-student: -m train.main")]
    assert order == sorted(order), output
    config = json.loads((results / "runs" / "1x16" / "tiny-student" / "config.json").read_text())
    assert config["teachers"] == f"sts={teacher}"


def results_module(name: str):
    """results/<name>.py loaded as a module (results/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "results" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_row_table_names_only_what_exists():
    """results/rows.py: every row's flags parse as train.main's; each teacher file a row names is made by
    TEACHER_FILES for that task and is committed; setups, pairings, soups, encoder sources, teachers, the separate
    models and the best rows name rows of the table."""
    from train.cli import parse_args

    rows = results_module("rows")
    for name, (flags, _) in rows.ROWS.items():
        config, _ = parse_args(flags)
        for task, path in config.teacher_files().items():
            assert rows.TEACHER_FILES[path][0] == task and (REPO / path).is_file(), (name, task, path)
    names = {*rows.ROWS, *rows.SOUPS}
    assert all(set(members) <= names for members in rows.SETUPS.values())
    assert {*rows.PAIRED_WITH, *rows.PAIRED_WITH.values(), *(s for s, *_ in rows.PAIRED_ACROSS_BUDGETS)} <= set(
        rows.SETUPS)
    assert set(rows.REPLICATED_ON) <= {row for setup in rows.PAIRED_WITH for row in rows.SETUPS[setup]}
    assert all((REPO / "results" / "replications" / cpu).is_dir() for cpu in rows.REPLICATED_ON.values())
    separate = [names for models in rows.SEPARATE.values() for names in models.values()]
    assert all(set(members) <= set(rows.ROWS) for members in [*rows.SOUPS.values(), *separate])
    assert {*rows.ENCODER_FROM, *(source for source, *_ in rows.ENCODER_FROM.values())} <= set(rows.ROWS)
    assert all(set(teachers) <= set(rows.ROWS) for _, teachers, *_ in rows.TEACHER_FILES.values())
    assert {name for name, _ in rows.BEST_ROWS} <= set(rows.MULTITASK)


def test_paired_differences_are_per_seed_means_and_standard_errors(monkeypatch):
    """The Paired differences table against a hand computation: seeds pair by position in each setup's rows."""
    import numpy as np

    reproduce = results_module("reproduce")
    monkeypatch.setattr(reproduce, "SETUPS", {"base": ["b1", "b2", "b3"], "new": ["n1", "n2", "n3"]})
    monkeypatch.setattr(reproduce, "PAIRED_WITH", {"new": "base"})
    monkeypatch.setattr(reproduce, "PAIRED_ACROSS_BUDGETS", [])
    monkeypatch.setattr(reproduce, "REPLICATED_ON", {})
    monkeypatch.setattr(reproduce, "budgets", lambda: ["2x10"])
    overall = {"b1": 0.70, "b2": 0.74, "b3": 0.72, "n1": 0.71, "n2": 0.74, "n3": 0.75}
    scores = {("2x10", name): {"sst": 0.5, "para": 0.8, "sts": 0.85, "overall": value}
              for name, value in overall.items()}
    finished = {key: True for key in scores}
    row = reproduce.paired_table(scores, finished)[-1].split(" | ")
    diffs = np.array([0.01, 0.0, 0.03])
    assert row[7] == f"{diffs.mean():+.3f} ±{diffs.std(ddof=1) / np.sqrt(3):.3f}" == "+0.013 ±0.009"
    assert row[8] == "+0.010 / +0.000 / +0.030 |" and row[4] == "+0.000 ±0.000"
    finished["2x10", "n3"] = False  # a setup with a row still training has no line
    assert reproduce.paired_table(scores, finished) == []


def test_a_setup_on_another_cpu_is_paired_with_its_base_rerun_there(monkeypatch, tmp_path):
    """REPLICATED_ON: the setup's rows against its PAIRED_WITH rows rerun on their CPU, read from
    results/replications/<cpu>/<budget>/<row>/ (best epoch by overall), beside the comparison with the rows here; a
    setup with only some rows on that CPU is compared there for those seeds and here for the others."""
    reproduce = results_module("reproduce")
    monkeypatch.setattr(reproduce, "RESULTS", tmp_path)
    monkeypatch.setattr(reproduce, "SETUPS", {"base": ["b1", "b2", "b3"], "new": ["n1", "n2", "n3"]})
    monkeypatch.setattr(reproduce, "PAIRED_WITH", {"new": "base"})
    monkeypatch.setattr(reproduce, "PAIRED_ACROSS_BUDGETS", [])
    monkeypatch.setattr(reproduce, "REPLICATED_ON", {"n1": "cpu9", "n2": "cpu9", "n3": "cpu9"})
    monkeypatch.setattr(reproduce, "budgets", lambda: ["2x10"])
    for name, epochs in {"b1": [0.70, 0.73], "b2": [0.75, 0.71], "b3": [0.72, 0.72]}.items():
        folder = tmp_path / "replications" / "cpu9" / "2x10" / name
        folder.mkdir(parents=True)
        (folder / "metrics.jsonl").write_text("".join(
            json.dumps({"epoch": i, "dev": {"sst": 0.5, "para": 0.8, "sts": 0.8, "overall": value}}) + "\n"
            for i, value in enumerate(epochs)))
        (folder / "run.json").write_text(json.dumps({"finished": name != "b3"}))
    rerun_scores, rerun_finished = reproduce.replication_scores()
    assert rerun_scores["cpu9/2x10", "b1"]["overall"] == 0.73 and rerun_scores["cpu9/2x10", "b2"]["overall"] == 0.75
    assert rerun_finished == {("cpu9/2x10", "b1"): True, ("cpu9/2x10", "b2"): True, ("cpu9/2x10", "b3"): False}
    overall = {"b1": 0.70, "b2": 0.74, "b3": 0.72, "n1": 0.74, "n2": 0.74, "n3": 0.75}
    scores = {("2x10", name): {"sst": 0.5, "para": 0.8, "sts": 0.85, "overall": value}
              for name, value in overall.items()}
    finished = {key: True for key in scores}
    assert len([line for line in reproduce.paired_table({**scores, **rerun_scores}, {**finished, **rerun_finished})
                if line.startswith("| 2x10")]) == 1  # a rerun row still training: no line for the rerun
    rerun_finished["cpu9/2x10", "b3"] = True
    here, rerun = reproduce.paired_table({**scores, **rerun_scores}, {**finished, **rerun_finished})[-2:]
    assert here.split(" | ")[2] == "base"
    row = rerun.split(" | ")
    assert row[:4] == ["| 2x10", "new", "base, rerun on cpu9", "3"]
    assert row[8] == "+0.010 / -0.010 / +0.030 |" and row[6] == "+0.050 ±0.000"
    monkeypatch.setattr(reproduce, "REPLICATED_ON", {"n3": "cpu9"})  # only seed 3 trained on cpu9
    row = reproduce.paired_table({**scores, **rerun_scores}, {**finished, **rerun_finished})[-1].split(" | ")
    assert row[:4] == ["| 2x10", "new", "base, rerun on cpu9 (seed 3)", "3"]
    assert row[8] == "+0.040 / +0.000 / +0.030 |"


def test_replication_rows_train_apart_and_are_committed_for_the_summary(monkeypatch, tmp_path, capsys):
    """--replication CPU: the rows train under results/runs/replications/CPU/ (encoder sources in results/runs/),
    a rerun trained here is read before its committed copy, and the summary copies it to results/replications/; a
    CPU name that is no plain folder name, a row name that is no row, and an option of reproduce.py after --extra
    (where train.main would get it) are refused by name before anything runs."""
    import pytest

    reproduce = results_module("reproduce")
    monkeypatch.setattr(reproduce, "RESULTS", tmp_path)
    calls = []
    monkeypatch.setattr(reproduce, "make_teachers", lambda *args: True)
    monkeypatch.setattr(reproduce, "run_rows", lambda names, epochs, samples, extra, jobs, root:
                        calls.append((names, root)) or True)
    monkeypatch.setattr(reproduce, "summarize", lambda: None)
    row = next(name for name in reproduce.ROWS if name not in reproduce.ENCODER_FROM)
    started = next(iter(reproduce.ENCODER_FROM))
    assert reproduce.main(["--rows", row, started, "--replication", "cpu9"]) == 0
    rerun = tmp_path / "runs" / "replications" / "cpu9"
    assert calls == [([reproduce.ENCODER_FROM[started][0]], tmp_path / "runs"), ([row, started], rerun), ([], rerun)]
    with pytest.raises(SystemExit):
        reproduce.main(["--rows", row, "--replication", "../cpu9"])
    assert "--replication '../cpu9'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        reproduce.main(["--rows", row, row + "-seed9"])
    assert f"--rows '{row}-seed9': no such row in results/rows.py (ROWS, SOUPS); did you mean '{row}'" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        reproduce.main(["--rows", row, "--extra", "--num-buckets", "8", "--replication", "cpu9"])
    assert "--extra ... --replication: an option of reproduce.py, not of train.main" in capsys.readouterr().err
    assert len(calls) == 3

    def write(folder, overall):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.jsonl").write_text(json.dumps({"dev": {"overall": overall}}) + "\n")
        (folder / "run.json").write_text(json.dumps({"finished": True}))
        (folder / "config.json").write_text("{}")

    write(tmp_path / "replications" / "cpu9" / "2x10" / "b1", 0.70)  # committed earlier
    write(rerun / "2x10" / "b1", 0.72)  # trained again here
    write(rerun / "2x10" / "b2", 0.74)
    assert reproduce.replication_folders() == {("cpu9/2x10", "b1"): rerun / "2x10" / "b1",
                                               ("cpu9/2x10", "b2"): rerun / "2x10" / "b2"}
    reproduce.commit_replications()
    shutil.rmtree(tmp_path / "runs")  # a fresh clone
    scores, finished = reproduce.replication_scores()
    assert {key: dev["overall"] for key, dev in scores.items()} == {("cpu9/2x10", "b1"): 0.72,
                                                                   ("cpu9/2x10", "b2"): 0.74}
    assert all(finished.values())


def test_each_set_of_separate_models_is_scored_by_its_tasks_means(monkeypatch):
    """SEPARATE: one Setups line per set of separate single-task models whose rows all finished at a budget, each
    task the mean of its rows, overall from those means."""
    reproduce = results_module("reproduce")
    monkeypatch.setattr(reproduce, "SETUPS", {})
    monkeypatch.setattr(reproduce, "budgets", lambda: ["7x10"])
    monkeypatch.setattr(reproduce, "SEPARATE", {
        "one seed": {"sst": ["s1"], "para": ["p1"], "sts": ["t1"]},
        "three seeds": {"sst": ["s1", "s2", "s3"], "para": ["p1", "p2", "p3"], "sts": ["t1", "t2", "t3"]}})
    values = {"s1": 0.48, "s2": 0.50, "s3": 0.46, "p1": 0.83, "p2": 0.84, "p3": 0.85,
              "t1": 0.87, "t2": 0.88, "t3": 0.89}
    scores = {("7x10", name): {{"s": "sst", "p": "para", "t": "sts"}[name[0]]: value} for name, value in values.items()}
    finished = {key: True for key in scores}
    one, three = reproduce.setup_table(scores, finished)[-2:]
    assert one == f"| 7x10 | one seed | 1/1/1 | 0.480 | 0.830 | 0.870 | {(0.48 + 0.83 + 1.87 / 2) / 3:.3f} |"
    assert three.startswith("| 7x10 | three seeds | 3/3/3 | 0.480 [0.460-0.500] ±0.012 | 0.840 [0.830-0.850] ")
    assert three.endswith(f" | {(0.48 + 0.84 + 1.88 / 2) / 3:.3f} |")
    finished["7x10", "p3"] = False  # a set with a row still training has no line
    assert reproduce.setup_table(scores, finished)[-1] == one


def test_a_setup_is_paired_with_itself_at_a_smaller_budget(monkeypatch):
    """PAIRED_ACROSS_BUDGETS: each row at the larger budget minus the same row at the smaller one, for each
    comparison of the list (one setup at several budgets)."""
    reproduce = results_module("reproduce")
    monkeypatch.setattr(reproduce, "SETUPS", {"new": ["n1", "n2", "n3"]})
    monkeypatch.setattr(reproduce, "PAIRED_WITH", {})
    monkeypatch.setattr(reproduce, "REPLICATED_ON", {})
    monkeypatch.setattr(reproduce, "PAIRED_ACROSS_BUDGETS", [("new", "5x10", "3x10"), ("new", "7x10", "5x10")])
    overall = {("3x10", "n1"): 0.70, ("3x10", "n2"): 0.74, ("3x10", "n3"): 0.72,
               ("5x10", "n1"): 0.72, ("5x10", "n2"): 0.75, ("5x10", "n3"): 0.72,
               ("7x10", "n1"): 0.71, ("7x10", "n2"): 0.78, ("7x10", "n3"): 0.75}
    scores = {key: {"sst": 0.5, "para": 0.8 + value, "sts": 0.85, "overall": value} for key, value in overall.items()}
    finished = {key: True for key in scores}
    *_, five, seven = reproduce.paired_table(scores, finished)
    row = five.split(" | ")
    assert row[:4] == ["| 5x10", "new", "the same setup at 3x10", "3"]
    assert row[5] == row[7] == "+0.010 ±0.006" and row[4] == "+0.000 ±0.000"
    assert row[8] == "+0.020 / +0.010 / +0.000 |"
    row = seven.split(" | ")
    assert row[:4] == ["| 7x10", "new", "the same setup at 5x10", "3"]
    assert row[7] == "+0.017 ±0.013" and row[8] == "-0.010 / +0.030 / +0.030 |"
    finished["3x10", "n2"] = False
    assert [line.split(" | ")[0] for line in reproduce.paired_table(scores, finished) if " | " in line][-1] == "| 7x10"
    finished["7x10", "n3"] = False
    assert reproduce.paired_table(scores, finished) == []


def test_grad_norms_follow_the_loss_weights_and_the_ranking_term(tiny_encoder, small_data):
    """results/grad_norms.py: a loss weight of 3 on sts triples its norms and leaves sst's; CoSENT adds to sts's."""
    import numpy as np

    grad_norms = results_module("grad_norms")
    flags = ["--init-checkpoint", str(tiny_encoder), "--data-dir", str(small_data), "--tasks", "sst,sts", "--pooling",
             "mean", "--regression-head", "cosine", "--regression-target", "scaled", "--batch-size", "8",
             "--max-length", "32", "--num-buckets", "1", "--dtype", "float32"]
    plain = grad_norms.grad_norms(flags, 2)
    weighted = grad_norms.grad_norms([*flags, "--loss-weights", "sts=3"], 2)
    ranked = grad_norms.grad_norms([*flags, "--ranking-loss", "0.5"], 2)
    assert len(plain["sts"]) == 2 and min(plain["sts"]) > 0
    np.testing.assert_allclose(weighted["sts"], 3 * np.array(plain["sts"]), rtol=1e-5)
    assert weighted["sst"] == plain["sst"] == ranked["sst"]
    assert all(r > p for r, p in zip(ranked["sts"], plain["sts"]))
