"""Export of a run's whole model (convert/export.py): each task's directory, loaded by its library through the code
of its README, gives the run's outputs and predictions for the dev sentences within 1e-5."""

import os
import re

import numpy as np
import pytest
import transformers
from safetensors.numpy import load_file

from convert import export
from data.tasks import read_rows
from train import loop
from train.config import TrainConfig
from train.run import load_run

# Runs of one epoch whose tasks, together, meet every case of the export.
RUNS = {
    "cls": dict(pair_encoding="sts=cross", shared_layer=True),
    "mean": dict(pooling="mean,sst=max", regression_head="cosine", cos_feature="para"),
    "cross": dict(tasks=("para", "sts"), pooling="mean,para=cls", pair_encoding="cross", regression_target="scaled",
                  swap_pairs=True),
}
CLASSIFIER = "transformers BertForSequenceClassification ({} output(s))"
CROSS_ENCODER = "sentence-transformers CrossEncoder (1 output(s))"
COSINE = "sentence-transformers SentenceTransformer (the output: cosine of the embeddings)"
HEAD = "sentence-transformers SentenceTransformer (the head's features) + heads.safetensors (the head)"
CASES = [
    ("cls", "sst", CLASSIFIER.format(5)),  # one sentence, cls pooling
    ("cls", "para", HEAD),  # bi-encoded, cls pooling, shared layer, linear head over [u, v]
    ("cls", "sts", CROSS_ENCODER),  # cross-encoded, cls pooling, shared layer; logit of the binary target
    ("mean", "sst", HEAD),  # one sentence, max pooling
    ("mean", "para", HEAD),  # bi-encoded, mean pooling, linear head over [u, v, cos(u, v)]
    ("mean", "sts", COSINE),  # bi-encoded, mean pooling, cosine head
    ("cross", "para", CLASSIFIER.format(1)),  # cross-encoded, cls pooling, one logit, both orders averaged
    ("cross", "sts", CROSS_ENCODER),  # cross-encoded, mean pooling, a scaled score, both orders averaged
]


@pytest.fixture(scope="module")
def exported(tiny_encoder, small_data, tmp_path_factory):
    """exported(name) -> (run directory, export directory, {task: what}, Run, best parameters) of RUNS[name],
    trained and exported on first use."""
    done = {}

    def get(name):
        if name not in done:
            run_dir = tmp_path_factory.mktemp(name) / "run"
            config = TrainConfig(init_checkpoint=str(tiny_encoder), data_dir=str(small_data), epochs=1,
                                 samples_per_task=16, batch_size=8, eval_batch_size=32, max_length=32, num_buckets=2,
                                 lr=1e-3, tensorboard=False, **RUNS[name])
            loop.train(config, run_dir, quiet=True)
            written = export.export_run(run_dir, run_dir.parent / "export")
            done[name] = (run_dir, run_dir.parent / "export", written, *load_run(run_dir))
        return done[name]

    return get


def readme_code(directory) -> str:
    """The Python block of a task directory's README.md."""
    return re.search(r"```python\n(.*?)```", (directory / "README.md").read_text(), re.S).group(1)


@pytest.mark.parametrize("name, task, what", CASES, ids=[f"{name}-{task}" for name, task, _ in CASES])
def test_the_library_gives_the_run_outputs_and_predictions(exported, name, task, what):
    _, out, written, run, params = exported(name)
    assert written[task] == what
    spec, data = run.config.spec(task), run.data[task]
    dev = data.split("dev")
    swapped = data.split("dev", swapped=True) if data.swap_pairs else None
    expected = run.predictor.outputs(params, task, dev, data.buckets, swapped)
    rows = read_rows(spec.files["dev"], spec)
    assert rows.ids == dev.ids
    code = readme_code(out / task)
    assert code.startswith(f"DIR = {str(out / task)!r}\n")
    namespace = dict(zip(("sentences_a", "sentences_b") if spec.is_pair else ("sentences",), rows.sentences))
    exec(code, namespace)
    output = np.asarray(namespace["output"])
    assert output.shape == expected.shape == (len(rows),) + ((spec.output_size,) if spec.has_class_logits else ())
    np.testing.assert_allclose(output, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(namespace["prediction"], run.predictor(params, task, dev, data.buckets, swapped),
                               rtol=0, atol=1e-5)


def test_the_cosine_of_the_embeddings_gives_the_run_similarity(exported):
    from sentence_transformers import SentenceTransformer

    _, out, _, run, params = exported("mean")
    spec, data = run.config.spec("sts"), run.data["sts"]
    rows = read_rows(spec.files["dev"], spec)
    model = SentenceTransformer(str(out / "sts"), device="cpu")
    cos = model.similarity_pairwise(*(model.encode(sentences) for sentences in rows.sentences)).numpy()
    (low, high), expected = spec.label_range, run.predictor(params, "sts", data.split("dev"), data.buckets)
    np.testing.assert_allclose(np.clip(low + (high - low) * cos, low, high), expected, rtol=0, atol=1e-5)
    assert "prediction = np.clip(0.0 + 5.0 * output, 0.0, 5.0)" in readme_code(out / "sts")


def test_each_directory_holds_the_encoder_and_its_documented_files(exported):
    _, out, _, run, params = exported("mean")
    hidden = run.bert_config.hidden_size
    heads = {task: load_file(str(out / task / "heads.safetensors")) for task in ("sst", "para")}
    assert {task: {k: v.shape for k, v in tensors.items()} for task, tensors in heads.items()} == {
        "sst": {"head.weight": (5, hidden), "head.bias": (5,)},
        "para": {"head.weight": (1, 2 * hidden + 1), "head.bias": (1,)},
    }
    np.testing.assert_array_equal(heads["para"]["head.weight"], params["para_classifier"]["kernel"].T)
    encoder = transformers.BertModel.from_pretrained(out / "sts")
    np.testing.assert_array_equal(encoder.pooler.dense.weight.detach().numpy(),
                                  params["bert"]["pooler"]["dense"]["kernel"].T)
    assert transformers.AutoTokenizer.from_pretrained(out / "sts").model_max_length == run.config.max_length
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "para", "sst", "sts"]
    _, out, _, _, _ = exported("cross")
    classifier = transformers.BertForSequenceClassification.from_pretrained(out / "para")
    assert (classifier.config.id2label, classifier.config.problem_type) == (
        {0: "is_duplicate"}, "multi_label_classification")
    readme = (out / "para" / "README.md").read_text()
    assert "`output` is each example's logit of is_duplicate = 1 (paraphrase)" in readme
    assert "output = (outputs(sentences_a, sentences_b) + outputs(sentences_b, sentences_a)) / 2" in readme


def test_an_existing_output_is_replaced_only_with_force_and_only_when_complete(exported, capsys, monkeypatch):
    run_dir, out, written, _, _ = exported("cross")
    before = {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*")}
    assert export.main([str(run_dir), str(out)]) == 1
    assert capsys.readouterr().err == f"error: {out}: already exists (pass --force to replace it)\n"

    def failing(config, params, task, *args):
        if task == "sts":
            raise OSError("No space left on device")
        return export_task(config, params, task, *args)

    export_task = export.export_task
    with monkeypatch.context() as patch:
        patch.setattr(export, "export_task", failing)
        with pytest.raises(OSError, match="No space left"):
            export.export_run(run_dir, out, force=True)
    assert {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*")} == before, "the old export is untouched"
    assert sorted(p.name for p in out.parent.iterdir()) == ["export", "run"], "no partial directory beside it"

    previous = os.umask(0o027)
    try:
        assert export.main([str(run_dir), str(out), "--force"]) == 0
    finally:
        os.umask(previous)
    assert capsys.readouterr().out == "".join(f"wrote {out / task}: {what}\n" for task, what in written.items())
    assert sorted(p.name for p in out.parent.iterdir()) == ["export", "run"]
    assert all(p.stat().st_mtime_ns > before[p.relative_to(out)] for p in out.iterdir())
    modes = {oct(p.stat().st_mode & 0o777) for p in out.rglob("*") if p.is_file()}
    assert modes == {"0o640"}, "files follow the umask (the libraries write weights private)"


def test_a_directory_that_is_no_run_is_named(tmp_path, capsys):
    assert export.main([str(tmp_path), str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == f"error: {tmp_path}: not a run directory (no config.json)\n"
    assert not (tmp_path / "out").exists()
