"""Run the reference report's experiment rows and summarise them into results/.

    python results/reproduce.py                                  # every row, the settings below
    python results/reproduce.py --rows baseline-10000 sst-finetune
    python results/reproduce.py --epochs 10 --samples-per-task 10000   # the reference budget
    python results/reproduce.py --summarize-only
    python results/reproduce.py --jobs 6 --epochs 10 --samples-per-task 10000   # on a GPU: 6 rows at once
    python results/reproduce.py --rows ROW --epochs 7 --samples-per-task 10000 --replication xeon207

Each row is `python -m train.main` with its flags in ROWS (results/rows.py, with every table named below) plus the
budget flags; its run directory is results/runs/<epochs>x<samples>/<row>. A finished row is not run again; a stopped
one (Ctrl-C) is resumed. A soup row (SOUPS) is `python -m train.soup` over its ingredient rows of the same budget,
trained first. A row in ENCODER_FROM starts from another row's fine-tuned encoder, trained first at the budget named
there. With --jobs N, N rows train at once, each logging to its run directory's train.log: a small model leaves a
GPU mostly idle, so rows side by side finish sooner than one after another. The summary writes results/README.md (a
table per budget), results/rows.png, results/best/ (curves and test predictions of the first finished row of
BEST_ROWS) and copies each row's config.json, metrics.jsonl, run.json and predictions/ into
results/<epochs>x<samples>/<row>/. A row with no run directory here (a fresh clone has no results/runs/) is
summarised from that copy, so --summarize-only after training one row keeps every other row. With --replication CPU
the rows are reruns on another CPU (where bfloat16 gives a seed other numbers): they train in
results/runs/replications/<CPU>/<budget>/ and their config.json, metrics.jsonl and run.json go to
results/replications/<CPU>/<budget>/, where the Paired differences table reads them (REPLICATED_ON).
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent
REPO = RESULTS.parent
sys.path.insert(0, str(REPO))
from results.rows import (BEST_ROWS, ENCODER_FROM, MULTITASK, PAIRED_ACROSS_BUDGETS,  # noqa: E402
                          PAIRED_WITH, REPLICATED_ON, ROW_DTYPE, ROW_POOL, ROWS, SAMPLES_FRACTION, SEPARATE,
                          SETUPS, SOUPS, TEACHER_FILES)
from bench.common import cpu_name, num_cores  # noqa: E402
from train.metrics import predictions_dir  # noqa: E402

RUNNING: set[subprocess.Popen] = set()  # the rows' training processes now running


def budget_tag(epochs: int, samples_per_task: int) -> str:
    """The name of a budget's folder in results/ and results/runs/, for example '10x10000'."""
    return f"{epochs}x{samples_per_task}"


def git_commit() -> str:
    """The commit the runs are made from (with '+dirty' when the tree has changes outside results/, whose files
    the summary itself rewrites)."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
                           cwd=REPO, capture_output=True, text=True).stdout
    return (commit or "unknown") + ("+dirty" if dirty.strip() else "")


def machine_name() -> str:
    """The CPU the rows train on: the benchmarks' CPU name, its /proc/cpuinfo family and model (bfloat16 gives a
    seed other numbers on some other CPUs; REPLICATED_ON) and the cores this process may use."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    family = f", /proc/cpuinfo family {fields['cpu family']} model {fields['model']}" if "cpu family" in fields else ""
    return f"{cpu_name()}{family}, {num_cores()} cores"


def device_name() -> str:
    """The accelerator the rows train on, as JAX names it (for example 'gpu NVIDIA H200')."""
    code = ("import jax; d = jax.devices()[0]; "
            "print(d.platform if d.device_kind == d.platform else f'{d.platform} {d.device_kind}')")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def encoder_flags(name: str) -> list[str]:
    """`--init-checkpoint` of a row that starts from another row's best encoder (ENCODER_FROM), else nothing."""
    if name not in ENCODER_FROM:
        return []
    source, epochs, samples = ENCODER_FROM[name]
    return ["--init-checkpoint", str(RESULTS / "runs" / budget_tag(epochs, samples) / source / "best_encoder")]


def run_row(name: str, epochs: int, samples_per_task: int, extra: list[str], device: str, log_to_file: bool,
            root: Path) -> bool:
    """Trains one row into <root>/<budget>/<name> (`root`: results/runs, or a replication's folder in it; a soup
    row: averages its finished ingredient rows there); True when it finished.

    run.json records the command, wall time, commit, device, machine (`machine_name`; both, when a stopped row
    resumes on another) and whether the row finished: a row stopped by Ctrl-C (exit code 130: a checkpoint is saved)
    has "finished": false, and the next call resumes it (a soup starts again)."""
    samples = round(samples_per_task * SAMPLES_FRACTION.get(name, 1.0))
    budget = ["--epochs", str(epochs), "--samples-per-task", str(samples), *ROW_POOL, *ROW_DTYPE, *extra]
    runs = root / budget_tag(epochs, samples_per_task)
    run_dir = runs / name
    previous = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    if previous.get("finished"):
        print(f"{name}: done already ({run_dir})", flush=True)
        return True
    if name in SOUPS:
        argv = [sys.executable, "-m", "train.soup", "--run-dir", str(run_dir), *(str(runs / n) for n in SOUPS[name])]
    else:
        argv = [sys.executable, "-m", "train.main", *budget, *ROWS[name][0], *encoder_flags(name), "--run-dir",
                str(run_dir), "--quiet"]
    resumed = name in ROWS and (run_dir / "config.json").exists()  # a row stopped before it finished continues
    if run_dir.exists() and not resumed:
        shutil.rmtree(run_dir)
    command = [sys.executable, "-m", "train.main", "--resume", str(run_dir), "--quiet"] if resumed else argv
    print(f"{name}: {' '.join(command[1:])}\n", end="", flush=True)  # one write: rows side by side print whole lines
    start, commit = time.time(), git_commit()  # the code the row starts with, whatever changes while it runs
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "train.log", "a") if log_to_file else open(sys.stdout.fileno(), "w", closefd=False) as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        RUNNING.add(process)
        try:
            returncode = process.wait()
        finally:
            RUNNING.discard(process)
    if returncode not in (0, 130):
        raise RuntimeError(f"{name}: {command[2]} exited with status {returncode}" +
                           (f" (log: {run_dir / 'train.log'})" if log_to_file else ""))
    wall_time = (previous.get("wall_time_s", 0) if resumed else 0) + time.time() - start
    machine = machine_name()
    if resumed and previous.get("machine", machine) != machine:
        machine = f"{previous['machine']}, then {machine}"
    info = {"argv": argv[1:], "wall_time_s": round(wall_time, 1), "commit": commit, "device": device,
            "machine": machine, "finished": returncode == 0}
    (run_dir / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"{name}: {'done' if returncode == 0 else 'stopped (the next call resumes it)'} after "
          f"{wall_time / 60:.1f} min", flush=True)
    return returncode == 0


def make_teachers(names: list[str], extra: list[str], jobs: int) -> bool:
    """Makes the teacher files the rows `names` need and lack: their teacher rows first (trained at their budget),
    then `python -m train.teach`. True when every file is there."""
    flags = [ROWS[name][0] for name in names if name in ROWS]
    wanted = {f[i + 1].partition("=")[2] for f in flags for i in range(len(f) - 1) if f[i] == "--teacher"}
    needed = sorted(path for path in wanted & TEACHER_FILES.keys() if not (REPO / path).exists())
    for path in needed:
        task, rows, epochs, samples = TEACHER_FILES[path]
        if not run_rows(rows, epochs, samples, extra, jobs, RESULTS / "runs"):
            return False
        runs = [str(RESULTS / "runs" / budget_tag(epochs, samples) / row) for row in rows]
        (REPO / path).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "train.teach", "--task", task, "--out", str(REPO / path), *runs],
                       cwd=REPO, check=True)
    return True


def run_rows(names: list[str], epochs: int, samples_per_task: int, extra: list[str], jobs: int,
             root: Path) -> bool:
    """Runs the rows into `root` (run_row), `jobs` at a time (logs in each run directory when more than one); True
    when all are done. Once a row is stopped (Ctrl-C reaches the rows, or this process, which passes it on) no new
    one starts."""
    device = device_name()
    stopping = threading.Event()

    def one(name: str) -> None:
        if not stopping.is_set() and not run_row(name, epochs, samples_per_task, extra, device, jobs > 1, root):
            stopping.set()

    with ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(one, name) for name in names]
        try:
            for future in futures:
                future.result()
        except KeyboardInterrupt:
            stopping.set()
            # Where the Ctrl-C came from a terminal the rows have it already; a second SIGINT changes nothing.
            for process in list(RUNNING):
                process.send_signal(signal.SIGINT)
            for future in futures:
                future.exception()
    return not stopping.is_set()


def epoch_records(run_dir: Path) -> list[dict]:
    """The run's metrics.jsonl, one record per finished epoch."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def best_dev(records: list[dict]) -> dict:
    """The dev scores of the epoch with the best overall score, of a run's epoch records."""
    return max(records, key=lambda r: r["dev"]["overall"])["dev"]


def budgets() -> list[str]:
    """The budgets with rows, trained here (results/runs/) or committed (results/<budget>/), smallest first."""
    tags = {d.name for folder in (RESULTS / "runs", RESULTS) for d in folder.glob("*x*")
            if d.is_dir() and re.fullmatch(r"\d+x\d+", d.name)}
    return sorted(tags, key=lambda tag: tuple(int(n) for n in tag.split("x")))


def row_records(tag: str, name: str) -> Path | None:
    """The folder holding a row's run.json, metrics.jsonl and predictions: its run directory where it was trained
    here, else its copy in results/<budget>/ (a fresh clone has no results/runs/); None for a row never run."""
    for folder in (RESULTS / "runs" / tag / name, RESULTS / tag / name):
        if (folder / "metrics.jsonl").exists() and (folder / "run.json").exists():
            return folder
    return None


def extra_flags(info: dict, name: str) -> list[str]:
    """The --extra flags a row ran with: in its run.json argv, those between the budget's and the row's own first
    flag (whose later flags may carry names that have changed since)."""
    argv, own = info.get("argv", []), ROWS.get(name, ([], {}))[0]
    if "--pool-batches" not in argv or not own:
        return []
    start = argv.index("--pool-batches") + 2
    if argv[start:start + len(ROW_DTYPE)] == ROW_DTYPE:  # rows run before ROW_DTYPE have none
        start += len(ROW_DTYPE)
    return argv[start:next((i for i in range(start, len(argv)) if argv[i] == own[0]), start)]


def _spread(values: list[float]) -> str:
    """mean [min-max] +- standard error (of the mean, from the sample standard deviation)."""
    error = np.std(values, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return f"{np.mean(values):.3f} [{min(values):.3f}-{max(values):.3f}] ±{error:.3f}"


def prefix_scores(tag: str, name: str) -> tuple[str, dict] | None:
    """A row's best dev scores over the first E epochs of its finished run at a longer budget with the same
    examples per task (E x N from E' x N), where the longer run's first E epochs are the shorter run: a constant
    learning rate without warmup, no teacher annealing, no annealed sampling, no early stopping (each depends on
    the run's length). The longer budget's tag and the scores; None where no such run is here. (The 3 x 10,000
    rows of paracross-cosine-scaled-lr5e-5-ema995 are bitwise the first 3 epochs of its 5 x 10,000 rows.)"""
    epochs, samples = (int(n) for n in tag.split("x"))
    for longer in budgets():
        longer_epochs, longer_samples = (int(n) for n in longer.split("x"))
        folder = row_records(longer, name)
        if longer_samples != samples or longer_epochs <= epochs or folder is None:
            continue
        config = json.loads((folder / "config.json").read_text())
        if (config.get("lr_schedule") != "constant" or config.get("warmup_steps") or config.get("warmup_ratio")
                or config.get("teacher_annealing") or config.get("sampling") == "annealed"
                or config.get("early_stopping_patience")):
            continue
        records = epoch_records(folder)[:epochs]
        if len(records) == epochs:
            return longer, best_dev(records)
    return None


def setup_table(scores: dict, finished: dict) -> list[str]:
    """The SETUPS table: per budget, each setup whose rows all finished there, or else whose rows at a longer
    budget hold that budget's run as their first epochs (`prefix_scores`): mean, range and standard error of the
    best-epoch dev scores; and the separate single-task models where their rows finished."""
    table = []
    for tag in budgets():
        for setup, names in SETUPS.items():
            if all(finished.get((tag, name)) for name in names):
                found, label = [scores[tag, name] for name in names], setup
            elif all(prefixes := [prefix_scores(tag, name) for name in names]):
                found = [dev for _, dev in prefixes]
                epochs = int(tag.split("x")[0])
                label = f"{setup}: the first {epochs} epoch{'s' * (epochs > 1)} of its {prefixes[0][0]} rows"
            else:
                continue
            cells = [_spread([dev[metric] for dev in found]) for metric in ("sst", "para", "sts", "overall")]
            table.append(f"| {tag} | {label} | {len(names)} | {' | '.join(cells)} |")
        for label, models in SEPARATE.items():
            if not all(finished.get((tag, name)) for names in models.values() for name in names):
                continue
            task_scores = {task: [scores[tag, name][task] for name in names] for task, names in models.items()}
            means = {task: float(np.mean(values)) for task, values in task_scores.items()}
            overall = (means["sst"] + means["para"] + (means["sts"] + 1) / 2) / 3
            cells = [_spread(task_scores[task]) if len(task_scores[task]) > 1 else f"{means[task]:.3f}"
                     for task in ("sst", "para", "sts")]
            table.append(f"| {tag} | {label} | {'/'.join(str(len(n)) for n in models.values())} | "
                         f"{' | '.join(cells)} | {overall:.3f} |")
    if not table:
        return []
    return ["", "## Setups: mean [range] ± standard error over seeds", "",
            "Each setup was fixed before its seeds ran; rows of the budget tables above. Dev split.", "",
            "| budget | setup | seeds | sentiment | paraphrase | STS corr | overall |", "|---|---|---|---|---|---|---|",
            *table]


def copy_records(run_dir: Path, target: Path, items: tuple[str, ...]) -> None:
    """Copies those of the files `items` that the run directory has into `target`, the row's committed folder."""
    target.mkdir(parents=True, exist_ok=True)
    for item in items:
        if (run_dir / item).exists():
            shutil.copyfile(run_dir / item, target / item)


def replication_folders() -> dict[tuple[str, str], Path]:
    """The rows rerun on another CPU, keyed by ("<cpu>/<budget>", row) as summarize() keys a budget's rows: their
    run directories where they trained here (results/runs/replications/<cpu>/<budget>/<row>/, `--replication`),
    else their copies in results/replications/<cpu>/<budget>/<row>/."""
    folders = {}
    for root in (RESULTS / "replications", RESULTS / "runs" / "replications"):  # a run directory replaces a copy
        for folder in sorted(root.glob("*/*x*/*")):
            if (folder / "metrics.jsonl").exists() and (folder / "run.json").exists():
                folders[f"{folder.parent.parent.name}/{folder.parent.name}", folder.name] = folder
    return folders


def commit_replications() -> None:
    """Copies the config.json, metrics.jsonl and run.json of each rerun trained here (`replication_folders`) to
    results/replications/<cpu>/<budget>/<row>/, where a fresh clone reads them."""
    for (key, name), folder in replication_folders().items():
        target = RESULTS / "replications" / key / name
        if folder != target:
            copy_records(folder, target, ("config.json", "metrics.jsonl", "run.json"))


def replication_scores() -> tuple[dict, dict]:
    """The rows rerun on another CPU (`replication_folders`): scores and finished, by the same keys."""
    scores, finished = {}, {}
    for key, folder in replication_folders().items():
        scores[key] = best_dev(epoch_records(folder))
        finished[key] = json.loads((folder / "run.json").read_text()).get("finished", True)
    return scores, finished


def rerun_label(base: str, rows: list[str]) -> str:
    """What a setup with rows in REPLICATED_ON is compared with: `base` rerun on their CPUs, naming the seeds (by
    position in `rows`) when only some of them trained elsewhere."""
    cpus = sorted({REPLICATED_ON[row] for row in rows if row in REPLICATED_ON})
    seeds = [str(i) for i, row in enumerate(rows, 1) if row in REPLICATED_ON]
    return f"{base}, rerun on {' and '.join(cpus)}" + ("" if len(seeds) == len(rows) else f" (seed {', '.join(seeds)})")


def paired_table(scores: dict, finished: dict) -> list[str]:
    """The PAIRED_WITH and PAIRED_ACROSS_BUDGETS table: where both sides' rows all finished, the mean and standard
    error of the per-seed differences (setup minus what it is compared with), and the overall difference of each
    seed. A setup with rows in REPLICATED_ON is also compared with its PAIRED_WITH rows, each of those rows rerun on
    the CPU its own row trained on (keys ("<cpu>/<budget>", row), `replication_scores`)."""
    comparisons = [(tag, setup, base, [((tag, ours), (tag, theirs))
                                       for ours, theirs in zip(SETUPS[setup], SETUPS[base])])
                   for tag in budgets() for setup, base in PAIRED_WITH.items()]
    comparisons += [(tag, setup, rerun_label(PAIRED_WITH[setup], SETUPS[setup]),
                     [((tag, ours), (f"{REPLICATED_ON[ours]}/{tag}" if ours in REPLICATED_ON else tag, theirs))
                      for ours, theirs in zip(SETUPS[setup], SETUPS[PAIRED_WITH[setup]])])
                    for tag in budgets() for setup in PAIRED_WITH
                    if any(row in REPLICATED_ON for row in SETUPS[setup])]
    comparisons += [(tag, setup, f"the same setup at {smaller}",
                     [((tag, row), (smaller, row)) for row in SETUPS[setup]])
                    for setup, tag, smaller in PAIRED_ACROSS_BUDGETS]
    table = []
    for tag, setup, base, pairs in comparisons:
        if not all(finished.get(key) for pair in pairs for key in pair):
            continue
        cells = []
        for metric in ("sst", "para", "sts", "overall"):
            diffs = [scores[ours][metric] - scores[theirs][metric] for ours, theirs in pairs]
            cells.append(f"{np.mean(diffs):+.3f} ±{np.std(diffs, ddof=1) / np.sqrt(len(diffs)):.3f}")
        each = " / ".join(f"{scores[ours]['overall'] - scores[theirs]['overall']:+.3f}" for ours, theirs in pairs)
        table.append(f"| {tag} | {setup} | {base} | {len(pairs)} | {' | '.join(cells)} | {each} |")
    if not table:
        return []
    return ["", "## Paired differences: mean ± standard error of the per-seed differences", "",
            "The same seed draws the same data order, so a setup is compared with another seed by seed. Dev split.", "",
            "| budget | setup | compared with | seeds | sentiment | paraphrase | STS corr | overall "
            "| overall, each seed |",
            "|---|---|---|---|---|---|---|---|---|", *table]


def summarize() -> None:
    """Writes results/README.md (a table per budget), rows.png, best/ and per-row copies in results/<budget>/<row>/."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [
        "# Results",
        "",
        "Default model all-MiniLM-L6-v2 (22.7M parameters), shipped data, dev split; one table per budget (epochs x",
        "examples drawn per task and epoch; baseline-6041 draws 0.6041 of that). Cells: this project, with the",
        "reference report's BERT-base numbers in parentheses; the scores are those of the row's best epoch, and",
        "`epochs` says how many of the budget's it trained. Each row's `command` reproduces it; its folder here holds",
        "its config.json, metrics.jsonl, run.json (the train.main flags, wall time, machine, commit) and predictions.",
        "",
        "How to read these numbers:",
        "- A row is one seed. A setup's figure is the mean and range over at least 3 seeds of a setup fixed before",
        "  those seeds ran; about 60 setups were compared on dev, so the best single rows are optimistic (on the",
        "  held-out half of the official dev split, scored outside the project, dev and held-out overall correlate",
        "  at 0.30 across 41 rows).",
        "- `best/predictions` holds the test predictions of one row named before it ran (named below the tables), the",
        "  first finished of (the final recipe's default seed, then those of the earlier final recipes):",
        *(f"  - {name} at {tag}" for name, tag in BEST_ROWS),
        "- Wall times depend on the machine and on what shared its cores (run.json).",
    ]
    scores, finished = {}, {}
    for tag in budgets():
        epochs, samples = tag.split("x")
        table = []
        for name in [*ROWS, *SOUPS]:
            run_dir = row_records(tag, name)
            if run_dir is None:
                continue
            info, reference = json.loads((run_dir / "run.json").read_text()), ROWS[name][1] if name in ROWS else {}
            records = epoch_records(run_dir)
            dev = scores[tag, name] = best_dev(records)
            finished[tag, name] = info.get("finished", True)  # run.json of older rows was written when they finished
            done = len(records)
            cells = [f"{dev[t]:.3f} ({reference[t]:.3f})" if t in dev and t in reference
                     else (f"{dev[t]:.3f}" if t in dev else "") for t in ("sst", "para", "sts")]
            if "cfimdb" in dev:
                cells[0] = f"CFIMDB {dev['cfimdb']:.3f} ({reference['cfimdb']:.3f})"
            overall = f"{dev['overall']:.3f}" if name in MULTITASK else ""
            trained = (f"soup of {len(SOUPS[name])} rows" if name in SOUPS else
                       f"{done}" if finished[tag, name] else f"{done} of {epochs}, stopped")
            command = f"`python results/reproduce.py --rows {name} --epochs {epochs} --samples-per-task {samples}" + (
                f" --extra {' '.join(extra)}`" if (extra := extra_flags(info, name)) else "`")
            table.append(f"| {name} | {' | '.join(cells)} | {overall} | {reference.get('overall', '')} | {trained} | "
                         f"{info['wall_time_s'] / 60:.1f} min | {info.get('device', 'cpu')} | {info['commit']} | "
                         f"{command} |")
            target = RESULTS / tag / name
            if run_dir != target:
                copy_records(run_dir, target, ("config.json", "metrics.jsonl", "run.json", "curves.png"))
                shutil.copytree(predictions_dir(run_dir), predictions_dir(target), dirs_exist_ok=True)
        if table:  # a budget whose rows have no finished epoch yet gets no table
            lines += ["", f"## {epochs} epoch(s) x {samples} examples per task", "",
                      "| row | sentiment | paraphrase | STS corr | overall | reference overall | epochs | wall time "
                      "| device | commit | command |", "|---|---|---|---|---|---|---|---|---|---|---|", *table]
    lines += setup_table(scores, finished)
    commit_replications()
    rerun_scores, rerun_finished = replication_scores()
    lines += paired_table({**scores, **rerun_scores}, {**finished, **rerun_finished})
    lines += ["", "![rows](rows.png)", ""]
    multitask = [key for key in scores if key[1] in MULTITASK]
    chosen = [(tag, name) for name, tag in BEST_ROWS if finished.get((tag, name))]
    if chosen:
        tag, name = chosen[0]
        run_dir = row_records(tag, name)
        shutil.copytree(predictions_dir(run_dir), predictions_dir(RESULTS / "best"), dirs_exist_ok=True)
        shutil.copyfile(run_dir / "curves.png", RESULTS / "best" / "curves.png")
        lines += [f"`best/` holds {name} at {tag} (overall {scores[tag, name]['overall']:.3f}).", ""]
    if multitask:
        tags = [t for t in budgets() if any(key[0] == t for key in multitask)]
        names_by_tag = {tag: [name for t, name in multitask if t == tag] for tag in tags}
        # Horizontal bars, names down the side: panels grow with their rows and long row names stay readable.
        heights = [0.8 + 0.32 * len(names_by_tag[tag]) for tag in tags]
        fig_height = sum(heights) + 0.6  # inches: the panels, then room for the legend above them
        fig, axes = plt.subplots(len(tags), 1, figsize=(9, fig_height), squeeze=False,
                                 gridspec_kw={"height_ratios": heights})
        width = 0.2
        for ax, tag in zip(axes[:, 0], tags):
            names = names_by_tag[tag]
            for i, metric in enumerate(("sst", "para", "sts", "overall")):
                values = [scores[tag, n].get(metric, 0.0) for n in names]  # a row may leave out a task
                ax.barh([j + i * width for j in range(len(names))], values, width, label=metric)
            ax.set_yticks([j + 1.5 * width for j in range(len(names))], names, fontsize=7)
            ax.set(title=f"dev metrics per row, budget {tag}", xlim=(0, 1), ylim=(len(names) - 0.1, -0.3))
            ax.grid(axis="x", alpha=0.3)
        fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="upper center", ncol=4, fontsize=8)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig_height))
        fig.savefig(RESULTS / "rows.png", dpi=100)
        plt.close(fig)
    (RESULTS / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = [*ROWS, *SOUPS]
    parser.add_argument("--rows", nargs="+", default=names, metavar="ROW",
                        help="rows to run, named as in results/rows.py's ROWS and SOUPS (default: all); a soup row "
                             "runs its ingredient rows first")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--samples-per-task", type=int, default=2000)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="flags passed to every row")
    parser.add_argument("--jobs", type=int, default=1, help="rows trained at once (for a GPU; default 1)")
    parser.add_argument("--summarize-only", action="store_true")
    parser.add_argument("--replication", metavar="CPU",
                        help="the rows are reruns on another CPU, named CPU (for example xeon207): trained in "
                             "results/runs/replications/CPU/ and summarised into results/replications/CPU/")
    args = parser.parse_args(argv)
    for name in args.rows:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=3, cutoff=0.8)
            parser.error(f"--rows {name!r}: no such row in results/rows.py (ROWS, SOUPS)"
                         + (f"; did you mean {' or '.join(map(repr, close))}?" if close else ""))
    own = {option for action in parser._actions for option in action.option_strings} - {"-h", "--help"}
    for flag in args.extra:
        if flag.split("=")[0] in own:
            parser.error(f"--extra ... {flag}: an option of reproduce.py, not of train.main; put it before --extra "
                         "(everything after --extra goes to each row's train.main)")
    if args.replication is not None and not re.fullmatch(r"[a-z0-9][a-z0-9-]*", args.replication):
        parser.error(f"--replication {args.replication!r}: a folder name of lowercase letters, digits and '-'")
    root = RESULTS / "runs" if args.replication is None else RESULTS / "runs" / "replications" / args.replication
    soups = [name for name in args.rows if name in SOUPS]
    trained = list(dict.fromkeys([*(name for name in args.rows if name in ROWS),
                                  *(n for s in soups for n in SOUPS[s])]))
    # Rows whose encoder another row starts from, at their own budgets, then the rows, then the soups.
    sources = sorted({ENCODER_FROM[name] for name in trained if name in ENCODER_FROM})
    stages = [*(([source], epochs, samples, RESULTS / "runs") for source, epochs, samples in sources),
              (trained, args.epochs, args.samples_per_task, root), (soups, args.epochs, args.samples_per_task, root)]
    if not args.summarize_only and not (make_teachers(trained, args.extra, args.jobs) and all(
            run_rows(names, epochs, samples, args.extra, args.jobs, where)
            for names, epochs, samples, where in stages)):
        print("stopped: the same command resumes the unfinished rows")
        return 130
    summarize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
