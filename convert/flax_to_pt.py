"""Write a Flax checkpoint directory back as a Hugging Face PyTorch directory.

    python convert/flax_to_pt.py --src checkpoints/minilm-l6 --out exported/minilm-l6

The output (model.safetensors + config.json + vocab.txt + tokenizer_config.json) loads with
transformers' `BertModel.from_pretrained(out)`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from flax.traverse_util import flatten_dict
from safetensors.numpy import save_file

from bert_flax.checkpoint import CheckpointError, from_pretrained
from convert.mapping import flax_to_torch_name


def params_to_state_dict(params) -> dict[str, np.ndarray]:
    """Maps a Flax BertModel parameter tree to Hugging Face BertModel tensor names."""
    state = {}
    for path, array in flatten_dict(params).items():
        name, transpose = flax_to_torch_name(path)
        array = np.asarray(array, np.float32)
        state[name] = np.ascontiguousarray(array.T if transpose else array)
    return state


def export_checkpoint(src: str | Path, out_dir: str | Path) -> Path:
    """Exports a converted or fine-tuned Flax checkpoint directory as a Hugging Face PyTorch directory."""
    src, out_dir = Path(src), Path(out_dir)
    model, params = from_pretrained(src)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(params_to_state_dict(params), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    model.config.to_json_file(out_dir / "config.json")
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copyfile(src / name, out_dir / name)
    return out_dir


def main(argv=None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="Flax checkpoint directory (config.json, vocab.txt, params/)")
    parser.add_argument("--out", required=True, help="output directory for the PyTorch checkpoint")
    args = parser.parse_args(argv)
    try:
        out_dir = export_checkpoint(args.src, args.out)
    except (CheckpointError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out_dir / 'model.safetensors'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
