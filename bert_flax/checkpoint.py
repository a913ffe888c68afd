"""Converted checkpoint directories: config.json + vocab.txt + orbax parameters.

Layout of a directory written by `save_pretrained`:
    config.json             Hugging Face style BertConfig
    vocab.txt               WordPiece vocabulary
    tokenizer_config.json   {"do_lower_case": ...}
    params/                 orbax checkpoint of the BertModel parameter tree
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax.traverse_util import flatten_dict

from .config import BertConfig
from .modeling import BertModel

__all__ = ["CheckpointError", "check_params", "expected_param_shapes", "from_pretrained", "load_config",
           "save_pretrained"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing files, or missing, unknown or misshapen tensors."""


def expected_param_shapes(config: BertConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Shapes of every BertModel parameter for `config`, keyed by parameter path."""
    dummy = jnp.zeros((1, 1), jnp.int32)
    shapes = jax.eval_shape(lambda: BertModel(config).init(jax.random.key(0), dummy))["params"]
    return {path: tuple(leaf.shape) for path, leaf in flatten_dict(shapes).items()}


def check_params(params, config: BertConfig, source: str) -> None:
    """Raises CheckpointError naming every missing, unknown or misshapen parameter."""
    expected = expected_param_shapes(config)
    found = {path: tuple(np.shape(leaf)) for path, leaf in flatten_dict(params).items()}
    problems = [f"missing tensor {'/'.join(p)} {shape}" for p, shape in expected.items() if p not in found]
    problems += [f"unknown tensor {'/'.join(p)} {shape}" for p, shape in found.items() if p not in expected]
    problems += [
        f"misshapen tensor {'/'.join(p)}: {found[p]}, expected {shape}"
        for p, shape in expected.items()
        if p in found and found[p] != shape
    ]
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems))


def _check_vocab(vocab_file: Path, config: BertConfig) -> None:
    entries = len(vocab_file.read_text(encoding="utf-8").splitlines())
    if entries > config.vocab_size:
        raise CheckpointError(
            f"{vocab_file}: {entries} word pieces, more than the config's vocab_size {config.vocab_size}"
        )


def _local_checkpointer() -> ocp.StandardCheckpointer:
    # Host (numpy) arrays, read or written by this process alone: in a multi-process run orbax would otherwise
    # wait for every process at a barrier.
    this = jax.process_index()
    return ocp.StandardCheckpointer(
        multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=this, active_processes={this}))


def save_pretrained(out_dir: str | Path, config: BertConfig, params, vocab_file: str | Path, lowercase: bool) -> Path:
    """Writes a checkpoint directory (see module docstring); replaces an existing one."""
    out_dir = Path(out_dir).resolve()
    check_params(params, config, str(out_dir))
    _check_vocab(Path(vocab_file), config)
    out_dir.mkdir(parents=True, exist_ok=True)
    config.to_json_file(out_dir / "config.json")
    if Path(vocab_file).resolve() != (out_dir / "vocab.txt"):
        shutil.copyfile(vocab_file, out_dir / "vocab.txt")
    (out_dir / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": lowercase}) + "\n")
    if (out_dir / "params").exists():
        shutil.rmtree(out_dir / "params")
    checkpointer = _local_checkpointer()
    checkpointer.save(out_dir / "params", jax.tree_util.tree_map(np.asarray, params))
    checkpointer.wait_until_finished()
    return out_dir


def load_config(checkpoint_dir: str | Path) -> BertConfig:
    """Reads config.json of a checkpoint directory, with an error naming what is missing."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        raise CheckpointError(f"{checkpoint_dir}: checkpoint directory not found")
    if not (checkpoint_dir / "config.json").exists():
        raise CheckpointError(f"{checkpoint_dir}: no config.json in checkpoint directory")
    try:
        return BertConfig.from_json_file(checkpoint_dir / "config.json")
    except ValueError as err:
        raise CheckpointError(str(err)) from None


def from_pretrained(checkpoint_dir: str | Path, dtype=jnp.float32):
    """Loads a converted checkpoint directory: returns (BertModel, params)."""
    checkpoint_dir = Path(checkpoint_dir).resolve()
    config = load_config(checkpoint_dir)
    if not (checkpoint_dir / "vocab.txt").exists():
        raise CheckpointError(f"{checkpoint_dir}: no vocab.txt in checkpoint directory")
    _check_vocab(checkpoint_dir / "vocab.txt", config)
    if not (checkpoint_dir / "params").is_dir():
        raise CheckpointError(f"{checkpoint_dir}: no params/ (orbax parameters) in checkpoint directory")
    params = _local_checkpointer().restore(checkpoint_dir / "params")
    check_params(params, config, str(checkpoint_dir))
    return BertModel(config, dtype=dtype), params

