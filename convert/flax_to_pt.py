"""Write a Flax checkpoint directory back as a Hugging Face PyTorch directory: the encoder (BertModel) only.

    python convert/flax_to_pt.py --src checkpoints/minilm-l6 --out exported/minilm-l6
    python convert/flax_to_pt.py --src runs/RUN --out exported/RUN      # a training run: its best_encoder/

The output (model.safetensors + config.json + vocab.txt + tokenizer_config.json) loads with
transformers' `BertModel.from_pretrained(out)` and `AutoTokenizer.from_pretrained(out)`. A checkpoint
directory holds the encoder alone: a training run's task heads (classifiers, regressor) are not exported here
(convert/export.py exports a run's whole model, heads included). The output is written beside its destination
and renamed into place once complete; an existing output directory is replaced only with --force.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from flax.traverse_util import flatten_dict
from safetensors.numpy import save

from bert_flax.checkpoint import CheckpointError, from_pretrained
from bert_flax.config import BertConfig
from bert_flax.tokenizer import lower_case_setting
from convert.mapping import flax_to_torch_name
from convert.pt_to_flax import atomic_directory


def params_to_state_dict(params) -> dict[str, np.ndarray]:
    """Maps a Flax BertModel parameter tree to Hugging Face BertModel tensor names."""
    state = {}
    for path, array in flatten_dict(params).items():
        name, transpose = flax_to_torch_name(path)
        array = np.asarray(array, np.float32)
        state[name] = np.ascontiguousarray(array.T if transpose else array)
    return state


def run_encoder_dir(src: Path) -> Path:
    """The checkpoint directory to export for `src`: RUN/best_encoder for a training run directory (config.json
    and best_encoder/ inside), else `src` itself."""
    if (src / "config.json").is_file() and (src / "best_encoder").is_dir():
        return src / "best_encoder"
    return src


def export_checkpoint(src: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    """Exports a converted or fine-tuned Flax checkpoint directory as a Hugging Face PyTorch directory.

    Refuses an existing `out_dir` unless `force`; the files are those of `write_encoder`.
    """
    src, out_dir = Path(src), Path(out_dir)
    if out_dir.exists() and not force:
        raise CheckpointError(f"{out_dir}: already exists (pass --force to replace it)")
    model, params = from_pretrained(src)
    vocab = (src / "vocab.txt").read_text(encoding="utf-8").splitlines()
    with atomic_directory(out_dir) as tmp:
        write_encoder(tmp, model.config, params, src / "vocab.txt", lower_case_setting(src, vocab))
    return out_dir


def write_encoder(out_dir: Path, config: BertConfig, params, vocab_file: Path, lowercase: bool,
                  max_length: int | None = None) -> None:
    """Writes a Hugging Face BertModel directory's files (model.safetensors, config.json, vocab.txt,
    tokenizer_config.json) into the existing directory `out_dir`.

    tokenizer_config.json carries model_max_length, the length transformers' tokenizers truncate to:
    `max_length`, by default the model's max_position_embeddings (what the model accepts).
    """
    # Written through an ordinary file, not safetensors' save_file: that makes the file private (0600).
    (out_dir / "model.safetensors").write_bytes(save(params_to_state_dict(params), metadata={"format": "pt"}))
    config.to_json_file(out_dir / "config.json")
    shutil.copyfile(vocab_file, out_dir / "vocab.txt")
    tokenizer_config = {"do_lower_case": lowercase, "model_max_length": max_length or config.max_position_embeddings}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config) + "\n")


def main(argv=None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True,
                        help="Flax checkpoint directory (config.json, vocab.txt, params/) or a training run directory")
    parser.add_argument("--out", required=True, help="output directory for the PyTorch checkpoint")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    args = parser.parse_args(argv)
    src = run_encoder_dir(Path(args.src))
    if src != Path(args.src):
        print(f"{args.src} is a training run directory: exporting its encoder {src}")
    try:
        out_dir = export_checkpoint(src, args.out, args.force)
    except (CheckpointError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out_dir}: the encoder (BertModel) only, without task heads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
