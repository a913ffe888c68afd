"""What a new user sees before training starts: the preparation of task data silent with --quiet, and a warning
when --max-length cuts many training sentences."""

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

from data import tfds_builders
from data.tasks import read_rows
from train import main
from train import run as train_run
from train.config import TrainConfig
from train.run import Run


def test_quiet_preparation_prints_nothing_and_leaves_no_temporary_folder(small_data, tmp_path, monkeypatch, capfd):
    """Preparing a task's data into a fresh folder: without quiet_preparation TFDS prints "Downloading and
    preparing dataset Unknown size ..." (nothing is downloaded); with it, nothing. Neither leaves an empty
    tmp*tfds folder in the system temporary directory (TFDS's look-up of a public dataset's metadata did)."""
    system_temp = tmp_path / "system-temp"
    system_temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_temp))
    monkeypatch.setattr(tfds_builders, "_quiet", False)
    tfds_builders.get_builder("sts", tmp_path / "loud", source_dir=small_data)
    assert "Downloading and preparing dataset" in capfd.readouterr().out
    tfds_builders.quiet_preparation()
    tfds_builders.get_builder("sts", tmp_path / "quiet", source_dir=small_data)
    out, err = capfd.readouterr()
    assert "Downloading and preparing" not in out and "downloaded and prepared" not in out
    assert "Generating" not in err and "Shuffling" not in err
    assert not list(system_temp.iterdir())


def untruncated_share(run: Run, task: str, max_length: int) -> float:
    """The share of the task's training sequences longer than max_length, from the project tokenizer without
    truncation: the sentences, or for a cross-encoded pair task the pairs."""
    spec = run.config.spec(task)
    columns = read_rows(spec.files["train"], spec, labeled=True).sentences
    pairs = spec.is_pair and run.config.sequence_mode(task) == "cross"
    encoded = [run.tokenizer.encode(*columns, max_length=10**6)[0]] if pairs else \
        [run.tokenizer.encode(texts, max_length=10**6)[0] for texts in columns]
    return float(np.mean([len(ids) > max_length for sequences in encoded for ids in sequences]))


def test_max_length_cutting_many_training_sentences_is_warned(tiny_encoder, small_data, tmp_path, capsys,
                                                             monkeypatch):
    config = TrainConfig(init_checkpoint=str(tiny_encoder), data_dir=str(small_data), max_length=16,
                         pair_encoding="bi,sts=cross")
    run = Run(config, tiny_encoder)
    shares = {task: untruncated_share(run, task, 16) for task in config.tasks}
    assert all(share > 0.05 for share in shares.values()) and shares["sst"] < 1
    assert run.length_warnings() == [f"--max-length 16 cuts {shares['sst']:.0%} of sst's training sentences",
                                     f"--max-length 16 cuts {shares['para']:.0%} of para's training sentences",
                                     f"--max-length 16 cuts {shares['sts']:.0%} of sts's training pairs"]
    assert [data.cut_share() for data in run.data.values()] == pytest.approx(list(shares.values()))
    # A max length that cuts 5% or less: no warning.
    roomy = Run(TrainConfig(init_checkpoint=str(tiny_encoder), data_dir=str(small_data), max_length=128,
                            tasks=("sst",)), tiny_encoder)
    assert untruncated_share(roomy, "sst", 128) <= 0.05 and roomy.length_warnings() == []
    # The training command says it, in one line on stderr, before it trains.
    monkeypatch.setattr(train_run, "native_bfloat16", lambda: False)
    argv = ["--tasks", "sst", "--init-checkpoint", str(tiny_encoder), "--data-dir", str(small_data), "--max-length",
            "16", "--epochs", "1", "--samples-per-task", "8", "--batch-size", "8", "--num-buckets", "1",
            "--run-dir", str(tmp_path / "run"), "--quiet"]
    assert main.main(argv) == 0
    out, err = capsys.readouterr()
    assert f"warning: --max-length 16 cuts {shares['sst']:.0%} of sst's training sentences\n" in err
    assert "computing in float32 (--dtype auto); parameters and optimizer state in float32\n" in out  # its dtype


@pytest.mark.parametrize("native", [True, False], ids=["bf16-cpu", "other"])
def test_dtype_auto_is_bfloat16_where_the_cpu_has_it_and_float32_stays_exact(tiny_encoder, small_data, tmp_path,
                                                                             capsys, monkeypatch, native):
    """The command line's --dtype auto (its default) computes in bfloat16 on a CPU with bfloat16 instructions and
    says so; the run's config.json holds the dtype it computed in (so --resume keeps it); --dtype float32 is
    float32 everywhere."""
    monkeypatch.setattr(train_run, "native_bfloat16", lambda: native)
    argv = _argv(tiny_encoder, small_data, "--eval-max-examples", "8")
    assert main.main([*argv, "--run-dir", str(tmp_path / "auto")]) == 0
    want = "bfloat16" if native else "float32"
    how = "--dtype auto: this CPU has bfloat16 instructions; --dtype float32 for exact float32" if native \
        else "--dtype auto"
    assert f"computing in {want} ({how}); parameters and optimizer state in float32\n" in capsys.readouterr().out
    assert json.loads((tmp_path / "auto" / "config.json").read_text())["dtype"] == want
    assert main.main([*argv, "--run-dir", str(tmp_path / "exact"), "--dtype", "float32"]) == 0
    assert "computing in float32 (--dtype); parameters" in capsys.readouterr().out
    assert json.loads((tmp_path / "exact" / "config.json").read_text())["dtype"] == "float32"


@pytest.mark.parametrize("cpuinfo, native", [
    ("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n", True),  # AMD EPYC (Zen 4)
    ("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_tile amx_int8\n", True),  # Sapphire Rapids
    ("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n", False),  # AVX-512, no bf16
    ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", True),  # Arm Neoverse V1
    ("processor\t: 0\nFeatures\t: fp asimd evtstrm crc32\n", False),
    (None, False),  # no /proc/cpuinfo (not Linux)
], ids=["avx512_bf16", "amx_bf16", "avx512", "arm-bf16", "arm", "none"])
def test_native_bfloat16_reads_the_cpu_flags(tmp_path, cpuinfo, native):
    path = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        path.write_text(cpuinfo)
    assert train_run.native_bfloat16(path) is native


def _argv(tiny_encoder, small_data, *extra) -> list[str]:
    return ["--tasks", "sts", "--epochs", "1", "--samples-per-task", "8", "--batch-size", "8", "--max-length", "32",
            "--init-checkpoint", str(tiny_encoder), "--data-dir", str(small_data), "--quiet", *extra]


@pytest.mark.parametrize("case", ["missing checkpoint", "bad data dir", "run dir under a file"])
def test_a_failed_start_is_one_line_and_leaves_no_run_directory(tiny_encoder, small_data, tmp_path, capsys, case):
    """The corrected command then just works: nothing was created that it would refuse."""
    run_dir = {"run dir under a file": tmp_path / "README.md" / "run"}.get(case, tmp_path / "run")
    (tmp_path / "README.md").write_text("a file")
    extra = {"missing checkpoint": ["--init-checkpoint", str(tmp_path / "nope")],
             "bad data dir": ["--data-dir", str(tmp_path / "empty")]}.get(case, [])
    assert main.main(_argv(tiny_encoder, small_data, *extra, "--run-dir", str(run_dir))) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "run").exists()
    if case != "run dir under a file":
        assert main.main(_argv(tiny_encoder, small_data, "--run-dir", str(run_dir))) == 0


def test_a_hugging_face_directory_is_an_init_checkpoint(minilm_torch_dir, tmp_path, monkeypatch, capsys):
    """--init-checkpoint takes a Hugging Face BERT directory: converted once (into .cache/converted), then reused."""
    from train.run import ensure_init_checkpoint

    monkeypatch.chdir(tmp_path)
    converted = ensure_init_checkpoint(str(minilm_torch_dir))
    assert (converted / "params").is_dir() and converted.parent == Path(".cache/converted")
    assert "converted" in capsys.readouterr().out
    assert ensure_init_checkpoint(str(minilm_torch_dir)) == converted and not capsys.readouterr().out
