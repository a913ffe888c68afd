"""Checkpoint conversion: CS224N names, round trip, and refusals that name the tensor."""

import json
import re
import shutil

import jax
import numpy as np
import pytest
import torch
import transformers
from flax.traverse_util import flatten_dict
from safetensors.numpy import load_file, save_file

from bert_flax import CheckpointError, from_pretrained
from convert import flax_to_pt, pt_to_flax
from convert.pt_to_flax import convert_checkpoint

# Written out independently of convert/mapping.py: Hugging Face name -> CS224N minBERT name.
HF_TO_MINBERT = [
    (r"^embeddings\.word_embeddings\.", "word_embedding."),
    (r"^embeddings\.position_embeddings\.", "pos_embedding."),
    (r"^embeddings\.token_type_embeddings\.", "tk_type_embedding."),
    (r"^embeddings\.LayerNorm\.", "embed_layer_norm."),
    (r"^embeddings\.position_ids$", "position_ids"),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.", r"bert_layers.\1.self_attention."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"bert_layers.\1.attention_dense."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"bert_layers.\1.attention_layer_norm."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"bert_layers.\1.interm_dense."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"bert_layers.\1.out_dense."),
    (r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"bert_layers.\1.out_layer_norm."),
    (r"^pooler\.dense\.", "pooler_dense."),
]


def to_minbert(name: str) -> str:
    for pattern, replacement in HF_TO_MINBERT:
        renamed, count = re.subn(pattern, replacement, name)
        if count:
            return renamed
    raise AssertionError(f"no minBERT name for {name}")


def flat_params(directory):
    return {k: np.asarray(v) for k, v in flatten_dict(from_pretrained(directory)[1]).items()}


def assert_same_params(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg="/".join(key))


def copy_model_dir(src, dst):
    shutil.copytree(src, dst)
    return load_file(str(dst / "model.safetensors"))


def test_minbert_state_dict_converts_to_identical_params(minilm_torch_dir, minilm_flax_dir, tmp_path):
    state = load_file(str(minilm_torch_dir / "model.safetensors"))
    minbert = {"bert." + to_minbert(k): torch.from_numpy(v.copy()) for k, v in state.items()}
    torch.save({"model": minbert}, tmp_path / "minbert.pt")
    summary = convert_checkpoint(
        tmp_path / "minbert.pt", tmp_path / "out", minilm_torch_dir / "config.json", minilm_torch_dir / "vocab.txt"
    )
    assert summary.skipped == ["bert.position_ids"]
    assert_same_params(flat_params(tmp_path / "out"), flat_params(minilm_flax_dir))


def test_round_trip_flax_pytorch_flax_is_exact(minilm_flax_dir, tmp_path):
    flax_to_pt.export_checkpoint(minilm_flax_dir, tmp_path / "pt")
    torch_model = transformers.BertModel.from_pretrained(tmp_path / "pt")  # loads without missing keys
    assert sum(p.numel() for p in torch_model.parameters()) == sum(
        x.size for x in jax.tree_util.tree_leaves(from_pretrained(minilm_flax_dir)[1])
    )
    convert_checkpoint(tmp_path / "pt", tmp_path / "flax-again")
    assert_same_params(flat_params(tmp_path / "flax-again"), flat_params(minilm_flax_dir))


def test_bert_prefix_and_old_layernorm_names_and_mlm_head(minilm_torch_dir, minilm_flax_dir, tmp_path):
    state = copy_model_dir(minilm_torch_dir, tmp_path / "src")
    renamed = {"bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in state.items()}
    renamed["cls.predictions.bias"] = np.zeros(30522, np.float32)
    save_file(renamed, str(tmp_path / "src" / "model.safetensors"))
    summary = convert_checkpoint(tmp_path / "src", tmp_path / "out")
    assert sorted(summary.skipped) == ["bert.embeddings.position_ids", "cls.predictions.bias"]
    assert_same_params(flat_params(tmp_path / "out"), flat_params(minilm_flax_dir))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("encoder.layer.2.output.dense.bias"),
         "missing tensor encoder.layer.2.output.dense.bias (384,)"),
        (lambda s: s.update({"classifier.weight": np.zeros((5, 384), np.float32)}),
         "unknown tensor classifier.weight (5, 384)"),
        (lambda s: s.update({"pooler.dense.weight": np.zeros((384, 380), np.float32)}),
         "misshapen tensor pooler.dense.weight: (384, 380), expected (384, 384)"),
    ],
    ids=["missing", "unknown", "misshapen"],
)
def test_bad_tensors_are_refused_by_name(minilm_torch_dir, tmp_path, edit, message):
    state = copy_model_dir(minilm_torch_dir, tmp_path / "src")
    edit(state)
    save_file(state, str(tmp_path / "src" / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        convert_checkpoint(tmp_path / "src", tmp_path / "out")
    assert message in str(err.value)
    assert not (tmp_path / "out").exists(), "nothing is written for a refused checkpoint"


def test_missing_config_and_vocab_are_named(minilm_torch_dir, tmp_path, capsys):
    copy_model_dir(minilm_torch_dir, tmp_path / "src")
    (tmp_path / "src" / "config.json").unlink()
    assert pt_to_flax.main(["--src", str(tmp_path / "src"), "--out", str(tmp_path / "out")]) == 1
    assert f"{tmp_path / 'src' / 'config.json'}: config.json not found" in capsys.readouterr().err
    (tmp_path / "src" / "vocab.txt").unlink()
    with pytest.raises(CheckpointError, match="vocab.txt not found"):
        convert_checkpoint(tmp_path / "src", tmp_path / "out", config_file=minilm_torch_dir / "config.json")


def test_loading_refuses_incomplete_directories(minilm_flax_dir, tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        from_pretrained(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(minilm_flax_dir, broken)
    (broken / "vocab.txt").write_text("\n".join(f"tok{i}" for i in range(40000)))
    with pytest.raises(CheckpointError, match="40000 word pieces, more than the config's vocab_size 30522"):
        from_pretrained(broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 7, "vocab_size": 40000}))
    with pytest.raises(CheckpointError, match="missing tensor encoder/layer_6/attention/self/query/kernel"):
        from_pretrained(broken)


def test_cli_prints_one_summary_line(minilm_torch_dir, tmp_path, capsys):
    assert pt_to_flax.main(["--src", str(minilm_torch_dir), "--out", str(tmp_path / "out")]) == 0
    line = capsys.readouterr().out.strip()
    assert line == ("converted 103 tensors, 1 skipped (embeddings.position_ids), 22,713,216 parameters -> "
                    f"{tmp_path / 'out'}")
