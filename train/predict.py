"""Predictions for your own sentences with a trained run.

    python -m train.predict --checkpoint RUN_DIR "A gripping, beautiful film."
    python -m train.predict --checkpoint RUN_DIR "How do I learn Python?" "What is the best way to learn Python?"
    python -m train.predict --checkpoint RUN_DIR --file lines.txt   # a sentence, or two separated by a tab, per line

One sentence: its sentiment class with the probabilities of the five classes. Two sentences:
the probability that they are paraphrases and their similarity on 0-5 (and each one's sentiment).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np

from .losses import predictions
from .loop import RunError, load_run

SENTIMENT_NAMES = ("negative", "somewhat negative", "neutral", "somewhat positive", "positive")


def pair_batch(tokenizer, first: list[str], second: list[str], pair_encoding: str, max_length: int) -> dict:
    """A sentence-pair batch in the layout of the input pipeline (bi: a rows then b rows; cross: one sequence)."""
    if pair_encoding == "cross":
        batch = tokenizer(first, second, max_length=max_length)
    else:
        batch = tokenizer(list(first) + list(second), max_length=max_length)
    return batch


def predict_lines(run_dir: Path, lines: list[tuple[str, ...]]) -> list[str]:
    """Formatted predictions for each line (a 1-tuple sentence, or a 2-tuple pair)."""
    run, params = load_run(run_dir)
    cfg, model, tokenizer = run.config, run.model, run.tokenizer
    apply = jax.jit(lambda p, b, task: model.apply({"params": p}, b, task), static_argnums=2)
    out = []
    for line in lines:
        parts = []
        if "sst" in cfg.tasks:
            for sentence in line:
                logits = apply(params, tokenizer([sentence], max_length=cfg.max_length), "sst")
                probs = np.asarray(jax.nn.softmax(logits[0]))
                spread = " ".join(f"{p:.2f}" for p in probs)
                parts.append(f"sentiment {int(probs.argmax())} ({SENTIMENT_NAMES[int(probs.argmax())]}; p = {spread})")
        if len(line) == 2:
            def pair_output(task):
                batch = pair_batch(tokenizer, [line[0]], [line[1]], cfg.pair_mode(task), cfg.max_length)
                return apply(params, batch, task)

            if "para" in cfg.tasks:
                logit = float(pair_output("para")[0])
                parts.append(f"paraphrase probability {float(jax.nn.sigmoid(logit)):.3f}")
            if "sts" in cfg.tasks:
                similarity = float(predictions(pair_output("sts"), "sts", cfg)[0])
                parts.append(f"similarity {similarity:.2f}/5")
        out.append(" | ".join(parts) if parts else "no task of this run applies")
    return out


def main(argv=None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m train.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, metavar="RUN_DIR", help="a training run directory")
    parser.add_argument("--file", help="a file with one sentence, or two separated by a tab, per line")
    parser.add_argument("sentences", nargs="*", help="one sentence, or two for a pair")
    args = parser.parse_args(argv)
    if args.file:
        try:
            text = Path(args.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            print(f"error: {args.file}: {err}", file=sys.stderr)
            return 1
        lines = [tuple(line.split("\t")[:2]) for line in text.splitlines() if line.strip()]
    elif 1 <= len(args.sentences) <= 2:
        lines = [tuple(args.sentences)]
    else:
        parser.error("give one sentence, two sentences (a pair), or --file")
    try:
        for line, result in zip(lines, predict_lines(Path(args.checkpoint), lines)):
            print(f"{' / '.join(line)}\n  {result}")
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
