"""Encode sentences with a converted checkpoint and print their cosine similarities.

    python -m bert_flax --checkpoint checkpoints/minilm-l6 "first sentence" "second sentence" ...
"""

import argparse
import sys

import jax
import numpy as np

from . import CheckpointError, Tokenizer, from_pretrained


def mean_pooled_embeddings(checkpoint: str, sentences: list[str]) -> np.ndarray:
    """L2-normalised mean-pooled last hidden states, one row per sentence."""
    model, params = from_pretrained(checkpoint)
    batch = Tokenizer.from_pretrained(checkpoint)(sentences, max_length=256)
    hidden = jax.jit(model.apply)({"params": params}, batch["input_ids"], batch["attention_mask"])["last_hidden_state"]
    mask = batch["attention_mask"][..., None]
    mean = (np.asarray(hidden) * mask).sum(1) / mask.sum(1)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def main(argv=None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="checkpoints/minilm-l6", help="converted checkpoint directory")
    parser.add_argument("sentences", nargs="+")
    args = parser.parse_args(argv)
    try:
        embeddings = mean_pooled_embeddings(args.checkpoint, args.sentences)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{len(args.sentences)} sentences -> embeddings of size {embeddings.shape[1]}; cosine similarities:")
    for i, sentence in enumerate(args.sentences):
        print("  " + " ".join(f"{c:6.3f}" for c in embeddings @ embeddings[i]) + f"   {sentence}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
