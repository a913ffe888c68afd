"""BertModel(fused_attention=True): outputs and gradients against the einsum attention path.

On a CPU, jax's XLA implementation of dot_product_attention stands in for cuDNN's kernel, which
checks what this project writes (the BTNH layout and the padding mask handed to the kernel). On an
NVIDIA GPU the second test checks cuDNN itself, forward and backward, in bfloat16.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_flax import BertConfig, BertModel


def padded_batch(batch_size: int, length: int, vocab_size: int, seed: int) -> dict:
    """Random ids with real lengths from 3 to `length` (an even length: cuDNN's backward needs one)."""
    rng = np.random.default_rng(seed)
    lengths = np.linspace(3, length, batch_size).round().astype(int)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(1, vocab_size, (batch_size, length)) * mask
    return {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask)}


def hidden_and_gradients(model: BertModel, params, batch: dict, projection: jax.Array):
    """Last hidden states and the gradients of a random projection of them on the real tokens: every
    parameter below the last layer gets a gradient that the attention's backward pass shapes."""

    def loss(p):
        hidden = model.apply({"params": p}, batch["input_ids"], batch["attention_mask"])["last_hidden_state"]
        real = batch["attention_mask"][..., None].astype(jnp.float32)
        return jnp.sum(hidden.astype(jnp.float32) * projection * real), hidden

    (_, hidden), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return np.asarray(hidden, np.float32), grads


def relative_errors(grads, reference) -> dict[str, float]:
    """Per parameter: ||g - reference|| / ||reference||, the denominator at least a thousandth of the largest
    parameter's: the key bias's gradient is zero in exact arithmetic (a shift common to all of a query's
    scores leaves the softmax unchanged), so only rounding noise is there to compare."""
    flat, ref = (jax.tree_util.tree_flatten_with_path(g)[0] for g in (grads, reference))
    norms = [np.linalg.norm(np.asarray(r, np.float64)) for _, r in ref]
    floor = 1e-3 * max(norms)
    return {jax.tree_util.keystr(path): float(np.linalg.norm(np.asarray(g, np.float64) - np.asarray(r, np.float64))
                                               / max(norm, floor))
            for (path, g), (_, r), norm in zip(flat, ref, norms)}


def setup(config: BertConfig, batch_size: int, length: int):
    model = BertModel(config)
    batch = padded_batch(batch_size, length, config.vocab_size, seed=0)
    params = model.init(jax.random.key(0), batch["input_ids"], batch["attention_mask"])["params"]
    projection = jax.random.normal(jax.random.key(1), (batch_size, length, config.hidden_size))
    return model, params, batch, projection


def test_fused_attention_layout_and_mask_match_the_einsum_path(monkeypatch):
    config = BertConfig(vocab_size=101, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64)
    model, params, batch, projection = setup(config, batch_size=6, length=24)
    real = np.asarray(batch["attention_mask"], bool)
    want_hidden, want_grads = hidden_and_gradients(model, params, batch, projection)
    cudnn_attention = jax.nn.dot_product_attention

    def xla_attention(*args, implementation, **kwargs):
        assert implementation == "cudnn"
        return cudnn_attention(*args, implementation="xla", **kwargs)

    monkeypatch.setattr(jax.nn, "dot_product_attention", xla_attention)
    fused = BertModel(config, fused_attention=True)
    got_hidden, got_grads = hidden_and_gradients(fused, params, batch, projection)
    np.testing.assert_allclose(got_hidden[real], want_hidden[real], rtol=1e-5, atol=1e-5)
    errors = relative_errors(got_grads, want_grads)
    assert max(errors.values()) < 1e-5, {k: v for k, v in errors.items() if v >= 1e-5}


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs an NVIDIA GPU")
def test_cudnn_attention_gradients_are_as_close_to_float32_as_the_einsum_path():
    """bfloat16, bert-base width (2 layers): fused attention's hidden states and gradients may differ from
    the float32 einsum model's by no more than the bfloat16 einsum path's do (with 25% slack)."""
    config = BertConfig(hidden_size=768, num_hidden_layers=2, num_attention_heads=12, intermediate_size=3072)
    model, params, batch, projection = setup(config, batch_size=16, length=128)
    real = np.asarray(batch["attention_mask"], bool)
    reference_hidden, reference_grads = hidden_and_gradients(model, params, batch, projection)
    results = {}
    for name, fused in (("einsum", False), ("fused", True)):
        variant = BertModel(config, dtype=jnp.bfloat16, fused_attention=fused)
        hidden, grads = hidden_and_gradients(variant, params, batch, projection)
        results[name] = (np.abs(hidden[real] - reference_hidden[real]).mean(), relative_errors(grads, reference_grads))
    print({name: (hidden_error, max(errors.values())) for name, (hidden_error, errors) in results.items()})
    assert results["fused"][0] <= 1.25 * results["einsum"][0]
    einsum_errors = results["einsum"][1]
    # The key bias's gradient is zero in exact arithmetic, so both paths give rounding noise there, and cuDNN's
    # is larger: its backward pass takes the softmax correction from the bfloat16 output (H200: 6.8e-6 of the
    # largest gradient norm, einsum 2.3e-6). It must stay negligible: under 1e-4 of that norm (0.1 of the floor).
    too_far = {path: (error, einsum_errors[path]) for path, error in results["fused"][1].items()
               if error > (0.1 if path.endswith("['key']['bias']") else 1.25 * einsum_errors[path] + 1e-3)}
    assert not too_far, too_far
