"""GPT-2 (Hugging Face's GPT2LMHeadModel) in Flax.

Token and learned position embeddings, ``n_layer`` pre-norm blocks (LayerNorm -> causal
multi-head attention -> residual, LayerNorm -> MLP with gelu_new -> residual), a final
LayerNorm and the LM head, tied to the token embedding unless ``tie_word_embeddings`` is false.
GPT-2's ``Conv1D`` stores its weight (in, out), which is the layout of a Flax ``kernel``, so
Hugging Face's tensors load without a transpose.

Module paths (the parameter tree) and their Hugging Face names, block i:

=============================  ======================================  ==========
Flax path                       Hugging Face tensor                     kind
=============================  ======================================  ==========
wte/kernel                      transformer.wte.weight                  embeddings
wpe/kernel                      transformer.wpe.weight                  embeddings
h_i/ln_1/{scale,bias}           transformer.h.i.ln_1.{weight,bias}      norms
h_i/attn/c_attn/{kernel,bias}   transformer.h.i.attn.c_attn.{weight,bias}  attention
h_i/attn/c_proj/{kernel,bias}   transformer.h.i.attn.c_proj.{weight,bias}  attention
h_i/ln_2/{scale,bias}           transformer.h.i.ln_2.{weight,bias}      norms
h_i/mlp/c_fc/{kernel,bias}      transformer.h.i.mlp.c_fc.{weight,bias}  mlp
h_i/mlp/c_proj/{kernel,bias}    transformer.h.i.mlp.c_proj.{weight,bias}  mlp
ln_f/{scale,bias}               transformer.ln_f.{weight,bias}          norms
lm_head/kernel (untied only)    lm_head.weight, transposed              lm_head
=============================  ======================================  ==========
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfault.core.errors import JaxfaultError
from jaxfault.models.layers import Dense
from jaxfault.models.transformer import (Embed, LayerNorm, TiedLMHead, activation, attention_mask, check_activation,
                                         check_tokens, dot_product_attention)

_init = nn.initializers.normal(0.02)


class GPT2Attention(nn.Module):
    """Causal self-attention: one fused q/k/v projection ``c_attn`` and the output ``c_proj``."""

    n_embd: int
    n_head: int
    scale: float
    quant_bits: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, l, d = x.shape
        hd = d // self.n_head
        qkv = Dense(3 * d, quant_bits=self.quant_bits, kernel_init=_init, name="c_attn")(x)
        q, k, v = (t.reshape(b, l, self.n_head, hd) for t in jnp.split(qkv, 3, axis=-1))
        o = dot_product_attention(q, k, v, self.scale, attention_mask(l))
        return Dense(d, quant_bits=self.quant_bits, kernel_init=_init, name="c_proj")(o.reshape(b, l, d))


class GPT2MLP(nn.Module):
    """c_fc -> activation -> c_proj."""

    n_embd: int
    n_inner: int
    activation_function: str = "gelu_new"
    quant_bits: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = Dense(self.n_inner, quant_bits=self.quant_bits, kernel_init=_init, name="c_fc")(x)
        h = activation(self.activation_function, h)
        return Dense(self.n_embd, quant_bits=self.quant_bits, kernel_init=_init, name="c_proj")(h)


class GPT2Block(nn.Module):
    """ln_1 -> attn -> residual, ln_2 -> mlp -> residual."""

    n_embd: int
    n_head: int
    n_inner: int
    scale: float
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"
    quant_bits: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + GPT2Attention(self.n_embd, self.n_head, self.scale, self.quant_bits, name="attn")(
            LayerNorm(self.layer_norm_epsilon, name="ln_1")(x))
        return x + GPT2MLP(self.n_embd, self.n_inner, self.activation_function, self.quant_bits, name="mlp")(
            LayerNorm(self.layer_norm_epsilon, name="ln_2")(x))


class GPT2(nn.Module):
    """GPT-2 language model: ``apply(variables, tokens)`` -> logits (batch, length, vocab_size).

    Fields are Hugging Face's GPT2Config fields of the same names (``n_inner`` None: 4 n_embd).
    The model computes in the dtype of its embedding table (bf16 weights: bf16 activations, with
    float32 norms and softmax). ``train`` is accepted for the project's apply convention; the
    model has no dropout or batch statistics.
    """

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    tie_word_embeddings: bool = True
    quant_bits: int | None = None

    TAKES_TOKENS = True  # inputs are token ids (batch, length): jaxfault.energy traces it on (1, L) int32
    # kind -> module-path patterns (jaxfault.models.transformer.module_kind)
    MODULE_PATTERNS = {"embeddings": ("wte", "wpe"), "attention": ("h_*/attn",), "mlp": ("h_*/mlp",),
                       "norms": ("h_*/ln_1", "h_*/ln_2", "ln_f"), "lm_head": ("lm_head",)}

    def __post_init__(self):
        check_activation(self.activation_function)
        if self.n_embd % self.n_head:
            raise JaxfaultError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        super().__post_init__()

    def layer_scale(self, i: int) -> float:
        """The factor on layer i's attention scores: 1/sqrt(head_dim) if scale_attn_weights, divided
        by i + 1 if scale_attn_by_inverse_layer_idx."""
        s = (self.n_embd // self.n_head) ** -0.5 if self.scale_attn_weights else 1.0
        return s / float(i + 1) if self.scale_attn_by_inverse_layer_idx else s

    @nn.compact
    def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
        tokens = check_tokens(tokens, self.n_positions, self.vocab_size)
        wte = Embed(self.vocab_size, self.n_embd, _init, name="wte")
        wpe = Embed(self.n_positions, self.n_embd, nn.initializers.normal(0.01), name="wpe")
        x = wte(tokens)
        x = x + wpe(jnp.arange(tokens.shape[1]))[None].astype(x.dtype)
        inner = self.n_inner if self.n_inner is not None else 4 * self.n_embd
        for i in range(self.n_layer):
            x = GPT2Block(self.n_embd, self.n_head, inner, self.layer_scale(i), self.layer_norm_epsilon,
                          self.activation_function, self.quant_bits, name=f"h_{i}")(x)
        x = LayerNorm(self.layer_norm_epsilon, name="ln_f")(x)
        if self.tie_word_embeddings:
            return TiedLMHead(name="lm_head")(x, wte.kernel)
        return Dense(self.vocab_size, use_bias=False, quant_bits=self.quant_bits, kernel_init=_init,
                     name="lm_head")(x)
