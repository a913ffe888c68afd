"""Flax BERT ("minBERT") with checkpoints converted from PyTorch.

    from bert_flax import from_pretrained, Tokenizer
    model, params = from_pretrained("checkpoints/minilm-l6")
    batch = Tokenizer.from_pretrained("checkpoints/minilm-l6")(["a sentence"])
    out = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"])
"""

from .checkpoint import CheckpointError, from_pretrained, load_config, save_pretrained
from .config import BertConfig
from .modeling import BertModel
from .tokenizer import Tokenizer

__all__ = ["BertConfig", "BertModel", "CheckpointError", "Tokenizer", "from_pretrained", "load_config",
           "save_pretrained"]
