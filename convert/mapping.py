"""Names between PyTorch BERT state dicts and the Flax BertModel parameter tree.

Hugging Face names map to Flax paths by a rename plus, for dense kernels, a transpose:
    encoder.layer.3.attention.self.query.weight  <->  encoder/layer_3/attention/self/query/kernel  (transposed)
    embeddings.LayerNorm.weight (or .gamma)      <->  embeddings/LayerNorm/scale
CS224N minBERT names (word_embedding, bert_layers.N.interm_dense, ...) are first renamed to
Hugging Face names.
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["SKIPPED_PATTERNS", "flax_to_torch_name", "minbert_to_hf_name", "torch_to_flax"]

# Tensors that are not encoder parameters and are reported as skipped, not converted.
SKIPPED_PATTERNS = (
    re.compile(r"(^|\.)position_ids$"),  # a buffer, rebuilt at run time
    re.compile(r"^cls\."),  # pre-training heads (masked LM, next sentence prediction)
)

_MINBERT_RENAMES = (
    (r"^word_embedding\.", "embeddings.word_embeddings."),
    (r"^pos_embedding\.", "embeddings.position_embeddings."),
    (r"^tk_type_embedding\.", "embeddings.token_type_embeddings."),
    (r"^embed_layer_norm\.", "embeddings.LayerNorm."),
    (r"^bert_layers\.(\d+)\.self_attention\.", r"encoder.layer.\1.attention.self."),
    (r"^bert_layers\.(\d+)\.attention_dense\.", r"encoder.layer.\1.attention.output.dense."),
    (r"^bert_layers\.(\d+)\.attention_layer_norm\.", r"encoder.layer.\1.attention.output.LayerNorm."),
    (r"^bert_layers\.(\d+)\.interm_dense\.", r"encoder.layer.\1.intermediate.dense."),
    (r"^bert_layers\.(\d+)\.out_dense\.", r"encoder.layer.\1.output.dense."),
    (r"^bert_layers\.(\d+)\.out_layer_norm\.", r"encoder.layer.\1.output.LayerNorm."),
    (r"^pooler_dense\.", "pooler.dense."),
)


def minbert_to_hf_name(name: str) -> str:
    """Renames a CS224N minBERT tensor name to its Hugging Face BertModel name (others unchanged)."""
    for pattern, replacement in _MINBERT_RENAMES:
        renamed, count = re.subn(pattern, replacement, name)
        if count:
            return renamed
    return name


def _leaf_kind(module_path: list[str]) -> str:
    owner = module_path[-1]
    if owner == "LayerNorm":
        return "layer_norm"
    if owner.endswith("_embeddings"):
        return "embedding"
    return "dense"


def torch_to_flax(name: str, tensor: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """Maps one Hugging Face tensor (name without the `bert.` prefix) to its Flax path and array."""
    parts = re.sub(r"(^|\.)layer\.(\d+)\.", r"\1layer_\2.", name).split(".")
    module_path, leaf = parts[:-1], parts[-1]
    kind = _leaf_kind(module_path)
    if leaf in ("bias", "beta"):
        return tuple(module_path + ["bias"]), tensor
    if leaf not in ("weight", "gamma"):
        raise KeyError(name)
    if kind == "layer_norm":
        return tuple(module_path + ["scale"]), tensor
    if kind == "embedding":
        return tuple(module_path + ["embedding"]), tensor
    return tuple(module_path + ["kernel"]), np.ascontiguousarray(tensor.T)


def flax_to_torch_name(path: tuple[str, ...]) -> tuple[str, bool]:
    """Hugging Face name of a Flax parameter path, and whether the array must be transposed."""
    *module_path, leaf = path
    name = re.sub(r"(^|\.)layer_(\d+)(?=\.)", r"\1layer.\2", ".".join(module_path))
    if leaf == "bias":
        return f"{name}.bias", False
    return f"{name}.weight", leaf == "kernel"
