"""Export a training run's whole model, task heads included, as directories that standard libraries load.

    python convert/export.py RUN_DIR OUT [--force]

writes OUT/<task>/ for each task of the run, and OUT/README.md listing them. Each task directory holds a
README.md whose Python code loads it with its library and computes the run's outputs and predictions for
sentences (tests/test_export.py runs that code against the run, within 1e-5); its tokenizer truncates to the
run's --max-length. A task directory is the first of these that fits the task:

    one sentence, or a cross-encoded pair ([CLS] a [SEP] b [SEP]), pooled by cls, without the shared layer
        transformers BertForSequenceClassification: classifier.weight is the head's kernel transposed
    a cross-encoded pair otherwise (mean or max pooling, or the shared layer)
        sentence-transformers CrossEncoder: Transformer, Pooling, then Dense layers, the last one the head
    a bi-encoded pair with the cosine head
        sentence-transformers SentenceTransformer: the cosine of the two sentences' embeddings is the output
    anything else (one sentence pooled by mean or max, a bi-encoded pair with a linear head)
        a SentenceTransformer giving the features the head reads, and heads.safetensors holding the head as
        head.weight (outputs, inputs) and head.bias: output = features @ head.weight.T + head.bias

Pooling by cls is BERT's pooler (tanh of a dense layer on the [CLS] state): in sentence-transformers a
Pooling("cls") followed by a Dense layer with tanh and the pooler's weights. The shared pair layer is a Dense
layer with ReLU. Each task directory's root is also a Hugging Face BERT directory, so
`BertModel.from_pretrained` loads the fine-tuned encoder alone. The output is written beside its destination
and renamed into place once complete; an existing output directory is replaced only with --force.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import numpy as np
import torch
import transformers
from safetensors.numpy import save
from sentence_transformers import CrossEncoder, SentenceTransformer
from sentence_transformers.base.modules import Dense, Transformer
from sentence_transformers.sentence_transformer.modules import Pooling

from bert_flax.checkpoint import CheckpointError
from convert.flax_to_pt import params_to_state_dict, write_encoder
from convert.pt_to_flax import atomic_directory
from train.config import TrainConfig
from train.model import head_name
from train.run import RunError, load_run

__all__ = ["export_run", "export_task"]

_ENCODING = {
    "single": "each sentence encoded alone",
    "cross": "each pair encoded as one sequence, [CLS] a [SEP] b [SEP]",
    "bi": "each sentence of a pair encoded alone (a bi-encoder)",
}
_POOLING = {
    "cls": "BERT's pooler output (tanh of a dense layer on the [CLS] state)",
    "mean": "the mean of the last hidden states over the sentence's tokens",
    "max": "the maximum of the last hidden states over the sentence's tokens",
}


def export_run(run_dir: str | Path, out_dir: str | Path, force: bool = False) -> dict[str, str]:
    """Exports every task of the run in `run_dir` (its best parameters) into `out_dir`/<task>/; returns
    {task: what its directory holds}. Refuses an existing `out_dir` unless `force`.

    The tokenizers truncate to the run's --max-length (their model_max_length), as the run did."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.exists() and not force:
        raise CheckpointError(f"{out_dir}: already exists (pass --force to replace it)")
    run, params = load_run(run_dir)
    params = jax.device_get(params)
    written = {}
    with tempfile.TemporaryDirectory() as scratch, atomic_directory(out_dir) as tmp:
        encoder_dir = Path(scratch)
        write_encoder(encoder_dir, run.bert_config, params["bert"], run.encoder_dir / "vocab.txt",
                      run.tokenizer.lowercase, max_length=run.config.max_length)
        for task in run.config.tasks:
            written[task] = export_task(run.config, params, task, encoder_dir, tmp / task, out_dir / task)
        listing = "".join(f"- [{task}]({task}/README.md): {what}\n" for task, what in written.items())
        (tmp / "README.md").write_text(f"# The model of run {run_dir}, one directory per task\n\n{listing}")
        _follow_umask(tmp)
    return written


def _follow_umask(directory: Path) -> None:
    """Gives every file under `directory` the permissions the process umask allows: transformers and
    sentence-transformers write their weight files private (0600)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in directory.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)


def export_task(config: TrainConfig, params: dict, task: str, encoder_dir: Path, out: Path,
                final_dir: Path | None = None) -> str:
    """Writes `task`'s whole model into the new directory `out`, from the run's parameters `params` (numpy) and
    `encoder_dir`, its encoder as a Hugging Face BertModel directory; returns what the directory holds.

    The README's code names `final_dir` (default `out`), where the directory is meant to end up."""
    spec, pooling, mode = config.spec(task), config.pooling_of(task), config.sequence_mode(task)
    shared = params["pair_shared"] if config.shared_layer and spec.is_pair else None
    head = params.get(head_name(spec))
    if mode != "bi" and pooling == "cls" and shared is None:
        case, what = "classifier", f"transformers BertForSequenceClassification ({spec.output_size} output(s))"
        _sequence_classifier(config, task, params, encoder_dir, out)
    elif mode == "cross":
        case, what = "cross", f"sentence-transformers CrossEncoder ({spec.output_size} output(s))"
        modules = _feature_modules(encoder_dir, pooling, params["bert"], shared)
        modules.append(_dense(head, None, output_name="scores"))
        CrossEncoder(modules=modules, device="cpu", activation_fn=torch.nn.Identity()).save(
            str(out), create_model_card=False)
    else:
        modules = _feature_modules(encoder_dir, pooling, params["bert"], shared)
        SentenceTransformer(modules=modules, device="cpu", similarity_fn_name="cosine").save(
            str(out), create_model_card=False)
        if head is None:
            case, what = "cosine", "sentence-transformers SentenceTransformer (the output: cosine of the embeddings)"
        else:
            case, what = "head", ("sentence-transformers SentenceTransformer (the head's features) + "
                                  "heads.safetensors (the head)")
            tensors = {"head.weight": np.ascontiguousarray(np.asarray(head["kernel"], np.float32).T),
                       "head.bias": np.asarray(head["bias"], np.float32)}
            (out / "heads.safetensors").write_bytes(save(tensors, metadata={"format": "pt"}))
    (out / "README.md").write_text(_readme(config, task, what, _usage(config, task, case, final_dir or out), case))
    return what


def _sequence_classifier(config: TrainConfig, task: str, params: dict, encoder_dir: Path, out: Path) -> None:
    """BertForSequenceClassification with the run's encoder and the task's head as its classifier, with the task's
    class names as labels and its training loss's problem_type."""
    spec = config.spec(task)
    if spec.has_class_logits:
        labels = list(spec.class_names or (str(k) for k in range(spec.output_size)))
        problem_type = "single_label_classification"
    else:  # one logit (binary cross-entropy) or a score (squared error)
        labels = [spec.label_column]
        binary = not spec.is_regression or (config.regression_head_of(task) == "linear"
                                            and config.regression_target_of(task) == "binary")
        problem_type = "multi_label_classification" if binary else "regression"
    hf_config = transformers.BertConfig.from_pretrained(
        encoder_dir, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: k for k, label in enumerate(labels)}, problem_type=problem_type)
    model = transformers.BertForSequenceClassification(hf_config)
    head = params[head_name(spec)]
    state = {f"bert.{name}": array for name, array in params_to_state_dict(params["bert"]).items()}
    state |= {"classifier.weight": np.asarray(head["kernel"], np.float32).T, "classifier.bias": head["bias"]}
    model.load_state_dict({name: torch.tensor(np.asarray(array, np.float32)) for name, array in state.items()},
                          strict=True)
    model.save_pretrained(out)
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copyfile(encoder_dir / name, out / name)


def _dense(layer: dict, activation: torch.nn.Module | None, output_name: str = "sentence_embedding") -> Dense:
    """A sentence-transformers Dense layer holding a Flax Dense layer's kernel (transposed) and bias."""
    kernel = np.asarray(layer["kernel"], np.float32)
    return Dense(kernel.shape[0], kernel.shape[1], activation_function=activation,
                 init_weight=torch.tensor(kernel.T.copy()), init_bias=torch.tensor(np.asarray(layer["bias"])),
                 module_output_name=output_name)


def _feature_modules(encoder_dir: Path, pooling: str, bert: dict, shared: dict | None) -> list[torch.nn.Module]:
    """sentence-transformers modules giving what the run's head reads: the encoder, the pooling (cls: the [CLS]
    state through the BERT pooler), and the shared pair layer if any."""
    transformer = Transformer(str(encoder_dir))
    modules = [transformer, Pooling(transformer.get_embedding_dimension(), pooling)]
    if pooling == "cls":
        modules.append(_dense(bert["pooler"]["dense"], torch.nn.Tanh()))
    if shared is not None:
        modules.append(_dense(shared, torch.nn.ReLU()))
    return modules


def _usage(config: TrainConfig, task: str, case: str, directory: Path) -> str:
    """Python code that loads the directory and computes, for `sentences` (one-sentence tasks) or `sentences_a` and
    `sentences_b` (pair tasks), `output`: the run's raw outputs (train/model.py), and `prediction`: its predictions
    (train/losses.py `predictions`)."""
    spec = config.spec(task)
    texts = "sentences_a, sentences_b" if spec.is_pair else "sentences"
    first = "[:, 0]" if spec.output_size == 1 else ""
    lines = [f"DIR = {str(directory)!r}", "import numpy as np"]
    if case == "classifier":
        lines += ["import torch", "from transformers import AutoTokenizer, BertForSequenceClassification", "",
                  "tokenizer = AutoTokenizer.from_pretrained(DIR)",
                  "model = BertForSequenceClassification.from_pretrained(DIR).eval()", "", "",
                  "def outputs(*texts):", "    with torch.no_grad():",
                  "        inputs = tokenizer(*texts, padding=True, truncation=True, return_tensors=\"pt\")",
                  f"        return model(**inputs).logits{first}.numpy()", "", ""]
    elif case == "cross":
        lines += ["from sentence_transformers import CrossEncoder", "", "model = CrossEncoder(DIR)", "", "",
                  "def outputs(a, b):", "    return model.predict(list(zip(a, b)))  # the head's raw outputs", "", ""]
    else:
        lines += [*(["from safetensors.numpy import load_file"] if case == "head" else []),
                  "from sentence_transformers import SentenceTransformer", "", "model = SentenceTransformer(DIR)"]
    if case in ("classifier", "cross"):
        both = config.swap_pairs and config.sequence_mode(task) == "cross"
        lines.append("output = (outputs(sentences_a, sentences_b) + outputs(sentences_b, sentences_a)) / 2" if both
                     else f"output = outputs({texts})")
    elif case == "cosine":
        lines += ["u, v = model.encode(sentences_a), model.encode(sentences_b)",
                  "output = model.similarity_pairwise(u, v).numpy()  # cos(u, v)"]
    else:
        lines.append("head = load_file(f\"{DIR}/heads.safetensors\")")
        if not spec.is_pair:
            lines.append("features = model.encode(sentences)")
        else:
            lines.append("u, v = model.encode(sentences_a), model.encode(sentences_b)")
            if config.uses_cos_feature(task):
                lines += ["norms = np.linalg.norm(u, axis=-1, keepdims=True) * np.linalg.norm(v, axis=-1, "
                          "keepdims=True)",
                          "cos = (u * v).sum(-1, keepdims=True) / np.maximum(norms, 1e-8)",
                          "features = np.concatenate([u, v, cos], axis=-1)"]
            else:
                lines.append("features = np.concatenate([u, v], axis=-1)")
        output = "features @ head[\"head.weight\"].T + head[\"head.bias\"]"
        lines.append(f"output = ({output}){first}" if first else f"output = {output}")
    return "\n".join([*lines, _prediction_code(config, task)])


def _prediction_code(config: TrainConfig, task: str) -> str:
    """The line computing `prediction` from `output` as the run does (train/losses.py `predictions`)."""
    spec = config.spec(task)
    if spec.has_class_logits:
        return "prediction = output.argmax(-1)"
    if not spec.is_regression:
        return "prediction = (output > 0).astype(int)"
    low, high = spec.label_range
    if config.regression_head_of(task) == "linear" and config.regression_target_of(task) == "binary":
        return f"prediction = {low!r} + {high - low!r} / (1 + np.exp(-output))  # sigmoid to the label range"
    return f"prediction = np.clip({low!r} + {high - low!r} * output, {low!r}, {high!r})"


def _meaning(config: TrainConfig, task: str) -> str:
    """What `output` and `prediction` of a task directory's code are, in words."""
    spec = config.spec(task)
    if spec.has_class_logits:
        names = f" ({', '.join(spec.class_names)})" if spec.class_names else ""
        return (f"`output` holds the {spec.output_size} class logits of each example (softmax gives the class "
                f"probabilities); `prediction` is its class id, 0..{spec.output_size - 1}{names}.")
    if not spec.is_regression:
        name = f" ({spec.class_names[1]})" if spec.class_names else ""
        return (f"`output` is each example's logit of {spec.label_column} = 1{name} (sigmoid gives its probability); "
                "`prediction` is 0 or 1.")
    (low, high), label = spec.label_range, spec.label_column
    if config.regression_head_of(task) == "linear" and config.regression_target_of(task) == "binary":
        return (f"`output` is each example's logit of {label} > {spec.threshold:g} (its training target); "
                f"`prediction` is its {label}, in [{low:g}, {high:g}].")
    return f"`output` is each example's score; `prediction` is its {label}, in [{low:g}, {high:g}]."


def _readme(config: TrainConfig, task: str, what: str, usage: str, case: str) -> str:
    """A task directory's README.md: what it holds, how the run encoded the task, and the code from sentences to
    the run's outputs and predictions."""
    spec, mode, pooling = config.spec(task), config.sequence_mode(task), config.pooling_of(task)
    shared = ", then through the shared pair layer (Dense, ReLU)" if config.shared_layer and spec.is_pair else ""
    layout = []
    if case == "head":
        features = ("the embeddings u, v of sentences a and b and cos(u, v), concatenated"
                    if config.uses_cos_feature(task) else
                    "the embeddings u, v of sentences a and b, concatenated" if spec.is_pair else
                    "the sentence's embedding")
        layout = [f"heads.safetensors holds the head in float32: head.weight ({spec.output_size}, features) and "
                  f"head.bias ({spec.output_size},), applied as output = features @ head.weight.T + head.bias, the "
                  f"features being {features}.", ""]
    notes = [f"The tokenizer truncates to the run's {config.max_length} tokens (its model_max_length); the encoder "
             "accepts longer inputs, which the run never saw."]
    if config.dtype != "float32":
        notes.append(f"The run computed the encoder in {config.dtype}; this export computes in float32, so its "
                     "outputs differ slightly from the run's.")
    return "\n".join([
        f"# {task}: {what}", "",
        f"Task {task} ({spec.kind}): {_ENCODING[mode]}, pooled by {_POOLING[pooling]}{shared}.", "",
        "```python", usage, "```", "",
        *layout,
        _meaning(config, task), "",
        *(f"{note}\n" for note in notes),
    ])


def main(argv=None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a training run directory (config.json, checkpoints/best)")
    parser.add_argument("out", metavar="OUT", help="output directory: one subdirectory per task")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    args = parser.parse_args(argv)
    transformers.utils.logging.disable_progress_bar()
    try:
        written = export_run(args.run_dir, args.out, args.force)
    except (CheckpointError, RunError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for task, what in written.items():
        print(f"wrote {Path(args.out) / task}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
