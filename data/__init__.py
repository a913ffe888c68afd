"""CS224N task data (vendored CSV files) and the input pipeline.

    from data import TaskData, MultiTaskStream, prefetch_to_device
    tasks = [TaskData("sst"), TaskData("quora", mode="bi"), TaskData("sts", mode="bi")]
    stream = MultiTaskStream(tasks, seed=0)
    for step, batches in enumerate(prefetch_to_device(stream.epoch(0))):
        ...  # batches: {"sst": {...}, "quora": {...}, "sts": {...}}

See data/README.md for the files, the formats and the API.
"""

from data.input_pipeline import (
    EncodedSplit,
    MultiTaskStream,
    TaskData,
    TaskPlan,
    choose_buckets,
    data_mesh,
    default_tokenizer,
    encode_split,
    length_sorted_batches,
    place,
    prefetch_to_device,
    shard_batch,
)
from data.tasks import FAMILIES, DataError, MalformedRowWarning, Rows, TaskFamily, read_rows
from data.tfds_builders import NO_LABEL, disable_progress_bars, get_builder, load_split, source_digest

__all__ = [
    "FAMILIES",
    "NO_LABEL",
    "DataError",
    "EncodedSplit",
    "MalformedRowWarning",
    "MultiTaskStream",
    "Rows",
    "TaskData",
    "TaskPlan",
    "TaskFamily",
    "choose_buckets",
    "data_mesh",
    "default_tokenizer",
    "disable_progress_bars",
    "encode_split",
    "get_builder",
    "length_sorted_batches",
    "load_split",
    "place",
    "prefetch_to_device",
    "read_rows",
    "shard_batch",
    "source_digest",
]
