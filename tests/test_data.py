"""Vendored task data, the row reader, the TFDS builders and the input pipeline."""

import hashlib
import itertools
import json
import multiprocessing
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from data import (
    NO_LABEL,
    DataError,
    MalformedRowWarning,
    MultiTaskStream,
    TaskData,
    choose_buckets,
    default_tokenizer,
    encode_split,
    get_builder,
    length_sorted_batches,
    load_split,
    prefetch_to_device,
    read_rows,
    registry,
)
from data import input_pipeline
from data.input_pipeline import DEFAULT_NUM_BUCKETS
from data.tasks import BUILTIN_TASK_FILE
from bert_flax.tokenizer import Tokenizer
from tests.helpers import REPO, devices_env


DEFAULT_SOURCE_DIR = BUILTIN_TASK_FILE.parent
FAMILIES = registry()


def _readme_rows() -> dict[str, int]:
    """File -> row count from the table in data/cs224n/README.md."""
    table = re.findall(r"^\| (\S+\.csv) \| ([\d,]+) \|", (DEFAULT_SOURCE_DIR / "README.md").read_text(), re.M)
    return {name: int(rows.replace(",", "")) for name, rows in table}


def _read(path, family, **kwargs):
    """read_rows, returning (rows or the DataError, messages of the warnings raised)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = read_rows(path, family, **kwargs)
        except DataError as e:
            result = e
    return result, [str(w.message) for w in caught if issubclass(w.category, MalformedRowWarning)]


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    """The real data prepared once into a fresh folder."""
    path = tmp_path_factory.mktemp("tfds")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MalformedRowWarning)
        for task in FAMILIES:
            get_builder(task, path)
    return path


@pytest.fixture(scope="session")
def loaded_splits(tfds_dir):
    """Every split of every task through load_split, read once."""
    return {
        (task, split): load_split(task, split, data_dir=tfds_dir)
        for task, family in FAMILIES.items()
        for split in family.files
    }


@pytest.fixture(scope="session")
def task_data(tfds_dir):
    """TaskData(task, mode) with default settings, built once per (task, mode)."""
    cache = {}

    def get(task, mode=None):
        if (task, mode) not in cache:
            cache[task, mode] = TaskData(task, mode=mode, data_dir=tfds_dir)
        return cache[task, mode]

    return get


@pytest.fixture(scope="session")
def default_stream(task_data):
    """The default three-task stream: sst, and para and sts in cross mode."""
    return MultiTaskStream([task_data("sst"), task_data("para"), task_data("sts")], seed=3)


# ---------------------------------------------------------------- vendored files


def test_vendored_files_match_checksums():
    listed = {}
    for line in (DEFAULT_SOURCE_DIR / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        listed[name] = digest
    csvs = sorted(p.name for p in DEFAULT_SOURCE_DIR.glob("*.csv"))
    assert sorted(listed) == csvs
    for name, digest in listed.items():
        assert hashlib.sha256((DEFAULT_SOURCE_DIR / name).read_bytes()).hexdigest() == digest, name


def test_row_counts_match_readme(loaded_splits):
    expected = _readme_rows()
    files = {path.name: (task, split) for task, f in FAMILIES.items() for split, path in f.files.items()}
    assert sorted(expected) == sorted(files)
    for name, rows in expected.items():
        lines = (DEFAULT_SOURCE_DIR / name).read_text(encoding="utf-8").count("\n")
        assert lines - 1 == rows, name
        loaded, messages = _read(DEFAULT_SOURCE_DIR / name, files[name][0])
        skipped = 2 if name == "quora-dev.csv" else 0
        assert len(loaded) == rows - skipped, name
        assert len(loaded_splits[files[name]]) == rows - skipped, name
        assert len(messages) == (skipped + 1 if skipped else 0), messages
    _, messages = _read(DEFAULT_SOURCE_DIR / "quora-dev.csv", "para")
    assert "line 1267 (id ad118c967d683c93883bf072d): empty label" in messages[0]
    assert "line 7083 (id 9054345d02cd6c5642a4904dc): empty sentence2" in messages[1]
    assert "skipped 2 malformed row(s) of 10102; 10100 loaded" in messages[2]


@pytest.mark.parametrize("task", sorted(FAMILIES))
def test_tfds_splits_equal_the_reader(tfds_dir, loaded_splits, task):
    family = FAMILIES[task]
    for split, name in family.files.items():
        direct, _ = _read(DEFAULT_SOURCE_DIR / name, family)
        loaded = loaded_splits[task, split]
        assert loaded.ids == direct.ids
        assert loaded.sentences == direct.sentences
        if split == "test":
            assert loaded.labels is None and direct.labels is None
        else:
            assert loaded.labels.dtype == family.label_dtype
            np.testing.assert_array_equal(loaded.labels, direct.labels)
    source = get_builder(task, tfds_dir).as_data_source("train")
    assert source[0]["label"] != NO_LABEL
    if "test" in family.files:
        label = get_builder(task, tfds_dir).as_data_source("test")[0]["label"]
        assert np.isnan(label) if family.is_regression else label == NO_LABEL


# ---------------------------------------------------------------- reader errors

SST_HEADER = "\tid\tsentence\tsentiment\n"


def test_malformed_rows_are_skipped_with_a_warning_each(tmp_path):
    lines = [
        "0\tg1\tA fine film .\t3",  # line 2: good
        "1\tb1\tNo label here .\t",  # 3
        "2\tb2\tToo many\tfields\t1",  # 4
        "3\tb3\t \t2",  # 5: empty sentence
        '4\tb4\t"never closed\t2',  # 6
        "5\tb5\tOut of range .\t5",  # 7
        "6\tb6\tNot a number .\tnan",  # 8
        "7\tb7\tHalf a class .\t2.5",  # 9
        '8\tg2\t"quoted\ttab and ""quotes"""\t4.0',  # 10: good
        "",  # 11: blank line
        "9\t\tNo id .\t1",  # 12
        "10\tg3\tLast one .\t0",  # 13: good
    ]
    path = tmp_path / "sst.csv"
    path.write_text(SST_HEADER + "\n".join(lines) + "\n", encoding="utf-8")
    rows, messages = _read(path, "sst")
    assert rows.ids == ["g1", "g2", "g3"]
    assert rows.sentences == (["A fine film .", 'quoted\ttab and "quotes"', "Last one ."],)
    np.testing.assert_array_equal(rows.labels, [3, 4, 0])
    expected = [
        "line 3 (id b1): empty label",
        "line 4 (id b2): 5 fields, expected 4",
        "line 5 (id b3): empty sentence",
        "line 6: bad quoting",
        "line 7 (id b5): label '5' outside [0, 4]",
        "line 8 (id b6): label 'nan' is not a number",
        "line 9 (id b7): label '2.5' is not an integer class",
        "line 11: blank line",
        "line 12: empty id",
        "skipped 9 malformed row(s) of 12; 3 loaded",
    ]
    assert len(messages) == len(expected)
    for message, fragment in zip(messages, expected):
        assert message.startswith(str(path)) and fragment in message, (message, fragment)


def test_pair_and_score_rows(tmp_path):
    path = tmp_path / "sts.csv"
    path.write_text(
        "\tid\tsentence1\tsentence2\tsimilarity\r\n"
        "0\ta\tOne .\tTwo .\t4.2\r\n"
        "1\tb\tOne .\t\t1.0\r\n"
        "2\tc\tThree .\tFour .\t5.01\r\n"
        "3\td\tFive .\tSix .\t0\r\n",
        encoding="utf-8",
    )
    rows, messages = _read(path, "sts")
    assert rows.ids == ["a", "d"] and rows.sentences == (["One .", "Five ."], ["Two .", "Six ."])
    assert rows.labels.dtype == np.float32 and rows.labels.tolist() == [np.float32(4.2), 0.0]
    assert "line 3 (id b): empty sentence2" in messages[0] and "outside [0.0, 5.0]" in messages[1]


def test_unlabeled_file_loads_without_labels(tmp_path):
    path = tmp_path / "quora-test.csv"
    path.write_text("\tid\tsentence1\tsentence2\n0\tx\tA?\tB?\n", encoding="utf-8")
    rows, messages = _read(path, "para")
    assert rows.labels is None and rows.ids == ["x"] and not messages
    error, _ = _read(path, "para", labeled=True)
    assert isinstance(error, DataError) and "line 1: no column 'is_duplicate' (the label of task para" in str(error)


@pytest.mark.parametrize(
    "content, fragment",
    [
        (None, "file not found"),
        (b"", "empty file"),
        (SST_HEADER.encode(), "no rows to load"),
        (SST_HEADER.encode() + b"0\ta\tgood .\t1\n1\tb\tbad \xff byte\t2\n", "line 3: not valid UTF-8"),
        (b"\tid\ttext\tsentiment\n0\ta\tx\t1\n", "line 1: no column 'sentence' (the text of task sst"),
        (b"\n" + SST_HEADER.encode(), "blank header line"),
        (SST_HEADER.encode() + b"0\ta\t\t1\n", "no rows to load"),
    ],
    ids=["missing", "empty", "header-only", "non-utf8", "wrong-column", "blank-header", "all-bad"],
)
def test_unusable_files_raise_data_error(tmp_path, content, fragment):
    path = tmp_path / "ids-sst-train.csv"
    if content is not None:
        path.write_bytes(content)
    error, _ = _read(path, "sst")
    assert isinstance(error, DataError) and isinstance(error, ValueError)
    assert str(path) in str(error) and fragment in str(error), str(error)


def test_columns_are_found_by_name_and_others_ignored(tmp_path):
    path = tmp_path / "sst.csv"
    path.write_text("sentiment\tmore\tsentence\tid\n1\tx\tA film .\ta\n", encoding="utf-8")
    rows, messages = _read(path, "sst")
    assert rows.ids == ["a"] and rows.sentences == (["A film ."],) and rows.labels.tolist() == [1] and not messages


def test_directory_instead_of_file_raises_data_error(tmp_path):
    error, _ = _read(tmp_path, "sst")
    assert isinstance(error, DataError) and str(tmp_path) in str(error)


# ---------------------------------------------------------------- TFDS preparation


def _write_sst_sources(folder: Path, dev_sentence: str = "Dev one .") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ids-sst-train.csv").write_text(SST_HEADER + "0\tt1\tTrain one .\t1\n1\tt2\tTrain two .\t4\n")
    (folder / "ids-sst-dev.csv").write_text(SST_HEADER + f"0\td1\t{dev_sentence}\t2\n")
    (folder / "ids-sst-test.csv").write_text("\tid\tsentence\n0\tx1\tTest one .\n")
    return folder


def test_changed_source_is_prepared_again(tmp_path):
    sources, cache = _write_sst_sources(tmp_path / "src"), tmp_path / "cache"
    first = get_builder("sst", cache, sources)
    info = Path(first.data_dir) / "dataset_info.json"
    stamp = info.stat().st_mtime_ns
    assert load_split("sst", "dev", cache, sources).sentences == (["Dev one ."],)
    assert load_split("sst", "test", cache, sources).labels is None

    assert get_builder("sst", cache, sources).data_dir == first.data_dir
    assert info.stat().st_mtime_ns == stamp  # reused, not prepared again

    _write_sst_sources(sources, dev_sentence="Dev one , edited .")
    second = get_builder("sst", cache, sources)
    assert second.data_dir != first.data_dir
    assert load_split("sst", "dev", cache, sources).sentences == (["Dev one , edited ."],)


def _prepare_after_barrier(barrier, task, cache, sources):
    barrier.wait()
    get_builder(task, cache, sources)


def test_processes_preparing_one_fresh_folder_at_once_all_succeed(tmp_path):
    sources, cache = _write_sst_sources(tmp_path / "src"), tmp_path / "cache"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    workers = [context.Process(target=_prepare_after_barrier, args=(barrier, "sst", cache, sources)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]
    assert load_split("sst", "dev", cache, sources).sentences == (["Dev one ."],)


def test_broken_source_fails_preparation_with_data_error(tmp_path):
    sources = _write_sst_sources(tmp_path / "src")
    (sources / "ids-sst-dev.csv").write_text("\tid\tsentence\n0\td1\tno label column\n")
    with pytest.raises(DataError, match=r"ids-sst-dev\.csv: line 1: no column 'sentiment'"):
        get_builder("sst", tmp_path / "cache", sources)
    (sources / "ids-sst-test.csv").unlink()
    with pytest.raises(DataError, match=r"ids-sst-test\.csv: file not found"):
        load_split("sst", "train", tmp_path / "cache", sources)


def test_token_cache_is_reused_and_keyed_by_max_length(tmp_path, monkeypatch):
    sources, cache = _write_sst_sources(tmp_path / "src"), tmp_path / "cache"
    cache_dir = Path(get_builder("sst", cache, sources).data_dir) / "tokenized"
    cache_dir.mkdir()
    # Files of earlier formats (named without a format tag, or with another one) are removed on the next write.
    for stale in ("train-0123456789abcdef.npz", "dev-0123456789abcdef.npz", "test-v2-0123456789abcdef.npz"):
        (cache_dir / stale).write_bytes(b"")
    full = encode_split("sst", "train", data_dir=cache, source_dir=sources)
    files = sorted(cache_dir.glob("*.npz"))
    assert len(files) == 1 and files[0].name.startswith("train-v3-")

    def refuse(*args, **kwargs):
        raise AssertionError("tokenized or read from TFDS again despite the cache")

    rows = {split: load_split("sst", split, cache, sources) for split in ("train", "test")}
    test = encode_split("sst", "test", data_dir=cache, source_dir=sources)
    monkeypatch.setattr(Tokenizer, "encode", refuse)
    monkeypatch.setattr(input_pipeline, "load_split", refuse)
    again = encode_split("sst", "train", data_dir=cache, source_dir=sources)
    np.testing.assert_array_equal(again.input_ids, full.input_ids)
    assert again.ids == full.ids == rows["train"].ids == ["t1", "t2"]
    assert again.labels.dtype == rows["train"].labels.dtype and again.labels.tolist() == [1, 4]
    test_again = encode_split("sst", "test", data_dir=cache, source_dir=sources)
    assert test_again.ids == test.ids == rows["test"].ids == ["x1"] and test_again.labels is None
    monkeypatch.undo()

    short = encode_split("sst", "train", data_dir=cache, source_dir=sources, max_length=4)
    assert len(list(files[0].parent.glob("train-*.npz"))) == 2
    assert short.lengths.max() == 4 and full.lengths[0, :2].tolist() == [5, 5]
    np.testing.assert_array_equal(short.input_ids[0, :2, 3], [102, 102])  # [SEP] after truncation


# ---------------------------------------------------------------- buckets


def test_choose_buckets_is_optimal_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        lengths = rng.integers(2, 40, size=rng.integers(1, 60))
        num_buckets = int(rng.integers(1, 5))
        buckets = choose_buckets(lengths, max_length=32, num_buckets=num_buckets)
        capped = np.minimum(lengths, 32)

        def cost(b):
            b = np.asarray(b)
            return b[np.searchsorted(b, capped)].sum()

        candidates = sorted(set(capped.tolist()) - {32})
        best = min(
            cost(sorted(c) + [32])
            for r in range(min(num_buckets - 1, len(candidates)) + 1)
            for c in itertools.combinations(candidates, r)
        )
        assert buckets[-1] == 32 and len(buckets) <= num_buckets and np.all(np.diff(buckets) > 0)
        assert cost(buckets) == best


# ---------------------------------------------------------------- batches


def _assert_batch_is_consistent(batch, task, rows, length):
    """Shapes, dtypes, and contents against the encoded training split for the given rows."""
    encoded, b = task.train, task.batch_size
    sequences = 2 if task.mode == "bi" else 1
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert batch[key].dtype == np.int32 and batch[key].shape == (sequences * b, length)
    assert batch["weights"].dtype == np.float32 and batch["weights"].shape == (b,)
    np.testing.assert_array_equal(batch["weights"], rows >= 0)
    assert batch["labels"].dtype == FAMILIES[task.name].label_dtype
    np.testing.assert_array_equal(batch["labels"], np.where(rows >= 0, encoded.labels[rows], 0))
    for s in range(sequences):
        half = slice(s * b, (s + 1) * b)
        np.testing.assert_array_equal(batch["attention_mask"][half].sum(1), encoded.lengths[s, rows])
        np.testing.assert_array_equal(batch["input_ids"][half], encoded.input_ids[s, rows, :length])
        np.testing.assert_array_equal(batch["token_type_ids"][half], encoded.token_type_ids[s, rows, :length])
    assert np.all(batch["input_ids"][batch["attention_mask"] == 0] == 0)  # [PAD]


def test_stream_batches_match_their_plan(task_data):
    tasks = [task_data("sst"), task_data("para", "bi"), task_data("sts")]
    stream = MultiTaskStream(tasks, seed=1)
    plan = stream.plan(0)
    for task_plan in plan.values():  # batch order is shuffled, not length-sorted
        assert task_plan.lengths[:64] != sorted(task_plan.lengths[:64])
    for step, batches in enumerate(itertools.islice(stream.epoch(0), 5)):
        assert set(batches) == {"sst", "para", "sts"}
        for task in tasks:
            _assert_batch_is_consistent(batches[task.name], task, plan[task.name].rows[step],
                                        plan[task.name].lengths[step])
    quora = next(iter(stream.epoch(0)))["para"]
    assert quora["input_ids"].shape[0] == 64 and quora["labels"].shape == (32,)
    assert np.all(quora["input_ids"][:, 0] == 101) and np.all(quora["token_type_ids"] == 0)


def test_same_seed_same_batches_and_epochs_differ(task_data):
    def first_steps(seed, epoch, n=3):
        stream = MultiTaskStream([task_data("sst"), task_data("sts")], seed=seed)
        return list(itertools.islice(stream.epoch(epoch), n))

    def same(a, b):
        return all(
            np.array_equal(x[t][k], y[t][k]) for x, y in zip(a, b) for t in x for k in x[t]
        )

    assert same(first_steps(5, 0), first_steps(5, 0))
    assert not same(first_steps(5, 0), first_steps(5, 1))
    assert not same(first_steps(5, 0), first_steps(6, 0))


def test_resample_draws_with_replacement(task_data):
    sst = task_data("sst")
    stream = MultiTaskStream([sst], num_examples=2 * len(sst.train), seed=0)
    rows = np.concatenate(stream.plan(0)["sst"].rows)
    rows = rows[rows >= 0]
    assert len(rows) == 2 * len(sst.train)
    assert len(np.unique(rows)) < 0.95 * len(sst.train)  # with replacement: ~86% distinct
    assert np.bincount(rows).max() >= 4


def test_min_strategy_cuts_every_task_to_the_smallest_without_replacement(task_data):
    tasks = [task_data("sst"), task_data("para"), task_data("sts")]
    stream = MultiTaskStream(tasks, strategy="min", seed=0)
    assert stream.examples_per_task(0) == {"sst": 6040, "para": 6040, "sts": 6040}
    for name, plan in stream.plan(0).items():
        rows = np.concatenate(plan.rows)
        rows = rows[rows >= 0]
        assert len(rows) == 6040 and len(np.unique(rows)) == 6040, name
    assert stream.steps_per_epoch(0) == 189 and stream.stats(0)["tasks"]["sts"]["padding_batches"] == 0


def test_proportional_and_annealed_sizes_and_padding_batches(task_data):
    tasks = [task_data("sst"), task_data("para"), task_data("sts")]
    sizes = np.array([8544, 13507, 6040])
    proportional = MultiTaskStream(tasks, strategy="proportional", num_examples=10_000)
    counts = proportional.examples_per_task(0)
    assert sum(counts.values()) == 30_000
    np.testing.assert_allclose(list(counts.values()), 30_000 * sizes / sizes.sum(), atol=1)

    annealed = MultiTaskStream(tasks, strategy="annealed", num_examples=10_000, num_epochs=5)
    assert annealed.examples_per_task(0) == counts
    for epoch, alpha in [(2, 0.6), (4, 0.2), (9, 0.2)]:
        assert annealed.annealing_alpha(epoch) == pytest.approx(alpha)
        got = annealed.examples_per_task(epoch)
        assert sum(got.values()) == 30_000
        np.testing.assert_allclose(list(got.values()), 30_000 * sizes**alpha / (sizes**alpha).sum(), atol=1)

    # quora has the most examples; sts runs out first and then yields all-padding batches.
    steps = proportional.steps_per_epoch(0)
    assert steps == -(-counts["para"] // 32)
    sts_batches = len(proportional.plan(0)["sts"].rows)
    assert sts_batches == -(-counts["sts"] // 32) < steps
    rows = np.concatenate(proportional.plan(0)["sts"].rows)
    assert np.bincount(rows[rows >= 0]).min() >= 1  # whole passes over sts before repeating
    last = list(proportional.epoch(0, start_step=steps - 1))
    assert len(last) == 1
    padding = last[0]["sts"]
    assert padding["weights"].sum() == 0 and padding["input_ids"].shape == (32, task_data("sts").buckets[0])
    assert np.all(padding["attention_mask"].sum(1) == 2)  # [CLS] [SEP]
    assert last[0]["para"]["weights"].sum() > 0


def test_last_partial_batch_is_padded(default_stream):
    plan = default_stream.plan(0)
    for name, task_plan in plan.items():
        real = [int((rows >= 0).sum()) for rows in task_plan.rows]
        assert len(real) == 313 and sorted(real)[0] == 10_000 - 312 * 32 and sorted(real)[1] == 32, name


def test_resuming_at_a_step_equals_the_uninterrupted_epoch(default_stream):
    full = list(default_stream.epoch(2))
    assert len(full) == default_stream.steps_per_epoch(2) == 313
    for start in (1, 100, 312, 313):
        resumed = list(default_stream.epoch(2, start_step=start))
        assert len(resumed) == len(full) - start
        for a, b in zip(resumed, full[start:]):
            for task in a:
                for key in a[task]:
                    np.testing.assert_array_equal(a[task][key], b[task][key])
    with pytest.raises(ValueError):
        next(default_stream.epoch(2, start_step=314))


def test_padding_ratio_and_shapes_on_the_real_data(task_data, default_stream):
    """Defaults (B=32, max_length=128, all-MiniLM vocab, 20 buckets, pools of 256 batches): <= 1.15 tokens
    fed per real token for each task in cross mode, and over the three tasks with bi-encoded pairs."""
    for epoch in (0, 1):
        stats = default_stream.stats(epoch)["tasks"]
        for name in ("sst", "para", "sts"):
            assert stats[name]["padding_ratio"] <= 1.15, (name, stats[name])
            assert (stats[name]["num_shapes"] <= DEFAULT_NUM_BUCKETS
                    and len(stats[name]["shapes"]) <= DEFAULT_NUM_BUCKETS)
            assert stats[name]["examples"] == 10_000
    cfimdb = MultiTaskStream([task_data("cfimdb")]).stats(0)["tasks"]["cfimdb"]
    assert cfimdb["padding_ratio"] <= 1.15 and cfimdb["num_shapes"] <= DEFAULT_NUM_BUCKETS
    bi_stream = MultiTaskStream([task_data("sst"), task_data("para", "bi"), task_data("sts", "bi")], seed=3)
    bi = bi_stream.stats(0)["tasks"].values()
    assert sum(t["fed_tokens"] for t in bi) / sum(t["real_tokens"] for t in bi) <= 1.15


@pytest.mark.parametrize("task", ["para", "sts"])
def test_bi_mode_padding_is_bounded_by_the_pair_length_mismatch(task_data, task):
    """In bi mode a and b share one length, so a pair costs 2 * max(len a, len b) tokens even
    unbucketed; bucketing and padding rows may add at most 15% on top of that floor."""
    data = task_data(task, "bi")
    stream = MultiTaskStream([data])
    stats = stream.stats(0)["tasks"][task]
    rows = np.concatenate(stream.plan(0)[task].rows)
    rows = rows[rows >= 0]
    floor = 2 * data.train.key_lengths[rows].sum() / data.train.lengths[:, rows].sum()
    assert stats["num_shapes"] <= DEFAULT_NUM_BUCKETS
    assert stats["padding_ratio"] <= 1.15 * floor, (stats["padding_ratio"], floor)


@pytest.mark.parametrize("task, mode, split, sentences", [
    ("sst", None, "dev", False), ("sst", None, "test", False), ("sts", "bi", "dev", False), ("sts", "bi", "dev", True),
])
def test_eval_batches_cover_the_split_once(task_data, task, mode, split, sentences):
    data = task_data(task, mode)
    encoded = data.split(split).sentences() if sentences else data.split(split)
    batches = list(length_sorted_batches(encoded, data.buckets, data.batch_size))
    index = np.concatenate([b["index"] for b in batches])
    assert sorted(index[index >= 0]) == list(range(len(encoded)))
    padding = len(batches) * data.batch_size - len(encoded)
    assert 0 <= padding < data.batch_size and np.sum(index == -1) == padding
    # The partial batch comes first and holds the shortest rows: its padding is fed at the shortest length.
    assert np.all(batches[0]["index"][data.batch_size - padding :] == -1)
    assert [b["input_ids"].shape[1] for b in batches] == sorted(b["input_ids"].shape[1] for b in batches)
    assert len(encoded.ids) == len(encoded)
    for b in batches:
        assert b["input_ids"].shape[1] in data.buckets and b["index"].dtype == np.int32
        assert b["input_ids"].shape[1] >= encoded.key_lengths[b["index"][b["index"] >= 0]].max()
        np.testing.assert_array_equal(b["weights"], b["index"] >= 0)
        assert ("labels" in b) == (split != "test" and not sentences)
        if "labels" in b:
            real = b["index"] >= 0
            np.testing.assert_array_equal(b["labels"][real], encoded.labels[b["index"][real]])


def test_sentences_of_a_bi_split_are_its_a_then_b_sentences(task_data):
    """Row i of `sentences()` is sentence a of pair i and row n + i its sentence b, with the
    tokens, types and length of the pair batch; index -1 is still the padding row."""
    pairs = task_data("sts", "bi").split("dev")
    sentences, n = pairs.sentences(), len(pairs)
    assert len(sentences) == 2 * n and sentences.mode == "single" and sentences.labels is None
    rows = np.array([0, n - 1])
    for half in (0, 1):
        for name in ("input_ids", "token_type_ids", "lengths"):
            np.testing.assert_array_equal(getattr(sentences, name)[0, half * n + rows],
                                          getattr(pairs, name)[half, rows])
    np.testing.assert_array_equal(sentences.input_ids[0, -1], pairs.input_ids[0, -1])
    np.testing.assert_array_equal(sentences.key_lengths, pairs.lengths[:, :-1].reshape(-1))
    assert task_data("sst").split("dev").sentences() is task_data("sst").split("dev")


def test_swapped_pairs_double_the_cross_training_split(tfds_dir, task_data):
    """With swap_pairs, training row n + i is pair i tokenized as [CLS] b [SEP] a [SEP], with pair i's
    label; the dev split and the buckets stay those of the plain cross task."""
    plain = task_data("sts", "cross")
    swapped = TaskData("sts", mode="cross", data_dir=tfds_dir, swap_pairs=True)
    n = len(plain.train)
    assert len(swapped.train) == 2 * n and swapped.train.ids == plain.train.ids * 2
    np.testing.assert_array_equal(swapped.train.labels, np.concatenate([plain.train.labels, plain.train.labels]))
    for name in ("input_ids", "token_type_ids", "lengths"):
        np.testing.assert_array_equal(getattr(swapped.train, name)[:, :n], getattr(plain.train, name)[:, :n])
    rows = load_split("sts", "train", data_dir=tfds_dir)
    tokenizer = default_tokenizer()
    for i in (0, 7, n - 1):
        a, b = rows.sentences[0][i], rows.sentences[1][i]
        (ids,), (types,) = tokenizer.encode([b], [a], max_length=plain.max_length)
        length = swapped.train.lengths[0, n + i]
        assert length == len(ids) and list(swapped.train.input_ids[0, n + i, :length]) == list(ids)
        assert list(swapped.train.token_type_ids[0, n + i, :length]) == list(types)
        assert list(ids) != list(plain.train.input_ids[0, i, :length])  # the order matters
    np.testing.assert_array_equal(swapped.train.input_ids[0, -1], plain.train.input_ids[0, -1])  # padding row
    np.testing.assert_array_equal(swapped.buckets, plain.buckets)
    np.testing.assert_array_equal(swapped.split("dev").input_ids, plain.split("dev").input_ids)
    with pytest.raises(ValueError, match="swapped pairs exist in cross mode only"):
        TaskData("sts", mode="bi", data_dir=tfds_dir, swap_pairs=True)


# ---------------------------------------------------------------- devices


def test_prefetch_yields_the_batches_in_order_and_reraises():
    batches = [{"x": np.full((4, 3), i, dtype=np.int32)} for i in range(5)]
    got = [np.asarray(b["x"]) for b in prefetch_to_device(iter(batches))]
    assert [int(g[0, 0]) for g in got] == list(range(5))

    def failing():
        yield batches[0]
        raise RuntimeError("producer broke")

    consumer = prefetch_to_device(failing())
    next(consumer)
    with pytest.raises(RuntimeError, match="producer broke"):
        next(consumer)

    endless = prefetch_to_device(itertools.repeat(batches[0]))
    next(endless)
    endless.close()  # returns only once the producer thread has stopped


_TWO_DEVICE_SCRIPT = """
import json, sys, warnings
import jax, numpy as np
from data import MultiTaskStream, TaskData, prefetch_to_device, shard_batch
data_dir = sys.argv[1]
tasks = [TaskData("sst", data_dir=data_dir), TaskData("para", mode="bi", data_dir=data_dir)]
stream = MultiTaskStream(tasks, seed=0)
host = next(iter(stream.epoch(0)))
placed = next(prefetch_to_device(stream.epoch(0)))
out = {"devices": len(jax.devices())}
for task in host:
    for key, value in placed[task].items():
        np.testing.assert_array_equal(np.asarray(value), host[task][key])
        out[f"{task}/{key}"] = sorted((s.device.id, s.data.shape[0], s.index[0].start or 0)
                                      for s in value.addressable_shards)
try:
    shard_batch({"x": np.zeros((3, 2))})
except ValueError as e:
    out["error"] = str(e)
print(json.dumps(out))
"""


def test_batches_are_split_across_two_devices(tfds_dir, task_data):
    task_data("sst"), task_data("para", "bi")  # prepared and tokenized here, reused by the child
    result = subprocess.run(
        [sys.executable, "-c", _TWO_DEVICE_SCRIPT, str(tfds_dir)],
        cwd=REPO, env=devices_env(2), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["devices"] == 2
    assert out["sst/input_ids"] == [[0, 16, 0], [1, 16, 16]]
    assert out["sst/labels"] == [[0, 16, 0], [1, 16, 16]]
    assert out["para/input_ids"] == [[0, 32, 0], [1, 32, 32]]  # device 0: rows a, device 1: rows b
    assert out["para/weights"] == [[0, 16, 0], [1, 16, 16]]
    assert "3 rows do not split over 2 devices" in out["error"] and "['x']" in out["error"]


def test_reading_task_files_does_not_import_jax_or_tfds():
    """`data.tasks` (what results/sst_errors.py reads labels with) loads without the input pipeline's imports, and
    every name `data` exports is listed by dir() and resolves to its submodule's object."""
    code = ("import sys, data.tasks\n"
            "assert not {'jax', 'tensorflow_datasets'} & set(sys.modules), 'imported with data.tasks'\n"
            "import data, importlib\n"
            "assert set(data.__all__) <= set(dir(data)), 'dir(data) lacks exported names'\n"
            "for name in data.__all__:\n"
            "    assert getattr(data, name) is getattr(importlib.import_module('data.' + data._SOURCES[name]), name)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
