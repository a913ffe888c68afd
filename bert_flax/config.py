"""BERT hyper-parameters, read from and written to a Hugging Face style config.json."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

__all__ = ["BertConfig"]


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Sizes and rates of a BERT encoder; field names follow Hugging Face's config.json."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_act not in ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu"):
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported")

    @classmethod
    def from_dict(cls, values: dict) -> "BertConfig":
        """Builds a config from a config.json dict; keys that do not describe the encoder are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        if values.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"position_embedding_type {values['position_embedding_type']!r} is not supported")
        return cls(**{k: v for k, v in values.items() if k in names})

    @classmethod
    def from_json_file(cls, path: str | Path) -> "BertConfig":
        """Reads a Hugging Face style config.json."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: config.json not found")
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        return cls.from_dict(values)

    def to_dict(self) -> dict:
        """The config as a Hugging Face BertConfig-compatible dict."""
        return {"model_type": "bert", "architectures": ["BertModel"], **dataclasses.asdict(self)}

    def to_json_file(self, path: str | Path) -> None:
        """Writes config.json."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
