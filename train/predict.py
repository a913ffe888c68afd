"""Predictions for your own sentences with a trained run.

    python -m train.predict --checkpoint RUN_DIR "A gripping, beautiful film."
    python -m train.predict --checkpoint RUN_DIR "How do I learn Python?" "What is the best way to learn Python?"
    python -m train.predict --checkpoint RUN_DIR --file lines.txt   # a sentence, or two separated by a tab, per line

Each task of the run that applies answers: a single-sentence task for each sentence, a pair task for a pair.
Classes come with the probability of each class, named as the task declares them; scores on the task's range.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np

from .losses import predictions
from .run import RunError, load_run


def model_batch(tokenizer, sentences: tuple[str, ...], mode: str, max_length: int) -> dict:
    """One example in the layout of the input pipeline: a sentence, a pair in one sequence (cross), or a pair's
    two sentences as rows a then b (bi)."""
    if mode == "cross":
        return tokenizer([sentences[0]], [sentences[1]], max_length=max_length)
    return tokenizer(list(sentences), max_length=max_length)


def _answer(spec, outputs: np.ndarray, config) -> str:
    names = spec.class_names or tuple(f"class {k}" for k in range(spec.num_classes or 0))
    if spec.has_class_logits:
        probs = np.asarray(jax.nn.softmax(outputs))
        spread = ", ".join(f"{name} {p:.2f}" for name, p in zip(names, probs))
        return f"{spec.name}: {names[int(probs.argmax())]} (p: {spread})"
    if not spec.is_regression:
        return f"{spec.name}: {names[1]} probability {float(jax.nn.sigmoid(outputs)):.3f}"
    low, high = spec.label_range
    value = float(predictions(outputs[None], spec.name, config)[0])
    return f"{spec.name}: {value:.2f} on {low:g}-{high:g}"


def predict_lines(run_dir: Path, lines: list[tuple[str, ...]]) -> list[str]:
    """Formatted predictions for each line (a 1-tuple sentence, or a 2-tuple pair)."""
    run, params = load_run(run_dir)
    cfg, model, tokenizer = run.config, run.model, run.tokenizer
    apply = jax.jit(lambda p, b, task: model.apply({"params": p}, b, task), static_argnums=2)
    out = []
    for line in lines:
        parts = []
        for task in cfg.tasks:
            spec = cfg.spec(task)
            inputs = [line] if spec.is_pair and len(line) == 2 else [(s,) for s in line] if not spec.is_pair else []
            for sentences in inputs:
                batch = model_batch(tokenizer, sentences, cfg.sequence_mode(task), cfg.max_length)
                parts.append(_answer(spec, np.asarray(apply(params, batch, task))[0], cfg))
        if not parts:
            pair_tasks = [t for t in cfg.tasks if cfg.spec(t).is_pair]
            parts.append(f"no task of this run takes {len(line)} sentence(s)"
                         + (f"; give two for {','.join(pair_tasks)}" if pair_tasks else ""))
        out.append(" | ".join(parts))
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
