"""Tokenizer against transformers' BertTokenizerFast on real task sentences."""

import numpy as np
from transformers import BertTokenizerFast

from bert_flax import Tokenizer
from tests.helpers import task_sentences


def test_ids_match_bert_tokenizer_fast(minilm_torch_dir):
    ours = Tokenizer.from_pretrained(minilm_torch_dir)
    reference = BertTokenizerFast.from_pretrained(minilm_torch_dir)
    sentences = task_sentences(600, seed=4)
    for max_length in (9, 16, 17, 128):
        ids, types = ours.encode(sentences, max_length=max_length)
        expected = reference(sentences, truncation=True, max_length=max_length)
        assert [x.tolist() for x in ids] == expected["input_ids"]
        pair_ids, pair_types = ours.encode(sentences[:300], sentences[300:], max_length=max_length)
        expected = reference(sentences[:300], sentences[300:], truncation=True, max_length=max_length)
        assert [x.tolist() for x in pair_ids] == expected["input_ids"]
        assert [x.tolist() for x in pair_types] == expected["token_type_ids"]


def test_special_token_text_is_read_as_the_reference_reads_it(minilm_torch_dir):
    """A literal "[SEP]" or "[CLS]" in a sentence becomes that special token, as in BertTokenizerFast."""
    ours = Tokenizer.from_pretrained(minilm_torch_dir)
    reference = BertTokenizerFast.from_pretrained(minilm_torch_dir)
    sentences = ["[SEP]", "a [SEP] b", "[CLS] [MASK] x [PAD]", "[sep] is lower case", "[UNK][SEP]"]
    ids, _ = ours.encode(sentences)
    assert [x.tolist() for x in ids] == reference(sentences)["input_ids"]
    assert ids[0].tolist() == [ours.cls_id, ours.sep_id, ours.sep_id]
    pair_ids, pair_types = ours.encode(sentences, sentences[::-1])
    expected = reference(sentences, sentences[::-1])
    assert [x.tolist() for x in pair_ids] == expected["input_ids"]
    assert [x.tolist() for x in pair_types] == expected["token_type_ids"]


def test_lower_casing_follows_the_checkpoint(minilm_torch_dir, tmp_path):
    assert Tokenizer.from_pretrained(minilm_torch_dir).lowercase
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nHello\nhello\n")
    cased = Tokenizer.from_pretrained(tmp_path)
    assert not cased.lowercase
    assert cased(["Hello hello"])["input_ids"].tolist() == [[2, 4, 5, 3]]


def test_padded_batch_masks_and_types(minilm_torch_dir):
    batch = Tokenizer.from_pretrained(minilm_torch_dir)(["a b c d", "a"], ["e", "f g"])
    assert batch["input_ids"].dtype == np.int32
    np.testing.assert_array_equal(batch["attention_mask"], [[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(batch["token_type_ids"], [[0, 0, 0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 1, 0, 0]])


def test_long_pairs_truncate_longest_first(minilm_torch_dir):
    # Through the tokenizers library's own pair truncation this pair took ~35 s and ~10 GB.
    long_text = " ".join(["word"] * 4000)
    ids, types = Tokenizer.from_pretrained(minilm_torch_dir).encode([long_text], [long_text + " more"], max_length=8)
    assert ids[0].tolist() == [101, 2773, 2773, 102, 2773, 2773, 2773, 102]
    assert types[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
