"""TFDS builders for the registry's tasks, prepared once as array_record files.

TensorFlow is not needed: the builders are prepared with `file_format="array_record"`
and read back with `builder.as_data_source()` (never `as_dataset` or `tfds.load`).

Prepared data lives in `<data_dir>/src_<digest>/<task>/<version>/`, where `<digest>`
starts the SHA256 of the task's declaration and source files: a changed file or
declaration lands in a new folder and is prepared anew; a stale folder is left in
place and may be deleted.

Record features: `index` (position of the row among the file's good rows, since
TFDS stores records in hashed order), `id`, `text` (and `text_pair` for pair
tasks), and `label`. Unlabeled splits hold `label == NO_LABEL` (-1; NaN for
scores, whose range may hold -1) and `load_split` returns `labels=None` for them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data.tasks import DataError, Rows, TaskSpec, read_rows, registry

__all__ = [
    "DEFAULT_DATA_DIR",
    "NO_LABEL",
    "source_digest",
    "task_spec",
    "get_builder",
    "load_split",
    "quiet_preparation",
]

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / ".cache" / "tfds"
NO_LABEL = -1
_TEXT_FEATURES = ("text", "text_pair")
_quiet = False  # set by quiet_preparation


def _sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def task_spec(task: TaskSpec | str, source_dir: str | Path | None) -> TaskSpec:
    """The task's declaration, with its files looked up in `source_dir` when given."""
    spec = registry()[task] if isinstance(task, str) else task
    return spec.with_base(Path(source_dir)) if source_dir is not None else spec


def source_digest(task: TaskSpec | str, source_dir: str | Path | None = None) -> str:
    """SHA256 over a task's declaration (what is read, and how) and the names and contents of its files."""
    spec = task_spec(task, source_dir)
    declaration = {k: v for k, v in dataclasses.asdict(spec).items() if k not in ("files", "source")}
    listing = json.dumps(declaration, sort_keys=True, default=str) + "\n" + "".join(
        f"{split} {path.name} {_sha256(path)}\n" for split, path in sorted(spec.files.items()))
    return hashlib.sha256(listing.encode()).hexdigest()


class _LocalDatasetInfo(tfds.core.DatasetInfo):
    """The DatasetInfo of a task prepared from local files only."""

    def initialize_from_bucket(self) -> None:
        """Nothing to fetch: TFDS looks for a public dataset's metadata in its bucket before preparing a
        dataset, and leaves an empty temporary folder behind each time (tempfile.mkdtemp(suffix="tfds"))."""


class _TaskBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Builder of one task from its declared files; with `quiet_preparation`, silent while it prepares them."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {"2.0.0": "Any declared task; text and text_pair features.",
                     "1.0.0": "CS224N CSV files, malformed rows skipped."}
    # TFDS derives this from the package through the `importlib_resources` backport,
    # which is not installed (and not needed on Python >= 3.9).
    code_path = epath.Path(__file__)

    def __init__(self, spec: TaskSpec, data_dir: str | Path | None = None):
        self.spec = spec
        self.source_sha256 = source_digest(spec)
        root = Path(data_dir or DEFAULT_DATA_DIR) / f"src_{self.source_sha256[:16]}"
        super().__init__(data_dir=str(root), file_format="array_record")

    def _info(self) -> tfds.core.DatasetInfo:
        return _LocalDatasetInfo(
            builder=self,
            description=(f"Task {self.spec.name} ({self.spec.kind}) declared in {self.spec.source} (sources sha256 "
                         f"{self.source_sha256}); label {NO_LABEL} means no label."),
            features=tfds.features.FeaturesDict(
                {
                    "index": tfds.features.Scalar(np.int64),
                    "id": tfds.features.Text(),
                    **{name: tfds.features.Text() for name in _TEXT_FEATURES[: len(self.spec.text_columns)]},
                    "label": tfds.features.Scalar(self.spec.label_dtype),
                }
            ),
        )

    def _log_download_bytes(self) -> None:
        # TFDS prints "Downloading and preparing dataset Unknown size ..." here, although nothing is downloaded.
        if not _quiet:
            super()._log_download_bytes()

    def _log_download_done(self) -> None:
        if not _quiet:
            super()._log_download_done()

    def _split_generators(self, dl_manager):
        # Every file is read (and validated) before anything is written.
        rows = {split: read_rows(path, self.spec, labeled=None if split == "test" else True)
                for split, path in self.spec.files.items()}
        return {split: self._generate_examples(split_rows) for split, split_rows in rows.items()}

    def _generate_examples(self, rows: Rows):
        for i, row_id in enumerate(rows.ids):
            yield i, {
                "index": i,
                "id": row_id,
                **{name: texts[i] for name, texts in zip(_TEXT_FEATURES, rows.sentences)},
                "label": _no_label(self.spec) if rows.labels is None else rows.labels[i],
            }


def _no_label(spec: TaskSpec) -> float:
    return np.nan if spec.is_regression else NO_LABEL


def _builder_class(name: str) -> type[_TaskBuilder]:
    """A builder class named after the task (TFDS names a builder's folder by its class)."""
    return type(name, (_TaskBuilder,), {"name": name, "__module__": __name__}, skip_registration=True)


@contextlib.contextmanager
def _exclusive_lock(path: Path):
    """Holds an exclusive lock on the file `path` (created if missing) across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # released when the file closes
        yield


def get_builder(task: TaskSpec | str, data_dir: str | Path | None = None,
                source_dir: str | Path | None = None) -> _TaskBuilder:
    """The task's builder (a registry name or a TaskSpec; `source_dir`: look its files up there), prepared under
    `data_dir` (default <repo>/.cache/tfds) if not yet there.

    Processes started together on a fresh `data_dir` (rows trained side by side) prepare a task one at a
    time: the first writes it, the others wait and reuse it. Unlocked, each would write its own copy and all
    but the first would fail to rename theirs into place.
    """
    spec = task_spec(task, source_dir)
    with _exclusive_lock(Path(data_dir or DEFAULT_DATA_DIR) / f"{spec.name}.lock"):
        builder = _builder_class(spec.name)(spec, data_dir)
        builder.download_and_prepare()
    return builder


def load_split(task: TaskSpec | str, split: str, data_dir: str | Path | None = None,
               source_dir: str | Path | None = None) -> Rows:
    """The good rows of one split in file order, read from the prepared TFDS data (`labels` None for a split
    without labels)."""
    spec = task_spec(task, source_dir)
    if split not in spec.files:
        raise KeyError(f"{spec.name} has no split {split!r}; splits: {', '.join(spec.files)}")
    source = get_builder(spec, data_dir).as_data_source(split)
    records = sorted(source.__getitems__(range(len(source))), key=lambda r: r["index"])
    texts = tuple([r[name].decode("utf-8") for r in records] for name in _TEXT_FEATURES[: len(spec.text_columns)])
    ids = [r["id"].decode("utf-8") for r in records]
    labels = np.asarray([r["label"] for r in records], dtype=spec.label_dtype)
    unlabeled = len(labels) and np.array_equal(labels[:1], [_no_label(spec)], equal_nan=True)
    return Rows(ids, texts, None if unlabeled else labels)


def quiet_preparation() -> None:
    """Silences the preparation of task data on first use, process-wide: TFDS's progress bars and its lines
    before and after."""
    global _quiet
    _quiet = True
    tfds.disable_progress_bar()
