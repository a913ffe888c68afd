"""The task registry: every task declared in a TOML file, and one validating reader for their data files.

A task is data, not code. `data/cs224n/tasks.toml` declares the built-in tasks (sst, para, sts, cfimdb); a
user's own file declares more in the same schema, and `registry(task_files)` gives them all by name:

    [tasks.mysts]
    kind = "pair-regression"       # classification | pair-classification | pair-regression
    train = "path/train.tsv"       # relative to the TOML file
    dev = "path/dev.tsv"
    test = "path/test.tsv"         # optional; its label column may be absent
    format = "tsv"                 # tsv | csv | jsonl; default from the extension
    id = "id"                      # optional: the row number when absent
    text = "sentence1"
    text_pair = "sentence2"        # pair kinds only
    label = "similarity"
    num_classes = 5                # classification kinds: labels are 0..K-1
    label_range = [0, 5]           # pair-regression
    metric = "pearson"             # accuracy | f1 | pearson | spearman

Optional keys beyond that schema: `prediction_header` (the prediction file's column, default
Predicted_<Label>), `class_names`, `binary_threshold` (pair-regression: the label above which the binary
training target is 1; default the middle of label_range) and `in_overall` (the task counts in the overall
score; the built-in tasks only).

A malformed row is skipped with a `MalformedRowWarning` naming the file, line, row id and reason; a
declaration or a file that cannot be used at all raises `DataError` naming the file and the key or column.
This module needs only NumPy and the standard library.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import re
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "BUILTIN_TASK_FILE",
    "DataError",
    "MalformedRowWarning",
    "TaskSpec",
    "Rows",
    "KINDS",
    "METRICS",
    "load_task_file",
    "registry",
    "read_rows",
]

BUILTIN_TASK_FILE = Path(__file__).resolve().parent / "cs224n" / "tasks.toml"
KINDS = ("classification", "pair-classification", "pair-regression")
METRICS = ("accuracy", "f1", "pearson", "spearman")
FORMATS = {"tsv": "\t", "csv": ",", "jsonl": None}
# A field may hold a whole document (CFIMDB reviews); csv's default cap is 128 KiB.
csv.field_size_limit(2**31 - 1)
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_RESERVED = ("overall",)


class DataError(ValueError):
    """A task declaration or data file that cannot be used, with a message naming the file and key or line."""


class MalformedRowWarning(UserWarning):
    """A row skipped by `read_rows`, or the per-file count of skipped rows."""


@dataclass(frozen=True)
class TaskSpec:
    """One declared task: its files, columns, label kind, head kind, metric and prediction header.

    `files` maps each split (train, dev, and test where declared) to its path. `label_range` is inclusive;
    for the classification kinds it is (0, num_classes - 1) and labels must be integral (`3` or `3.0`).
    """

    name: str
    kind: str
    files: dict[str, Path]
    format: str
    id_column: str | None
    text_columns: tuple[str, ...]
    label_column: str
    num_classes: int | None
    label_range: tuple[float, float]
    metric: str
    prediction_header: str
    class_names: tuple[str, ...] | None = None
    binary_threshold: float | None = None
    in_overall: bool = False
    source: Path = field(default=BUILTIN_TASK_FILE, compare=False)

    @property
    def is_pair(self) -> bool:
        """True for sentence-pair tasks."""
        return self.kind != "classification"

    @property
    def is_regression(self) -> bool:
        return self.kind == "pair-regression"

    @property
    def output_size(self) -> int:
        """Outputs of the task's head: K class logits, or one logit (two-class pairs) or score."""
        return self.num_classes if self.num_classes and not (self.is_pair and self.num_classes == 2) else 1

    @property
    def has_class_logits(self) -> bool:
        """True where the head gives K >= 2 class logits (cross-entropy, label smoothing, R-Drop apply)."""
        return self.output_size > 1

    @property
    def label_dtype(self) -> type:
        """numpy dtype of the labels: int32 for classes, float32 for scores."""
        return np.float32 if self.is_regression else np.int32

    @property
    def threshold(self) -> float:
        """The label above which a pair-regression task's binary target is 1."""
        low, high = self.label_range
        return (low + high) / 2 if self.binary_threshold is None else self.binary_threshold

    def with_base(self, base: Path) -> TaskSpec:
        """The same task with its files looked up in `base` (same file names): a copy of its data elsewhere."""
        return dataclasses.replace(self, files={split: Path(base) / path.name for split, path in self.files.items()})


_KEYS = {"kind", "train", "dev", "test", "format", "id", "text", "text_pair", "label", "num_classes", "label_range",
         "metric", "prediction_header", "class_names", "binary_threshold", "in_overall"}


def _declared(path: Path, name: str, table) -> TaskSpec:
    where = f"{path}: [tasks.{name}]"

    def fail(message: str):
        raise DataError(f"{where}: {message}")

    def get(key: str, kind: type | tuple, required: bool = True, default=None):
        if key not in table:
            if required:
                fail(f"missing key {key!r}")
            return default
        value = table[key]
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            fail(f"{key} = {value!r}: expected {getattr(kind, '__name__', 'a number')}")
        return value

    if not isinstance(table, dict):
        fail("must be a table")
    if not _NAME.fullmatch(name) or name in _RESERVED:
        fail("a task name is lower-case letters, digits and _, starting with a letter, and not 'overall'")
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        fail(f"unknown key {unknown[0]!r}; keys: {', '.join(sorted(_KEYS))}")
    kind = get("kind", str)
    if kind not in KINDS:
        fail(f"kind = {kind!r}: choose from {', '.join(KINDS)}")
    files = {split: path.parent / get(split, str) for split in ("train", "dev", "test")
             if split in table or split != "test"}
    suffix = files["train"].suffix.lstrip(".")
    fmt = get("format", str, required=False, default=suffix if suffix in FORMATS else None)
    if fmt not in FORMATS:
        fail(f"format = {fmt!r}: choose from {', '.join(FORMATS)} (or name the train file .tsv, .csv or .jsonl)")
    pair = kind != "classification"
    if pair != ("text_pair" in table):
        fail("text_pair is needed by the pair kinds and only by them" if pair else
             "text_pair: a classification task reads one text column")
    text_columns = (get("text", str), *((get("text_pair", str),) if pair else ()))
    regression = kind == "pair-regression"
    num_classes = get("num_classes", int, required=not regression)
    if regression and num_classes is not None:
        fail("num_classes: a pair-regression task has a label_range instead")
    if num_classes is not None and num_classes < 2:
        fail(f"num_classes = {num_classes}: needs 2 or more")
    if regression:
        label_range = get("label_range", list)
        if len(label_range) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                            for v in label_range) or not label_range[0] < label_range[1]:
            fail(f"label_range = {label_range!r}: expected [low, high] with low < high")
        label_range = (float(label_range[0]), float(label_range[1]))
    else:
        if "label_range" in table:
            fail("label_range: a classification kind has labels 0..num_classes - 1")
        label_range = (0, num_classes - 1)
    metric = get("metric", str, required=False, default="pearson" if regression else "accuracy")
    allowed = ("pearson", "spearman") if regression else ("accuracy", "f1")
    if metric not in allowed:
        fail(f"metric = {metric!r}: a {kind} task is scored by {' or '.join(allowed)}")
    label = get("label", str)
    class_names = get("class_names", list, required=False)
    if class_names is not None and (regression or len(class_names) != num_classes):
        fail("class_names: one name per class of a classification kind")
    threshold = get("binary_threshold", (int, float), required=False)
    if threshold is not None and not regression:
        fail("binary_threshold: for pair-regression tasks only")
    return TaskSpec(
        name=name, kind=kind, files=files, format=fmt, id_column=get("id", str, required=False),
        text_columns=text_columns, label_column=label, num_classes=num_classes, label_range=label_range,
        metric=metric,
        prediction_header=get("prediction_header", str, required=False,
                              default="Predicted_" + "_".join(w.capitalize() for w in re.split(r"[\W_]+", label) if w)),
        class_names=tuple(map(str, class_names)) if class_names else None,
        binary_threshold=None if threshold is None else float(threshold),
        in_overall=get("in_overall", bool, required=False, default=False), source=path,
    )


def load_task_file(path: str | Path) -> dict[str, TaskSpec]:
    """The tasks declared in a TOML file (paths inside relative to it), validated; DataError naming the file and
    key otherwise."""
    path = Path(path).resolve()
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: task file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read ({getattr(err, 'strerror', None) or err})") from None
    except tomllib.TOMLDecodeError as err:
        raise DataError(f"{path}: not valid TOML ({err})") from None
    tasks = document.get("tasks")
    if set(document) != {"tasks"} or not isinstance(tasks, dict) or not tasks:
        raise DataError(f"{path}: expected one or more [tasks.NAME] tables and nothing else")
    return {name: _declared(path, name, table) for name, table in tasks.items()}


@functools.lru_cache(maxsize=None)
def registry(task_files: tuple[str, ...] = (), data_dir: str | None = None) -> dict[str, TaskSpec]:
    """Every task by name: the built-in ones (their files looked up in `data_dir` when given), then those of
    `task_files` in order. A name declared twice is refused, naming both files."""
    tasks = load_task_file(BUILTIN_TASK_FILE)
    if data_dir is not None:
        tasks = {name: spec.with_base(Path(data_dir)) for name, spec in tasks.items()}
    for task_file in task_files:
        for name, spec in load_task_file(task_file).items():
            if name in tasks:
                raise DataError(f"{spec.source}: [tasks.{name}]: the name is taken by a task of {tasks[name].source}")
            tasks[name] = spec
    return tasks


@dataclass(frozen=True)
class Rows:
    """The good rows of one file, as columns in file order.

    `sentences` holds one list per text column; `labels` is None for a file without a label column.
    """

    ids: list[str]
    sentences: tuple[list[str], ...]
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(self.ids)


# ASCII digits only: float() would also take "1_0", "١" or "nan".
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


class _BadRow(Exception):
    pass


def _parse_label(value, spec: TaskSpec) -> float:
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        raise _BadRow(f"label {value!r} is not a number")
    text = str(value).strip()
    if not text:
        raise _BadRow("empty label")
    if not _NUMBER.fullmatch(text):
        raise _BadRow(f"label {text!r} is not a number")
    number = float(text)
    low, high = spec.label_range
    if not (math.isfinite(number) and low <= number <= high):
        raise _BadRow(f"label {text!r} outside [{low}, {high}]")
    if not spec.is_regression and number != int(number):
        raise _BadRow(f"label {text!r} is not an integer class")
    return number


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: not valid UTF-8 "
                        f"(byte {raw[e.start]:#04x} at offset {e.start})") from None


def _header_and_records(lines: list[str], spec: TaskSpec, path: Path):
    """The header's columns (None for jsonl) and an iterator of (line number, {column: value}, problem or None)
    per data line. Each line is parsed on its own, so a broken quote can never swallow the following rows."""
    if spec.format == "jsonl":
        def json_records():
            for line_no, line in enumerate(lines, start=1):
                try:
                    record = json.loads(line) if line.strip() else None
                except json.JSONDecodeError as e:
                    yield line_no, {}, f"not valid JSON ({e.msg})"
                    continue
                if record is None:
                    yield line_no, {}, "blank line"
                else:
                    yield line_no, record if isinstance(record, dict) else {}, None if isinstance(record, dict) \
                        else "not a JSON object"
        return None, json_records()

    def fields(line: str) -> list[str]:
        if "\r" not in line:
            return next(csv.reader([line], delimiter=FORMATS[spec.format], strict=True))
        # csv refuses a bare carriage return inside a field, which a line of these files may hold: parse the line
        # with a stand-in character that it does not contain.
        stand_in = next(chr(c) for c in range(0xE000, 0xF900) if chr(c) not in line)
        return [f.replace(stand_in, "\r") for f in fields(line.replace("\r", stand_in))]

    if not lines[0].strip():
        raise DataError(f"{path}: line 1: blank header line")
    try:
        header = fields(lines[0])
    except csv.Error as e:
        raise DataError(f"{path}: line 1: unreadable header ({e})") from None

    def delimited_records():
        for line_no, line in enumerate(lines[1:], start=2):
            if not line.strip():
                yield line_no, {}, "blank line"
                continue
            try:
                values = fields(line)
            except csv.Error as e:
                yield line_no, {}, f"bad quoting ({e})"
                continue
            problem = None if len(values) == len(header) else f"{len(values)} fields, expected {len(header)}"
            yield line_no, dict(zip(header, values)), problem
    return header, delimited_records()


def read_rows(path: str | Path, spec: TaskSpec | str, *, labeled: bool | None = None) -> Rows:
    """Reads a task's data file, skipping malformed rows with one `MalformedRowWarning` each.

    `labeled=None` takes a file with or without the label column (test files may lack it); True demands it.
    Raises `DataError` for a missing, unreadable, empty or non-UTF-8 file, a header without a declared column,
    or a file with no good row. A built-in task may be named instead of given.
    """
    path = Path(path)
    spec = registry()[spec] if isinstance(spec, str) else spec
    lines = _read_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    if not lines:
        raise DataError(f"{path}: empty file")
    header, records = _header_and_records(lines, spec, path)
    wanted = {"id": spec.id_column, **dict(zip(("text", "text_pair"), spec.text_columns)), "label": spec.label_column}
    if header is not None:
        missing = [(key, column) for key, column in wanted.items() if column is not None and column not in header]
        if labeled is not True and missing == [("label", spec.label_column)]:
            labeled, missing = False, []
        if missing:
            key, column = missing[0]
            raise DataError(f"{path}: line 1: no column {column!r} (the {key} of task {spec.name} in {spec.source})")
        labeled = labeled is not False
    ids: list[str] = []
    texts: tuple[list[str], ...] = tuple([] for _ in spec.text_columns)
    labels: list[float] = []
    skipped = total = 0
    for line_no, record, problem in records:
        total += 1
        row_id = str(record.get(spec.id_column, "")).strip() if spec.id_column else str(total - 1)
        try:
            if problem:
                raise _BadRow(problem)
            if labeled is None:  # jsonl: the first record decides
                labeled = spec.label_column in record
            for key, column in wanted.items():
                if column is not None and column not in record and (key != "label" or labeled):
                    raise _BadRow(f"no {column!r} field")
            if not row_id:
                raise _BadRow("empty id")
            sentences = [str(record[c]).strip() for c in spec.text_columns]
            for column, sentence in zip(spec.text_columns, sentences):
                if not sentence:
                    raise _BadRow(f"empty {column}")
            label = _parse_label(record[spec.label_column], spec) if labeled else None
        except _BadRow as e:
            skipped += 1
            where = f"line {line_no}" + (f" (id {row_id})" if row_id else "")
            warnings.warn(f"{path}: {where}: {e}; row skipped", MalformedRowWarning, stacklevel=2)
            continue
        ids.append(row_id)
        for column, sentence in zip(texts, sentences):
            column.append(sentence)
        if labeled:
            labels.append(label)
    if skipped:
        warnings.warn(f"{path}: skipped {skipped} malformed row(s) of {total}; {len(ids)} loaded",
                      MalformedRowWarning, stacklevel=2)
    if not ids:
        raise DataError(f"{path}: no rows to load ({total} data line(s), {skipped} malformed)")
    return Rows(ids, texts, np.asarray(labels, dtype=spec.label_dtype) if labeled else None)
