"""BERT encoder in Flax linen.

One module per BERT part; submodule and parameter names mirror Hugging Face's
PyTorch BertModel, so `encoder.layer.3.attention.self.query.weight` lives at
`encoder/layer_3/attention/self/query/kernel` (transposed).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from .config import BertConfig

__all__ = ["BertModel", "Dropout", "LowPrecisionDense"]

_ACTIVATIONS = {
    # Written with erf: jax.nn.gelu(approximate=False) lowers to erfc, which XLA:CPU runs more slowly
    # (docs/benchmarks.md).
    "gelu": lambda x: 0.5 * x * (1.0 + jax.lax.erf(x / jnp.sqrt(2.0).astype(x.dtype))),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


def _physical_transpose(matrix: jax.Array) -> jax.Array:
    """matrix.T as a real copy. XLA folds a plain transpose into the dot that reads it as a layout, and XLA:CPU
    runs a bfloat16 dot whose left operand contracts over its first dimension (a weight gradient, x.T @ dy) far
    more slowly than the other form (figures in docs/benchmarks.md): the flat copy behind an optimization
    barrier keeps the transposed order in memory."""
    rows, cols = matrix.shape
    return jax.lax.optimization_barrier(matrix.T.reshape(-1)).reshape(cols, rows)


def _matmul(a: jax.Array, b: jax.Array, contract: tuple[int, int]) -> jax.Array:
    """a @ b contracting a's dimension contract[0] with b's contract[1], accumulated and returned in float32."""
    return jax.lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((), ())), preferred_element_type=jnp.float32)


@jax.custom_vjp
def _low_precision_dense_on_cpu(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """x (n, in) @ kernel (in, out) + bias for a 16-bit x and float32 parameters: the kernel rounded to x's dtype,
    the product accumulated in float32, the bias added in float32, one rounding of the sum to x's dtype."""
    return _low_precision_dense_on_cpu_fwd(x, kernel, bias)[0]


def _low_precision_dense_on_cpu_fwd(x, kernel, bias):
    low_kernel = kernel.astype(x.dtype)
    return (_matmul(x, low_kernel, (1, 0)) + bias).astype(x.dtype), (x, low_kernel)


def _low_precision_dense_on_cpu_bwd(residuals, grad):
    """Each gradient a product in the forms XLA:CPU runs fast in 16 bits: the weight gradient from a physical
    transpose of x, and the bias gradient as ones @ grad (XLA:CPU sums the columns of a 16-bit matrix as a slow
    reduction: 11% of a bfloat16 encoder gradient). Parameter gradients are float32 and never rounded to 16 bits."""
    x, low_kernel = residuals
    grad = grad.astype(x.dtype)
    grad_x = _matmul(grad, low_kernel, (1, 1)).astype(x.dtype)
    grad_kernel = _matmul(_physical_transpose(x), grad, (1, 0))
    grad_bias = _matmul(jnp.ones((1, x.shape[0]), x.dtype), grad, (1, 0))[0]
    return grad_x, grad_kernel, grad_bias


_low_precision_dense_on_cpu.defvjp(_low_precision_dense_on_cpu_fwd, _low_precision_dense_on_cpu_bwd)


def _low_precision_dense(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """x (..., in) @ kernel + bias in x's 16-bit dtype, with float32 kernel and bias. On CPU the custom product
    above; elsewhere what nn.Dense computes (parameters rounded to x's dtype), which GPU libraries run well."""

    def on_cpu(x, kernel, bias):
        out = _low_precision_dense_on_cpu(x.reshape(-1, x.shape[-1]), kernel, bias)
        return out.reshape(*x.shape[:-1], kernel.shape[-1])

    def elsewhere(x, kernel, bias):
        return x @ kernel.astype(x.dtype) + bias.astype(x.dtype)

    return jax.lax.platform_dependent(x, kernel, bias, cpu=on_cpu, default=elsewhere)


class LowPrecisionDense(nn.Module):
    """nn.Dense with its parameters (float32 `kernel` and `bias`, the same names and initialisers) computing in a
    16-bit dtype through `_low_precision_dense` (figures in docs/benchmarks.md)."""

    features: int
    dtype: jnp.dtype = jnp.bfloat16

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.normal(0.02), (x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        return _low_precision_dense(x.astype(self.dtype), kernel, bias)


def _dense(features: int, dtype, name: str) -> nn.Module:
    if jnp.dtype(dtype).itemsize < 4:
        return LowPrecisionDense(features, dtype, name=name)
    return nn.Dense(features, dtype=dtype, kernel_init=nn.initializers.normal(0.02), name=name)


def _hash32(words: jax.Array) -> jax.Array:
    """Chris Wellons' "lowbias32" integer hash of uint32 words: a bijection whose output bits each flip with
    probability close to 1/2 when any input bit flips."""
    words = words ^ (words >> 16)
    words = words * jnp.uint32(0x7FEB352D)
    words = words ^ (words >> 15)
    words = words * jnp.uint32(0x846CA68B)
    return words ^ (words >> 16)


class Dropout(nn.Module):
    """Inverted dropout (the "dropout" rng) with a counter-based keep mask: element i is kept where
    hash(hash(i ^ k0) ^ k1) < round(keep * 2^32), with (k0, k1) two 32-bit words drawn from the rng, and kept
    values are divided by that exact keep probability.

    Why not jax.random.bits per element: XLA:CPU's random bit generator runs as a separate loop that writes
    every word to memory, where the hash is a few integer operations that XLA fuses into the select that
    applies the mask (timings in docs/benchmarks.md). The two hash rounds keep masks under different keys
    unrelated (one round would make them shifted copies of each other)."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0:
            return x
        if x.size > 2**32:
            raise ValueError(f"Dropout: {x.size} elements exceed the 2^32 indices of its uint32 counter")
        threshold = min(round((1.0 - self.rate) * 2**32), 2**32 - 1)
        key_words = jax.random.bits(self.make_rng("dropout"), (2,), jnp.uint32)
        index = jax.lax.iota(jnp.uint32, x.size).reshape(x.shape)
        random = _hash32(_hash32(index ^ key_words[0]) ^ key_words[1])
        # Rescaled in float32: the keep probability rounded to bfloat16 would bias every kept value by ~0.2%.
        kept = (x.astype(jnp.float32) / (threshold / 2**32)).astype(x.dtype)
        return jnp.where(random < jnp.uint32(threshold), kept, jnp.zeros((), x.dtype))


def _layer_norm(config: BertConfig, dtype, name: str) -> nn.LayerNorm:
    # use_fast_variance=False: E[(x - mean)^2] as PyTorch computes it, not E[x^2] - mean^2.
    return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=dtype, use_fast_variance=False, name=name)


class BertEmbeddings(nn.Module):
    """Word + position + token type embeddings, then LayerNorm and dropout."""

    config: BertConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids, token_type_ids, position_ids, deterministic: bool):
        cfg = self.config
        init = nn.initializers.normal(0.02)
        words = nn.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=init, name="word_embeddings")(input_ids)
        positions = nn.Embed(
            cfg.max_position_embeddings, cfg.hidden_size, embedding_init=init, name="position_embeddings"
        )(position_ids)
        types = nn.Embed(cfg.type_vocab_size, cfg.hidden_size, embedding_init=init, name="token_type_embeddings")(
            token_type_ids
        )
        hidden = _layer_norm(cfg, self.dtype, "LayerNorm")(words + positions + types)
        return Dropout(cfg.hidden_dropout_prob)(hidden, deterministic=deterministic)


class BertSelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention with an additive padding mask.

    `fused_attention` runs cuDNN's flash attention (GPU only) in place of the einsum + softmax path
    whenever no attention dropout applies: JAX exposes no dropout for that kernel."""

    config: BertConfig
    dtype: jnp.dtype = jnp.float32
    fused_attention: bool = False

    @nn.compact
    def __call__(self, hidden, attention_bias, deterministic: bool):
        cfg = self.config
        heads = cfg.num_attention_heads
        head_dim = cfg.hidden_size // heads

        def project(name):
            # (batch, length, heads, head_dim)
            x = _dense(cfg.hidden_size, self.dtype, name)(hidden)
            return x.reshape(x.shape[:-1] + (heads, head_dim))

        query, key, value = project("query"), project("key"), project("value")
        dropout = Dropout(cfg.attention_probs_dropout_prob)
        if self.fused_attention and (deterministic or dropout.rate == 0):
            length = hidden.shape[1]
            attended = jnp.broadcast_to(attention_bias == 0, (hidden.shape[0], 1, length, length))
            context = jax.nn.dot_product_attention(query, key, value, mask=attended, implementation="cudnn")
        else:
            # With the heads leading, the two attention products are plain batched matrix products, which
            # XLA:CPU runs faster than with the heads in the middle (docs/benchmarks.md).
            query, key, value = (x.transpose(0, 2, 1, 3) for x in (query, key, value))
            scores = jnp.einsum("bhqd,bhkd->bhqk", query, key) / jnp.sqrt(head_dim).astype(self.dtype)
            # Softmax in float32 even when computing in bfloat16.
            probs = jax.nn.softmax(scores.astype(jnp.float32) + attention_bias, axis=-1).astype(self.dtype)
            probs = dropout(probs, deterministic=deterministic)
            context = jnp.einsum("bhqk,bhkd->bhqd", probs, value).transpose(0, 2, 1, 3)
        return context.reshape(context.shape[:-2] + (cfg.hidden_size,))


class BertOutput(nn.Module):
    """Projection back to the hidden size, dropout, residual and LayerNorm (after attention and after the
    feed-forward)."""

    config: BertConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, context, residual, deterministic: bool):
        hidden = _dense(self.config.hidden_size, self.dtype, "dense")(context)
        hidden = Dropout(self.config.hidden_dropout_prob)(hidden, deterministic=deterministic)
        return _layer_norm(self.config, self.dtype, "LayerNorm")(hidden + residual)


class BertAttention(nn.Module):
    """Self-attention block: `self` (query/key/value) and `output`."""

    config: BertConfig
    dtype: jnp.dtype = jnp.float32
    fused_attention: bool = False

    @nn.compact
    def __call__(self, hidden, attention_bias, deterministic: bool):
        self_attention = BertSelfAttention(self.config, self.dtype, self.fused_attention, name="self")
        context = self_attention(hidden, attention_bias, deterministic)
        return BertOutput(self.config, self.dtype, name="output")(context, hidden, deterministic)


class BertIntermediate(nn.Module):
    """Feed-forward expansion with the configured activation (GELU)."""

    config: BertConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, hidden):
        hidden = _dense(self.config.intermediate_size, self.dtype, "dense")(hidden)
        # In float32 whatever the dtype: XLA:CPU computes a bfloat16 erf GELU (forward and backward) in about twice
        # the time of a float32 one (docs/benchmarks.md), and the float32 one is the more exact.
        return _ACTIVATIONS[self.config.hidden_act](hidden.astype(jnp.float32)).astype(self.dtype)


class BertLayer(nn.Module):
    """One post-LayerNorm transformer layer."""

    config: BertConfig
    dtype: jnp.dtype = jnp.float32
    fused_attention: bool = False

    @nn.compact
    def __call__(self, hidden, attention_bias, deterministic: bool):
        attention = BertAttention(self.config, self.dtype, self.fused_attention, name="attention")
        hidden = attention(hidden, attention_bias, deterministic)
        expanded = BertIntermediate(self.config, self.dtype, name="intermediate")(hidden)
        return BertOutput(self.config, self.dtype, name="output")(expanded, hidden, deterministic)


class BertPooler(nn.Module):
    """Dense + tanh on the [CLS] position."""

    config: BertConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, hidden):
        return jnp.tanh(_dense(self.config.hidden_size, self.dtype, "dense")(hidden[:, 0]))


@functools.lru_cache(maxsize=None)
def _jitted_layer(config: BertConfig, dtype, fused_attention: bool, deterministic: bool):
    """(layer params, hidden, attention_bias, dropout rng or None) -> hidden, one jitted function per layer kind."""
    layer = BertLayer(config, dtype, fused_attention)

    def bert_layer(params, hidden, attention_bias, rng):
        rngs = None if rng is None else {"dropout": rng}
        return layer.apply({"params": params}, hidden, attention_bias, deterministic, rngs=rngs)

    return jax.jit(bert_layer)


class BertEncoder(nn.Module):
    """The stack of transformer layers, named layer_0 ... layer_{N-1}.

    Once initialized, every layer runs through one jitted function of its parameters: JAX traces (and
    differentiates) a layer once per input shape instead of once per layer. XLA inlines the calls: without
    dropout the jitted outputs are bitwise those of calling each layer's module. Each layer draws its own
    dropout rng at the encoder."""

    config: BertConfig
    dtype: jnp.dtype = jnp.float32
    fused_attention: bool = False

    @nn.compact
    def __call__(self, hidden, attention_bias, deterministic: bool):
        config, names = self.config, [f"layer_{i}" for i in range(self.config.num_hidden_layers)]
        if self.is_initializing():
            for name in names:
                hidden = BertLayer(config, self.dtype, self.fused_attention, name=name)(
                    hidden, attention_bias, deterministic)
            return hidden
        layer = _jitted_layer(config, jnp.dtype(self.dtype), self.fused_attention, deterministic)
        dropout = not deterministic and (config.hidden_dropout_prob > 0 or config.attention_probs_dropout_prob > 0)
        for name in names:
            rng = self.make_rng("dropout") if dropout else None
            hidden = layer(self.variables["params"][name], hidden, attention_bias, rng)
        return hidden


class BertModel(nn.Module):
    """BERT: embeddings, encoder and pooler.

    `dtype` is the computation dtype (e.g. jnp.bfloat16 on GPUs); parameters stay float32.
    `fused_attention=True` computes attention with cuDNN's flash attention wherever no attention
    dropout applies: NVIDIA GPUs only, 16-bit dtype, head size a multiple of 8, and an even length
    when training (jax.nn.dot_product_attention names what it cannot run).
    Returns a dict with `last_hidden_state` (batch, length, hidden) and `pooler_output`
    (batch, hidden). Dropout is active only with `deterministic=False` and a "dropout" rng.
    """

    config: BertConfig
    dtype: jnp.dtype = jnp.float32
    fused_attention: bool = False

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, deterministic=True):
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)
        hidden = BertEmbeddings(self.config, self.dtype, name="embeddings")(
            input_ids, token_type_ids, position_ids, deterministic
        )
        # (batch, 1, 1, key): 0 where attended, a large negative number at padding.
        attention_bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
        encoder = BertEncoder(self.config, self.dtype, self.fused_attention, name="encoder")
        hidden = encoder(hidden, attention_bias, deterministic)
        pooled = BertPooler(self.config, self.dtype, name="pooler")(hidden)
        return {"last_hidden_state": hidden, "pooler_output": pooled}
