"""TFDS builders for the task families, prepared once as array_record files.

TensorFlow is not needed: the builders are prepared with `file_format="array_record"`
and read back with `builder.as_data_source()` (never `as_dataset` or `tfds.load`).

Prepared data lives in `<data_dir>/src_<digest>/<builder name>/<version>/`, where
`<digest>` starts the SHA256 of the family's source files: a changed file lands in
a new folder and is prepared anew; a stale folder is left in place and may be
deleted.

Record features: `index` (position of the row among the file's good rows, since
TFDS stores records in hashed order), `id`, the text column(s) (`sentence`, or
`sentence1` and `sentence2`), and `label`. Test splits have no labels: their
records hold `label == NO_LABEL` (-1) and `load_split` returns `labels=None`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data.tasks import FAMILIES, DataError, Rows, TaskFamily, read_rows

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_SOURCE_DIR",
    "NO_LABEL",
    "BUILDERS",
    "source_digest",
    "get_builder",
    "load_split",
    "disable_progress_bars",
]

DEFAULT_SOURCE_DIR = Path(__file__).resolve().parent / "cs224n"
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / ".cache" / "tfds"
NO_LABEL = -1


def _sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def source_digest(family: TaskFamily | str, source_dir: str | Path | None = None) -> str:
    """SHA256 over the names and contents of a family's source files."""
    family = FAMILIES[family] if isinstance(family, str) else family
    source_dir = Path(source_dir or DEFAULT_SOURCE_DIR)
    listing = "".join(f"{split} {name} {_sha256(source_dir / name)}\n" for split, name in sorted(family.files.items()))
    return hashlib.sha256(listing.encode()).hexdigest()


class _TaskBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Builder of one task family from the CSV files in `source_dir`."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "CS224N CSV files, malformed rows skipped."}
    # TFDS derives this from the package through the `importlib_resources` backport,
    # which is not installed (and not needed on Python >= 3.9).
    code_path = epath.Path(__file__)
    family: TaskFamily

    def __init__(self, *, source_dir: str | Path | None = None, data_dir: str | Path | None = None):
        self.source_dir = Path(source_dir or DEFAULT_SOURCE_DIR).resolve()
        self.source_sha256 = source_digest(self.family, self.source_dir)
        root = Path(data_dir or DEFAULT_DATA_DIR) / f"src_{self.source_sha256[:16]}"
        super().__init__(data_dir=str(root), file_format="array_record")

    def _info(self) -> tfds.core.DatasetInfo:
        label_dtype = np.int32 if self.family.num_classes is not None else np.float32
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                f"CS224N {self.family.name} task from {self.source_dir} (sources sha256 {self.source_sha256}); "
                f"label {NO_LABEL} means no label (test split)."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "index": tfds.features.Scalar(np.int64),
                    "id": tfds.features.Text(),
                    **{column: tfds.features.Text() for column in self.family.text_columns},
                    "label": tfds.features.Scalar(label_dtype),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        # Every file is read (and validated) before anything is written.
        rows = {
            split: read_rows(self.source_dir / name, self.family, labeled=split != "test")
            for split, name in self.family.files.items()
        }
        return {split: self._generate_examples(split_rows) for split, split_rows in rows.items()}

    def _generate_examples(self, rows: Rows):
        for i, row_id in enumerate(rows.ids):
            yield i, {
                "index": i,
                "id": row_id,
                **{column: texts[i] for column, texts in zip(self.family.text_columns, rows.sentences)},
                "label": NO_LABEL if rows.labels is None else rows.labels[i],
            }


class Cs224nSst(_TaskBuilder, skip_registration=True):
    """SST-5 sentiment: sentence, label 0-4."""

    family = FAMILIES["sst"]


class Cs224nQuora(_TaskBuilder, skip_registration=True):
    """Quora question pairs: sentence1, sentence2, label 0/1 (duplicate)."""

    family = FAMILIES["quora"]


class Cs224nSts(_TaskBuilder, skip_registration=True):
    """STS Benchmark: sentence1, sentence2, similarity 0.0-5.0."""

    family = FAMILIES["sts"]


class Cs224nCfimdb(_TaskBuilder, skip_registration=True):
    """CFIMDB movie reviews: sentence, label 0/1; train and dev only."""

    family = FAMILIES["cfimdb"]


BUILDERS: dict[str, type[_TaskBuilder]] = {b.family.name: b for b in (Cs224nSst, Cs224nQuora, Cs224nSts, Cs224nCfimdb)}


@contextlib.contextmanager
def _exclusive_lock(path: Path):
    """Holds an exclusive lock on the file `path` (created if missing) across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # released when the file closes
        yield


def get_builder(task: str, data_dir: str | Path | None = None, source_dir: str | Path | None = None) -> _TaskBuilder:
    """The task's builder, prepared under `data_dir` (default <repo>/.cache/tfds) if not yet there.

    Processes started together on a fresh `data_dir` (rows trained side by side) prepare a task one at a
    time: the first writes it, the others wait and reuse it. Unlocked, each would write its own copy and all
    but the first would fail to rename theirs into place.
    """
    if task not in BUILDERS:
        raise KeyError(f"unknown task {task!r}; tasks: {', '.join(BUILDERS)}")
    with _exclusive_lock(Path(data_dir or DEFAULT_DATA_DIR) / f"{task}.lock"):
        builder = BUILDERS[task](source_dir=source_dir, data_dir=data_dir)
        builder.download_and_prepare()
    return builder


def load_split(
    task: str, split: str, data_dir: str | Path | None = None, source_dir: str | Path | None = None
) -> Rows:
    """The good rows of one split in file order, read from the prepared TFDS data.

    `labels` is None for the test split (no labels in the file).
    """
    family = FAMILIES[task]
    if split not in family.files:
        raise KeyError(f"{task} has no split {split!r}; splits: {', '.join(family.files)}")
    source = get_builder(task, data_dir, source_dir).as_data_source(split)
    records = sorted(source.__getitems__(range(len(source))), key=lambda r: r["index"])
    texts = tuple([r[column].decode("utf-8") for r in records] for column in family.text_columns)
    ids = [r["id"].decode("utf-8") for r in records]
    labels = None if split == "test" else np.asarray([r["label"] for r in records], dtype=family.label_dtype)
    return Rows(ids, texts, labels)


def disable_progress_bars() -> None:
    """Turns off the progress bars TFDS draws while it prepares task data on first use (process-wide)."""
    tfds.disable_progress_bar()
