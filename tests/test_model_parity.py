"""Flax BertModel against the PyTorch reference (transformers' BertModel) on the same weights."""

import jax
import numpy as np
import pytest
import torch
import transformers

from flax.traverse_util import flatten_dict

from bert_flax import BertConfig, BertModel, Tokenizer, from_pretrained, load_config
from convert.pt_to_flax import convert_checkpoint, state_dict_to_params
from tests.helpers import task_sentences, torch_forward

TOLERANCE = 1e-5  # max |difference|, float32


def flax_forward(model: BertModel, params, batch: dict):
    out = jax.jit(model.apply)({"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    return np.asarray(out["last_hidden_state"]), np.asarray(out["pooler_output"])


def max_differences(flax_dir, torch_model, batch):
    """Max |difference| on unmasked positions of last_hidden_state, and on pooler_output."""
    model, params = from_pretrained(flax_dir)
    hidden, pooled = flax_forward(model, params, batch)
    ref_hidden, ref_pooled = torch_forward(torch_model, batch)
    mask = batch["attention_mask"].astype(bool)
    return np.abs(hidden[mask] - ref_hidden[mask]).max(), np.abs(pooled - ref_pooled).max()


def real_batch(tokenizer: Tokenizer, pairs: bool = False) -> dict:
    """Real task sentences of different lengths, padded to the longest (pairs: token types 0 and 1)."""
    sentences = task_sentences(16, seed=1)
    if pairs:
        return tokenizer(sentences[:8], sentences[8:], max_length=128)
    return tokenizer(sentences, max_length=128)


@pytest.mark.parametrize("pairs", [False, True], ids=["single", "pairs"])
def test_minilm_matches_pytorch(minilm_torch_dir, minilm_flax_dir, pairs):
    torch_model = transformers.BertModel.from_pretrained(minilm_torch_dir).eval()
    batch = real_batch(Tokenizer.from_pretrained(minilm_flax_dir), pairs)
    assert (batch["attention_mask"] == 0).any(), "the batch must contain padding"
    hidden_diff, pooled_diff = max_differences(minilm_flax_dir, torch_model, batch)
    print(f"MiniLM {'pairs' if pairs else 'single'}: hidden {hidden_diff:.2e}, pooler {pooled_diff:.2e}")
    assert hidden_diff <= TOLERANCE and pooled_diff <= TOLERANCE


def randomized_torch_bert(config: transformers.BertConfig, seed: int) -> transformers.BertModel:
    """A BertModel whose every tensor (LayerNorm and biases included) is random, so a mis-mapped name shows."""
    torch.manual_seed(seed)
    model = transformers.BertModel(config).eval()
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if name.endswith("LayerNorm.weight"):
                tensor.copy_(1.0 + 0.1 * torch.randn_like(tensor))
            else:
                tensor.copy_(0.02 * torch.randn_like(tensor))
    return model


@pytest.mark.parametrize(
    "shape",
    [
        dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),  # bert-base
        dict(hidden_size=1024, num_hidden_layers=2, num_attention_heads=16, intermediate_size=4096),  # bert-large layer
    ],
    ids=["bert-base", "bert-large-layer"],
)
def test_random_weights_at_bert_shapes(minilm_torch_dir, tmp_path, shape):
    config = transformers.BertConfig(vocab_size=30522, **shape)
    torch_model = randomized_torch_bert(config, seed=0)
    torch_model.save_pretrained(tmp_path / "torch")
    (tmp_path / "torch" / "vocab.txt").write_bytes((minilm_torch_dir / "vocab.txt").read_bytes())
    summary = convert_checkpoint(tmp_path / "torch", tmp_path / "flax")
    assert summary.parameters == sum(p.numel() for p in torch_model.parameters())
    batch = real_batch(Tokenizer.from_pretrained(tmp_path / "flax"), pairs=True)
    hidden_diff, pooled_diff = max_differences(tmp_path / "flax", torch_model, batch)
    print(f"{shape}: hidden {hidden_diff:.2e}, pooler {pooled_diff:.2e}")
    assert hidden_diff <= TOLERANCE and pooled_diff <= TOLERANCE


def test_gradients_match_pytorch(minilm_torch_dir, tmp_path):
    """Every parameter's gradient of a fixed random linear function of the hidden states and the pooler output,
    against PyTorch's on the same random 3-layer weights (the layers run through one jitted function of their
    parameters: each must still get its own gradient)."""
    config = transformers.BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                     intermediate_size=128)
    torch_model = randomized_torch_bert(config, seed=1)
    torch_model.save_pretrained(tmp_path / "torch")
    (tmp_path / "torch" / "vocab.txt").write_bytes((minilm_torch_dir / "vocab.txt").read_bytes())
    convert_checkpoint(tmp_path / "torch", tmp_path / "flax")
    batch = real_batch(Tokenizer.from_pretrained(tmp_path / "flax"), pairs=True)
    rng = np.random.default_rng(3)
    hidden_weights = rng.normal(size=(*batch["input_ids"].shape, 64)).astype(np.float32)
    hidden_weights *= batch["attention_mask"][..., None]  # padded positions' states are not compared
    pooled_weights = rng.normal(size=(len(batch["input_ids"]), 64)).astype(np.float32)

    out = torch_model(**{k: torch.from_numpy(np.asarray(v)).long() for k, v in batch.items()})
    ((out.last_hidden_state * torch.from_numpy(hidden_weights)).sum()
     + (out.pooler_output * torch.from_numpy(pooled_weights)).sum()).backward()
    torch_grads = {name: p.grad.numpy() for name, p in torch_model.named_parameters()}
    want, _ = state_dict_to_params(torch_grads, load_config(tmp_path / "flax"), "PyTorch gradients")

    model, params = from_pretrained(tmp_path / "flax")

    def objective(p):
        out = model.apply({"params": p}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        return (out["last_hidden_state"] * hidden_weights).sum() + (out["pooler_output"] * pooled_weights).sum()

    got = flatten_dict(jax.jit(jax.grad(objective))(params))
    want = flatten_dict(want)
    assert sorted(got) == sorted(want)
    for path, expected in want.items():
        ours = np.asarray(got[path])
        if path[-2:] == ("key", "bias"):
            # Exactly zero: softmax ignores a shift that is the same for every key. Both are rounding noise,
            # far below the gradient of the key kernel beside it.
            kernel_scale = np.abs(want[(*path[:-1], "kernel")]).max()
            assert max(np.abs(ours).max(), np.abs(expected).max()) <= 1e-6 * kernel_scale, path
            continue
        error = np.abs(ours - expected).max() / np.abs(expected).max()
        assert error <= 1e-5, f"{'/'.join(path)}: max |difference| {error:.1e} of the largest gradient"


def test_mean_pooled_embeddings_match_sentence_transformers(minilm_torch_dir, minilm_flax_dir):
    from sentence_transformers import SentenceTransformer

    sentences = task_sentences(24, seed=2)
    reference = SentenceTransformer(str(minilm_torch_dir), device="cpu").encode(sentences, convert_to_numpy=True)
    model, params = from_pretrained(minilm_flax_dir)
    batch = Tokenizer.from_pretrained(minilm_flax_dir)(sentences, max_length=256)
    hidden, _ = flax_forward(model, params, batch)
    mask = batch["attention_mask"][..., None].astype(np.float32)
    mean = (hidden * mask).sum(1) / mask.sum(1)
    ours = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    reference = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    cosines = (ours * reference).sum(1)
    print(f"min cosine {cosines.min():.8f}")
    assert cosines.min() >= 0.99999


def test_dropout_is_off_by_default_and_on_when_asked(minilm_flax_dir):
    model, params = from_pretrained(minilm_flax_dir)
    batch = Tokenizer.from_pretrained(minilm_flax_dir)(["dropout changes this sentence's states"])
    args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    first = model.apply({"params": params}, *args)["last_hidden_state"]
    again = model.apply({"params": params}, *args)["last_hidden_state"]
    dropped = model.apply({"params": params}, *args, deterministic=False, rngs={"dropout": jax.random.key(0)})
    np.testing.assert_array_equal(first, again)
    assert np.abs(np.asarray(dropped["last_hidden_state"]) - np.asarray(first)).max() > 1e-2


def test_the_layers_share_one_trace():
    """The encoder's layers are calls of one jitted function, traced once for all of them (with dropout on)."""
    config = BertConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64)
    model, ids = BertModel(config), jax.numpy.ones((2, 8), jax.numpy.int32)
    params = model.init(jax.random.key(0), ids)["params"]
    jaxpr = jax.make_jaxpr(lambda p: model.apply({"params": p}, ids, deterministic=False,
                                                 rngs={"dropout": jax.random.key(1)}))(params)
    calls = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "jit" and e.params["name"] == "bert_layer"]
    assert len(calls) == 4 and len({id(e.params["jaxpr"]) for e in calls}) == 1
    assert len({str(e.invars[-1]) for e in calls}) == 4  # each layer its own dropout rng


def test_fused_attention_runs_the_einsum_path_under_attention_dropout(minilm_flax_dir):
    """JAX exposes no dropout for cuDNN's attention kernel: with attention dropout on, a fused_attention model
    computes exactly what the einsum model does (and so runs on a CPU)."""
    model, params = from_pretrained(minilm_flax_dir)
    fused = BertModel(model.config, model.dtype, fused_attention=True)
    batch = Tokenizer.from_pretrained(minilm_flax_dir)(task_sentences(4, seed=5))
    args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    rngs = {"dropout": jax.random.key(1)}
    plain = model.apply({"params": params}, *args, deterministic=False, rngs=rngs)["last_hidden_state"]
    same = fused.apply({"params": params}, *args, deterministic=False, rngs=rngs)["last_hidden_state"]
    np.testing.assert_array_equal(plain, same)


def test_bfloat16_compute_keeps_float32_params(minilm_flax_dir):
    import jax.numpy as jnp

    model, params = from_pretrained(minilm_flax_dir, dtype=jnp.bfloat16)
    batch = Tokenizer.from_pretrained(minilm_flax_dir)(task_sentences(4, seed=3))
    hidden, _ = flax_forward(model, params, batch)
    reference, _ = flax_forward(from_pretrained(minilm_flax_dir)[0], params, batch)
    mask = batch["attention_mask"].astype(bool)
    assert hidden.dtype == jnp.bfloat16
    assert all(leaf.dtype == np.float32 for leaf in jax.tree_util.tree_leaves(params))
    # bfloat16 has an 8-bit mantissa: states agree to a few percent of their scale, not bit for bit.
    assert np.abs(hidden.astype(np.float32)[mask] - reference[mask]).max() < 0.1 * np.abs(reference).max()


@pytest.mark.parametrize("jit", [False, True])
def test_bfloat16_dense_and_gradients_match_float64(jit):
    """The bfloat16 Dense (float32 accumulation and bias, weight gradient through a physical transpose and bias
    gradient as a product on CPU) against float64 statements on the same bfloat16 operands."""
    import jax.numpy as jnp

    from bert_flax.modeling import LowPrecisionDense

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 5, 48)), jnp.bfloat16)
    params = {"kernel": jnp.asarray(rng.standard_normal((48, 40)) * 0.1, jnp.float32),
              "bias": jnp.asarray(rng.standard_normal(40), jnp.float32)}
    weights = rng.standard_normal((3, 5, 40))
    dense = LowPrecisionDense(40, jnp.bfloat16)
    assert jax.tree_util.tree_map(jnp.shape, dense.init(jax.random.key(0), x)["params"]) == \
        jax.tree_util.tree_map(jnp.shape, params)

    def loss(x, params):
        out = dense.apply({"params": params}, x)
        return jnp.sum(out.astype(jnp.float32) * weights), out

    (_, out), (grad_x, grads) = (jax.jit if jit else lambda f: f)(
        jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(x, params)
    x64 = np.asarray(x, np.float64)
    kernel64 = np.asarray(params["kernel"].astype(jnp.bfloat16), np.float64)  # the kernel the product reads
    # The gradient reaching the product is that of a bfloat16 output: the weights rounded to bfloat16.
    grad_out = np.asarray(jnp.asarray(weights, jnp.bfloat16), np.float64)
    assert out.dtype == grad_x.dtype == jnp.bfloat16
    assert grads["kernel"].dtype == grads["bias"].dtype == jnp.float32
    # Outputs and the input gradient are accumulated in float32 and rounded once to bfloat16 (8-bit mantissa);
    # the parameter gradients stay float32 (float32 accumulation of bfloat16 products: exact to float32 here).
    for got, want, rtol in ((out, x64 @ kernel64 + np.asarray(params["bias"], np.float64), 2 ** -8),
                            (grad_x, grad_out @ kernel64.T, 2 ** -8),
                            (grads["kernel"], np.einsum("bli,blo->io", x64, grad_out), 1e-6),
                            (grads["bias"], grad_out.sum(axis=(0, 1)), 1e-6)):
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("rate, shape, dtype", [(0.1, (1001, 999), "float32"), (0.3, (7, 3, 5), "float32"),
                                               (0.1, (64, 33), "bfloat16"), (0.0, (4, 4), "float32")])
def test_dropout_keeps_the_right_fraction_and_rescales_exactly(rate, shape, dtype):
    import jax.numpy as jnp

    from bert_flax.modeling import Dropout

    x = jnp.asarray(np.random.default_rng(0).uniform(1, 2, shape), dtype)
    dropout = Dropout(rate)
    out = np.asarray(dropout.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(1, impl="rbg")}))
    again = np.asarray(dropout.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(1, impl="rbg")}))
    other = np.asarray(dropout.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(2, impl="rbg")}))
    np.testing.assert_array_equal(out, again)
    np.testing.assert_array_equal(np.asarray(dropout.apply({}, x, deterministic=True)), np.asarray(x))
    kept = out != 0
    keep = round((1 - rate) * 2**32) / 2**32
    assert out.dtype == x.dtype
    ratio = out[kept].astype(np.float64) / np.asarray(x, np.float64)[kept] * keep  # 1 up to rounding
    if dtype == "float32":
        np.testing.assert_allclose(ratio, 1, rtol=2.4e-7)  # 2 ulp
    else:
        # Each value rounded once to bfloat16, without a bias (a keep probability rounded to bfloat16 gives 1.7e-3).
        assert np.abs(ratio - 1).max() <= 2 ** -8 and abs(ratio.mean() - 1) < 2e-4
    if rate:
        # 10^6 draws: the kept fraction is within 5 standard deviations of the keep probability, and the masks
        # of two keys agree as often as independent masks would.
        assert abs(kept.mean() - keep) < 5 * np.sqrt(keep * (1 - keep) / kept.size) + 1 / kept.size
        agree, expected = (kept == (other != 0)).mean(), keep**2 + (1 - keep) ** 2
        assert abs(agree - expected) < 5 * np.sqrt(expected * (1 - expected) / kept.size) + 1 / kept.size
    else:
        assert kept.all()
