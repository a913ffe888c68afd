"""WordPiece tokenization for BERT checkpoints, built on the `tokenizers` library."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from tokenizers.implementations import BertWordPieceTokenizer

__all__ = ["Tokenizer", "lower_case_setting"]


def lower_case_setting(checkpoint_dir: Path, vocab: Sequence[str]) -> bool:
    """Reads do_lower_case from tokenizer_config.json; without one, a vocab with no
    upper-case word pieces is taken as uncased."""
    config_path = checkpoint_dir / "tokenizer_config.json"
    if config_path.exists():
        setting = json.loads(config_path.read_text()).get("do_lower_case")
        if setting is not None:
            return bool(setting)
    return not any(
        token != token.lower() for token in vocab if not (token.startswith("[") and token.endswith("]"))
    )


def _truncated_lengths(n_a: int, n_b: int, budget: int, is_pair: bool) -> tuple[int, int]:
    """Kept lengths of the two texts under `budget` tokens: the `tokenizers` library's longest-first rule
    (the longer text is cut first; when both must be cut, the shorter keeps budget // 2)."""
    if not is_pair:
        return min(n_a, budget), 0
    if n_a + n_b <= budget:
        return n_a, n_b
    short, long_ = sorted((n_a, n_b))
    long_ = short if short > budget else max(short, budget - short)
    if short + long_ > budget:
        short, long_ = budget // 2, budget // 2 + budget % 2
    return (short, long_) if n_a <= n_b else (long_, short)


class Tokenizer:
    """BERT WordPiece tokenizer for single sentences and sentence pairs.

    Encodes to unpadded id lists (`encode`) for the bucketing input pipeline, or to
    padded numpy arrays (`__call__`) for direct use with the model.
    """

    def __init__(self, vocab_file: str | Path, lowercase: bool):
        self.vocab_file = Path(vocab_file)
        self.lowercase = lowercase
        self._tokenizer = BertWordPieceTokenizer(
            str(self.vocab_file),
            lowercase=lowercase,
            strip_accents=None,
            clean_text=True,
            handle_chinese_chars=True,
        )
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.pad_id = self._tokenizer.token_to_id("[PAD]")
        self.cls_id = self._tokenizer.token_to_id("[CLS]")
        self.sep_id = self._tokenizer.token_to_id("[SEP]")

    @classmethod
    def from_pretrained(cls, checkpoint_dir: str | Path) -> "Tokenizer":
        """Loads vocab.txt (and tokenizer_config.json, if present) from a checkpoint directory."""
        checkpoint_dir = Path(checkpoint_dir)
        vocab_file = checkpoint_dir / "vocab.txt"
        if not vocab_file.exists():
            raise FileNotFoundError(f"{vocab_file}: no vocab.txt in checkpoint directory {checkpoint_dir}")
        vocab = vocab_file.read_text(encoding="utf-8").splitlines()
        return cls(vocab_file, lower_case_setting(checkpoint_dir, vocab))

    @property
    def vocab_size(self) -> int:
        """Number of word pieces in the vocabulary."""
        return self._tokenizer.get_vocab_size()

    def encode(
        self,
        texts: Sequence[str],
        text_pairs: Sequence[str] | None = None,
        max_length: int = 128,
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Tokenizes a batch into unpadded (input_ids, token_type_ids) arrays per example.

        With `text_pairs`, each example is `[CLS] a [SEP] b [SEP]`; truncation to
        `max_length` follows the `tokenizers` library's longest-first rule.
        """
        special = 2 if text_pairs is None else 3
        if max_length < special + 1:
            raise ValueError(f"max_length {max_length} leaves no room for tokens")
        first = self._word_pieces(texts)
        if text_pairs is None:
            second = [np.zeros(0, np.int32)] * len(first)
        elif len(text_pairs) != len(texts):
            raise ValueError(f"{len(texts)} sentences but {len(text_pairs)} pair sentences")
        else:
            second = self._word_pieces(text_pairs)
        ids, type_ids = [], []
        for a, b in zip(first, second):
            n_a, n_b = _truncated_lengths(len(a), len(b), max_length - special, text_pairs is not None)
            pieces = [[self.cls_id], a[:n_a], [self.sep_id]]
            if text_pairs is not None:
                pieces += [b[:n_b], [self.sep_id]]
            ids.append(np.concatenate(pieces).astype(np.int32))
            type_ids.append(np.repeat(np.array([0, 1], np.int32), [n_a + 2, len(ids[-1]) - n_a - 2]))
        return ids, type_ids

    def _word_pieces(self, texts: Sequence[str]) -> list[np.ndarray]:
        # Untruncated and without special tokens: the library's own pair truncation keeps every
        # overflow window of both texts, which takes memory quadratic in their length.
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in encodings]

    def pad(self, ids: Sequence[np.ndarray], type_ids: Sequence[np.ndarray], length: int | None = None):
        """Pads encoded examples to `length` (default: the longest) into a batch dict of int32 arrays."""
        length = max(len(x) for x in ids) if length is None else length
        batch = len(ids)
        input_ids = np.full((batch, length), self.pad_id, dtype=np.int32)
        token_type_ids = np.zeros((batch, length), dtype=np.int32)
        attention_mask = np.zeros((batch, length), dtype=np.int32)
        for row, (x, t) in enumerate(zip(ids, type_ids)):
            if len(x) > length:
                raise ValueError(f"example {row} has {len(x)} tokens, more than the padded length {length}")
            input_ids[row, : len(x)] = x
            token_type_ids[row, : len(t)] = t
            attention_mask[row, : len(x)] = 1
        return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}

    def __call__(self, texts, text_pairs=None, max_length: int = 128):
        """Tokenizes and pads a batch: returns input_ids, token_type_ids and attention_mask."""
        if isinstance(texts, str):
            texts = [texts]
            text_pairs = [text_pairs] if isinstance(text_pairs, str) else text_pairs
        return self.pad(*self.encode(texts, text_pairs, max_length))
