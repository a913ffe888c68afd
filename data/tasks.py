"""Task families of the CS224N data and one validating reader for their CSV files.

Files are tab-separated UTF-8 with pandas-style quoting (a field holding a tab or a
quote is quoted, quotes inside doubled), one record per line, and a first unnamed
column that holds a pandas row index. A malformed row is skipped with a
`MalformedRowWarning` naming the file, line, row id and reason; a file that cannot
be used at all raises `DataError`.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DataError",
    "MalformedRowWarning",
    "TaskFamily",
    "FAMILIES",
    "Rows",
    "read_rows",
]


class DataError(ValueError):
    """A data file that cannot be used: missing, unreadable, empty, not UTF-8, wrong header."""


class MalformedRowWarning(UserWarning):
    """A row skipped by `read_rows`, or the per-file count of skipped rows."""


@dataclass(frozen=True)
class TaskFamily:
    """Layout of one task family's files.

    `label_range` is inclusive; integer families (`num_classes` set) accept only
    integral values, written `3` or `3.0`.
    """

    name: str
    text_columns: tuple[str, ...]
    label_column: str
    label_range: tuple[float, float]
    num_classes: int | None
    files: dict[str, str]

    @property
    def is_pair(self) -> bool:
        """True for sentence-pair tasks (quora, sts)."""
        return len(self.text_columns) == 2

    @property
    def label_dtype(self) -> type:
        """numpy dtype of the labels: int32 for classes, float32 for scores."""
        return np.int32 if self.num_classes is not None else np.float32

    def header(self, labeled: bool) -> list[str]:
        """Expected header fields, with the unnamed index column first."""
        return ["", "id", *self.text_columns, *([self.label_column] if labeled else [])]


FAMILIES: dict[str, TaskFamily] = {
    f.name: f
    for f in (
        TaskFamily(
            "sst", ("sentence",), "sentiment", (0, 4), 5,
            {"train": "ids-sst-train.csv", "dev": "ids-sst-dev.csv", "test": "ids-sst-test.csv"},
        ),
        TaskFamily(
            "quora", ("sentence1", "sentence2"), "is_duplicate", (0, 1), 2,
            {"train": "quora-train.csv", "dev": "quora-dev.csv", "test": "quora-test.csv"},
        ),
        TaskFamily(
            "sts", ("sentence1", "sentence2"), "similarity", (0.0, 5.0), None,
            {"train": "sts-train.csv", "dev": "sts-dev.csv", "test": "sts-test.csv"},
        ),
        TaskFamily(
            "cfimdb", ("sentence",), "sentiment", (0, 1), 2,
            {"train": "ids-cfimdb-train.csv", "dev": "ids-cfimdb-dev.csv"},
        ),
    )
}


@dataclass(frozen=True)
class Rows:
    """The good rows of one file, as columns in file order.

    `sentences` holds one list per text column; `labels` is None for a file without
    a label column (the *-test.csv files).
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


def _parse_label(text: str, family: TaskFamily) -> float:
    text = text.strip()
    if not text:
        raise _BadRow("empty label")
    if not _NUMBER.fullmatch(text):
        raise _BadRow(f"label {text!r} is not a number")
    value = float(text)
    low, high = family.label_range
    if not (math.isfinite(value) and low <= value <= high):
        raise _BadRow(f"label {text!r} outside [{low}, {high}]")
    if family.num_classes is not None and value != int(value):
        raise _BadRow(f"label {text!r} is not an integer class")
    return value


def _split_line(line: str) -> list[str]:
    """Fields of one line: tab-separated; a field starting with a quote runs to the
    matching quote, with doubled quotes inside standing for one."""
    fields, i = [], 0
    while True:
        if not line.startswith('"', i):
            end = line.find("\t", i)
            if end < 0:
                fields.append(line[i:])
                return fields
            fields.append(line[i:end])
            i = end + 1
            continue
        parts, start = [], i + 1
        while True:
            quote = line.find('"', start)
            if quote < 0:
                raise _BadRow(f"unbalanced quotes in field {len(fields) + 1}")
            parts.append(line[start:quote])
            if not line.startswith('"', quote + 1):
                break
            parts.append('"')
            start = quote + 2
        fields.append("".join(parts))
        i = quote + 1
        if i == len(line):
            return fields
        if line[i] != "\t":
            raise _BadRow(f"text after the closing quote of field {len(fields)}")
        i += 1


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


def read_rows(path: str | Path, family: TaskFamily | str, *, labeled: bool | None = None) -> Rows:
    """Reads a task file, skipping malformed rows with one `MalformedRowWarning` each.

    `labeled=None` takes the header with or without the label column (test files
    have none); True or False demands one of the two. Raises `DataError` for a
    missing, unreadable, empty or non-UTF-8 file, a wrong header, or a file with no
    good row.
    """
    path = Path(path)
    family = FAMILIES[family] if isinstance(family, str) else family
    lines = _read_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    if not lines:
        raise DataError(f"{path}: empty file")
    if not lines[0].strip():
        raise DataError(f"{path}: line 1: blank header line")

    try:
        header = _split_line(lines[0])
    except _BadRow as e:
        raise DataError(f"{path}: line 1: unreadable header: {e}") from None
    accepted = (True, False) if labeled is None else (labeled,)
    matches = [x for x in accepted if header == family.header(x)]
    if not matches:
        expected = " or ".join(repr("|".join(family.header(x))) for x in accepted)
        raise DataError(f"{path}: line 1: header {'|'.join(header)!r} is not {expected} ({family.name})")
    labeled = matches[0]

    n_fields = len(family.header(labeled))
    n_texts = len(family.text_columns)
    ids: list[str] = []
    texts: tuple[list[str], ...] = tuple([] for _ in range(n_texts))
    labels: list[float] = []
    skipped = 0
    for line_no, line in enumerate(lines[1:], start=2):
        row_id = None
        try:
            if not line.strip():
                raise _BadRow("blank line")
            fields = _split_line(line)
            if len(fields) >= 2:
                row_id = fields[1].strip() or None
            if len(fields) != n_fields:
                raise _BadRow(f"{len(fields)} fields, expected {n_fields}")
            if row_id is None:
                raise _BadRow("empty id")
            sentences = [s.strip() for s in fields[2 : 2 + n_texts]]
            for column, sentence in zip(family.text_columns, sentences):
                if not sentence:
                    raise _BadRow(f"empty {column}")
            label = _parse_label(fields[-1], family) if labeled else None
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

    total = len(lines) - 1
    if skipped:
        warnings.warn(
            f"{path}: skipped {skipped} malformed row(s) of {total}; {len(ids)} loaded",
            MalformedRowWarning,
            stacklevel=2,
        )
    if not ids:
        raise DataError(f"{path}: no rows to load ({total} data line(s), {skipped} malformed)")
    return Rows(ids, texts, np.asarray(labels, dtype=family.label_dtype) if labeled else None)

