"""Task data (the registry of declared tasks, the vendored CS224N files) and the input pipeline.

    from data import TaskData, MultiTaskStream, prefetch_to_device
    tasks = [TaskData("sst"), TaskData("para", mode="bi"), TaskData("sts", mode="bi")]
    stream = MultiTaskStream(tasks, seed=0)
    for step, batches in enumerate(prefetch_to_device(stream.epoch(0))):
        ...  # batches: {"sst": {...}, "para": {...}, "sts": {...}}

See data/README.md for the files, the formats and the API.
"""

import importlib

# Public name -> the submodule that defines it. A name loads its submodule on first use, so reading the task files
# (data.tasks) does not import JAX and TFDS, which take seconds.
_SOURCES = {
    **dict.fromkeys(("EncodedSplit", "MultiTaskStream", "TaskData", "TaskPlan", "choose_buckets", "data_mesh",
                     "default_tokenizer", "encode_split", "length_sorted_batches", "place", "prefetch_to_device",
                     "shard_batch"), "input_pipeline"),
    **dict.fromkeys(("BUILTIN_TASK_FILE", "DataError", "MalformedRowWarning", "Rows", "TaskSpec", "load_task_file",
                     "read_rows", "registry"), "tasks"),
    **dict.fromkeys(("NO_LABEL", "quiet_preparation", "get_builder", "load_split", "source_digest", "task_spec"),
                    "tfds_builders"),
}
__all__ = sorted(_SOURCES)


def __getattr__(name: str):
    if name not in _SOURCES:
        raise AttributeError(f"module 'data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"data.{_SOURCES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SOURCES))
