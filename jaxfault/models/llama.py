"""Llama (Hugging Face's LlamaForCausalLM) in Flax; Mistral and Qwen2 checkpoints map onto it.

Token embedding, ``num_hidden_layers`` pre-norm decoder layers (RMSNorm -> causal grouped-query
attention with rotary position embeddings -> residual, RMSNorm -> SwiGLU MLP -> residual), a final
RMSNorm and the LM head (tied to the embedding when ``tie_word_embeddings``).

Rotary embeddings are Hugging Face's default RoPE: inverse frequencies
1 / theta^(2j / head_dim) for j < head_dim / 2, angles position x frequency in float32,
cos/sin of the angles repeated over both halves and cast to the activations' dtype, and
q' = q cos + rotate_half(q) sin with rotate_half(x) = concat(-x2, x1) over the halves of x.

The Mistral and Qwen2 variants differ only in fields: Qwen2 has biases on q/k/v but not on the
output projection (``qkv_bias`` and ``o_bias``), Llama's ``attention_bias`` puts them on all
four, and a sliding window (Mistral's ``sliding_window``, Qwen2's sliding layers) is a per-layer
window ``layer_windows[i]`` (0: full causal attention) with Hugging Face's mask: query i sees
key j when i - window < j <= i.

Module paths (the parameter tree) and their Hugging Face names, layer i (Hugging Face ``nn.Linear``
weights are (out, in), Flax kernels (in, out): every projection is transposed on load):

======================================  ==============================================  ==========
Flax path                                Hugging Face tensor                             kind
======================================  ==============================================  ==========
embed_tokens/kernel                      model.embed_tokens.weight                       embeddings
layers_i/input_layernorm/scale           model.layers.i.input_layernorm.weight           norms
layers_i/self_attn/{q,k,v,o}_proj/kernel model.layers.i.self_attn.{q,k,v,o}_proj.weight  attention
layers_i/self_attn/{q,k,v,o}_proj/bias   model.layers.i.self_attn.{q,k,v,o}_proj.bias    attention
layers_i/post_attention_layernorm/scale  model.layers.i.post_attention_layernorm.weight  norms
layers_i/mlp/{gate,up,down}_proj/kernel  model.layers.i.mlp.{gate,up,down}_proj.weight   mlp
layers_i/mlp/{gate,up,down}_proj/bias    model.layers.i.mlp.{gate,up,down}_proj.bias     mlp
norm/scale                               model.norm.weight                               norms
lm_head/kernel (untied only)             lm_head.weight                                  lm_head
======================================  ==============================================  ==========
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfault.core.errors import JaxfaultError
from jaxfault.models.layers import Dense
from jaxfault.models.transformer import (Embed, RMSNorm, TiedLMHead, activation, attention_mask, check_activation,
                                         check_tokens, dot_product_attention)

_init = nn.initializers.normal(0.02)


def rope_tables(length: int, head_dim: int, theta: float, dtype) -> tuple[jax.Array, jax.Array]:
    """cos and sin tables (length, head_dim) of the default rotary embedding (module docstring),
    computed in float32 and cast to dtype.

    Args:
      length: number of positions (0 .. length - 1).
      head_dim: the rotated dimension (even).
      theta: the base ``rope_theta``.
      dtype: the activations' dtype.
    Returns:
      (cos, sin), each (length, head_dim).
    """
    if head_dim % 2:
        raise JaxfaultError(f"rotary embeddings need an even head_dim, got {head_dim}")
    exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / jnp.float32(head_dim)
    inv_freq = 1.0 / (jnp.float32(theta) ** exponents)
    freqs = jnp.arange(length, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def rotate_half(x: jax.Array) -> jax.Array:
    """concat(-x2, x1) of the two halves x1, x2 of the last axis (Hugging Face's convention)."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x cos + rotate_half(x) sin for x (batch, length, heads, head_dim), tables (length, head_dim)."""
    return x * cos[None, :, None, :] + rotate_half(x) * sin[None, :, None, :]


class LlamaAttention(nn.Module):
    """Grouped-query attention with rotary embeddings: q/k/v/o projections."""

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    window: int = 0
    qkv_bias: bool = False
    o_bias: bool = False
    quant_bits: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, l, _ = x.shape
        hd, q_ = self.head_dim, self.quant_bits

        def proj(features, bias, name):
            return Dense(features, use_bias=bias, quant_bits=q_, kernel_init=_init, name=name)

        q = proj(self.num_heads * hd, self.qkv_bias, "q_proj")(x).reshape(b, l, self.num_heads, hd)
        k = proj(self.num_kv_heads * hd, self.qkv_bias, "k_proj")(x).reshape(b, l, self.num_kv_heads, hd)
        v = proj(self.num_kv_heads * hd, self.qkv_bias, "v_proj")(x).reshape(b, l, self.num_kv_heads, hd)
        cos, sin = rope_tables(l, hd, self.rope_theta, x.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        o = dot_product_attention(q, k, v, hd ** -0.5, attention_mask(l, self.window))
        return proj(self.hidden_size, self.o_bias, "o_proj")(o.reshape(b, l, self.num_heads * hd))


class LlamaMLP(nn.Module):
    """SwiGLU: down_proj(act(gate_proj(x)) * up_proj(x))."""

    hidden_size: int
    intermediate_size: int
    hidden_act: str = "silu"
    mlp_bias: bool = False
    quant_bits: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def proj(features, name):
            return Dense(features, use_bias=self.mlp_bias, quant_bits=self.quant_bits, kernel_init=_init, name=name)

        h = activation(self.hidden_act, proj(self.intermediate_size, "gate_proj")(x)) * \
            proj(self.intermediate_size, "up_proj")(x)
        return proj(self.hidden_size, "down_proj")(h)


class LlamaDecoderLayer(nn.Module):
    """input_layernorm -> self_attn -> residual, post_attention_layernorm -> mlp -> residual."""

    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    hidden_act: str
    window: int = 0
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    quant_bits: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        attn = LlamaAttention(self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim, self.rope_theta,
                              self.window, self.qkv_bias, self.o_bias, self.quant_bits, name="self_attn")
        x = x + attn(RMSNorm(self.rms_norm_eps, name="input_layernorm")(x))
        mlp = LlamaMLP(self.hidden_size, self.intermediate_size, self.hidden_act, self.mlp_bias, self.quant_bits,
                       name="mlp")
        return x + mlp(RMSNorm(self.rms_norm_eps, name="post_attention_layernorm")(x))


class Llama(nn.Module):
    """Llama-family language model: ``apply(variables, tokens)`` -> logits (batch, length, vocab_size).

    Fields follow Hugging Face's LlamaConfig (``num_key_value_heads`` None: equal to the heads,
    ``head_dim`` None: hidden_size // num_attention_heads); ``layer_windows`` holds one sliding
    window per layer (0: none; empty tuple: no window anywhere). The model computes in the dtype
    of its embedding table with float32 norms, rotary angles and softmax. ``train`` is accepted for
    the project's apply convention; the model has no dropout or batch statistics.
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    layer_windows: tuple = ()
    quant_bits: int | None = None

    TAKES_TOKENS = True  # inputs are token ids (batch, length): jaxfault.energy traces it on (1, L) int32
    MODULE_PATTERNS = {"embeddings": ("embed_tokens",), "attention": ("layers_*/self_attn",),
                       "mlp": ("layers_*/mlp",), "norms": ("layers_*/input_layernorm",
                                                           "layers_*/post_attention_layernorm", "norm"),
                       "lm_head": ("lm_head",)}

    def __post_init__(self):
        check_activation(self.hidden_act)
        kv = self.kv_heads
        if self.num_attention_heads % kv:
            raise JaxfaultError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                                f"num_key_value_heads ({kv})")
        if self.layer_windows and len(self.layer_windows) != self.num_hidden_layers:
            raise JaxfaultError(f"layer_windows has {len(self.layer_windows)} entries for "
                                f"{self.num_hidden_layers} layers")
        super().__post_init__()

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads if self.num_key_value_heads is not None else self.num_attention_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_attention_heads

    @nn.compact
    def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
        tokens = check_tokens(tokens, None, self.vocab_size)
        embed = Embed(self.vocab_size, self.hidden_size, _init, name="embed_tokens")
        x = embed(tokens)
        for i in range(self.num_hidden_layers):
            window = int(self.layer_windows[i]) if self.layer_windows else 0
            x = LlamaDecoderLayer(self.hidden_size, self.intermediate_size, self.num_attention_heads, self.kv_heads,
                                  self.dim_per_head, self.rope_theta, self.rms_norm_eps, self.hidden_act, window,
                                  self.qkv_bias, self.o_bias, self.mlp_bias, self.quant_bits, name=f"layers_{i}")(x)
        x = RMSNorm(self.rms_norm_eps, name="norm")(x)
        if self.tie_word_embeddings:
            return TiedLMHead(name="lm_head")(x, embed.kernel)
        return Dense(self.vocab_size, use_bias=False, quant_bits=self.quant_bits, kernel_init=_init,
                     name="lm_head")(x)
