"""Checkpoint conversion: CS224N names, round trip, and refusals that name the tensor."""

import json
import os
import re
import shutil

import jax
import numpy as np
import pytest
import torch
import transformers
from flax.traverse_util import flatten_dict
from safetensors.numpy import load_file, save_file

from bert_flax import BertConfig, CheckpointError, from_pretrained
from convert import flax_to_pt, pt_to_flax
from convert.pt_to_flax import convert_checkpoint, ensure_flax_checkpoint

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


def test_export_of_a_run_directory_exports_its_best_encoder(minilm_flax_dir, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "best_encoder").symlink_to(minilm_flax_dir)
    assert flax_to_pt.main(["--src", str(run), "--out", str(tmp_path / "pt")]) == 0
    assert f"{run} is a training run directory: exporting its encoder {run / 'best_encoder'}" in capsys.readouterr().out
    assert (tmp_path / "pt" / "model.safetensors").is_file()


def test_export_files_follow_the_umask(minilm_flax_dir, tmp_path):
    previous = os.umask(0o022)
    try:
        flax_to_pt.export_checkpoint(minilm_flax_dir, tmp_path / "pt")
    finally:
        os.umask(previous)
    modes = {path.name: oct(path.stat().st_mode & 0o777) for path in [tmp_path / "pt", *(tmp_path / "pt").iterdir()]}
    assert modes == {"pt": "0o755", "model.safetensors": "0o644", "config.json": "0o644", "vocab.txt": "0o644",
                     "tokenizer_config.json": "0o644"}


def test_exported_tokenizer_truncates_to_the_model_length(minilm_flax_dir, tmp_path):
    flax_to_pt.export_checkpoint(minilm_flax_dir, tmp_path / "pt")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "pt")
    max_positions = BertConfig.from_json_file(minilm_flax_dir / "config.json").max_position_embeddings
    assert tokenizer.model_max_length == max_positions == 512
    assert len(tokenizer("word " * 1000, truncation=True)["input_ids"]) == 512


def test_export_refuses_an_existing_directory_and_replaces_it_only_when_complete(
        minilm_flax_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "pt"
    out.mkdir()
    (out / "keep.txt").write_text("earlier export")
    assert flax_to_pt.main(["--src", str(minilm_flax_dir), "--out", str(out)]) == 1
    assert capsys.readouterr().err == f"error: {out}: already exists (pass --force to replace it)\n"

    def disk_full(*_):
        raise OSError("No space left on device")

    with monkeypatch.context() as patch:  # fails after model.safetensors is written
        patch.setattr(BertConfig, "to_json_file", disk_full)
        with pytest.raises(OSError, match="No space left"):
            flax_to_pt.export_checkpoint(minilm_flax_dir, out, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pt"], "no partial directory is left beside it"
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"], "the old export is untouched"

    assert flax_to_pt.main(["--src", str(minilm_flax_dir), "--out", str(out), "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer_config.json",
                                                     "vocab.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pt"]


def test_export_says_it_writes_the_encoder_only(minilm_flax_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        flax_to_pt.main(["--help"])
    assert "the encoder (BertModel) only" in capsys.readouterr().out
    assert flax_to_pt.main(["--src", str(minilm_flax_dir), "--out", str(tmp_path / "pt")]) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'pt'}: the encoder (BertModel) only, without task heads\n"


def test_truncated_weights_are_refused_in_one_line(minilm_torch_dir, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("config.json", "vocab.txt"):
        shutil.copyfile(minilm_torch_dir / name, src / name)
    weights = (minilm_torch_dir / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    assert pt_to_flax.main(["--src", str(src), "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == (
        f"error: {src / 'model.safetensors'}: not a readable safetensors file "
        "(Error while deserializing header: incomplete metadata, file not fully covered)\n")

    (src / "model.safetensors").unlink()
    torch.save({"embeddings.word_embeddings.weight": torch.zeros(1000, 8)}, src / "pytorch_model.bin")
    weights = (src / "pytorch_model.bin").read_bytes()
    (src / "pytorch_model.bin").write_bytes(weights[: len(weights) // 2])
    assert pt_to_flax.main(["--src", str(src), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {src / 'pytorch_model.bin'}: not a readable PyTorch file (") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_ensure_flax_checkpoint_converts_a_hugging_face_directory_once(minilm_torch_dir, minilm_flax_dir, tmp_path,
                                                                      capsys, monkeypatch):
    assert ensure_flax_checkpoint(minilm_flax_dir, tmp_path / "cache") == minilm_flax_dir
    src = tmp_path / "all-MiniLM-L6-v2"  # the packaged model, with a config.json that can be edited
    src.mkdir()
    for path in minilm_torch_dir.iterdir():
        (src / path.name).symlink_to(path)
    (src / "config.json").unlink()
    shutil.copyfile(minilm_torch_dir / "config.json", src / "config.json")

    converted = ensure_flax_checkpoint(src, tmp_path / "cache")
    assert converted.parent == tmp_path / "cache" and converted.name.startswith("all-MiniLM-L6-v2-")
    assert capsys.readouterr().out.endswith(f"-> {converted}\n")
    assert_same_params(flat_params(converted), flat_params(minilm_flax_dir))
    assert ensure_flax_checkpoint(src, tmp_path / "cache") == converted
    assert capsys.readouterr().out == "", "converted once"

    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-6}))

    def killed(src, out_dir):
        (out_dir / "config.json").write_text("{}")
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(pt_to_flax, "convert_checkpoint", killed)
        with pytest.raises(KeyboardInterrupt):
            ensure_flax_checkpoint(src, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == [converted], "nothing half-written"
    again = ensure_flax_checkpoint(src, tmp_path / "cache")
    assert again != converted and (again / "params").is_dir(), "a changed source converts again"
    assert from_pretrained(again)[0].config.layer_norm_eps == 1e-6


def test_ensure_flax_checkpoint_names_missing_weights(minilm_torch_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("config.json", "vocab.txt"):
        shutil.copyfile(minilm_torch_dir / name, src / name)
    with pytest.raises(CheckpointError) as err:
        ensure_flax_checkpoint(src, tmp_path / "cache")
    assert str(err.value) == (
        f"{src}: neither a converted checkpoint (no params/) nor a Hugging Face BERT directory "
        "(no model.safetensors or pytorch_model.bin); convert other checkpoints with python convert/pt_to_flax.py")
    assert not (tmp_path / "cache").exists()
