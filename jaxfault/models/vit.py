"""A small Vision Transformer classifier (NHWC images), with Hugging Face ViTForImageClassification's
layout: non-overlapping patches embedded by a stride-``patch_size`` convolution, a learned CLS
token prepended, learned position embeddings added, ``depth`` pre-norm encoder blocks
(LayerNorm -> multi-head self-attention -> residual, LayerNorm -> MLP with exact GELU ->
residual), a final LayerNorm and a linear classifier on the CLS token.

The default ('vit' in the zoo) is sized for 28x28x1 Fashion-MNIST: 7x7 patches (16 tokens + CLS),
width 64, 4 blocks of 4 heads, MLP 128 (about 0.14 M parameters). Module paths and their kinds:
``patch_embed`` (a Conv), ``cls_token`` / ``pos_embed`` (parameters of the root), ``blocks_i/
layernorm_before|layernorm_after`` (norms), ``blocks_i/attn/{query,key,value,out}`` (attention),
``blocks_i/mlp/{fc1,fc2}`` (mlp), ``layernorm`` (norm), ``head`` (the classifier).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfault.core.errors import JaxfaultError
from jaxfault.models.layers import Conv, Dense
from jaxfault.models.transformer import LayerNorm, activation, dot_product_attention

_init = nn.initializers.normal(0.02)


class ViTAttention(nn.Module):
    """Bidirectional multi-head self-attention: query/key/value projections and the output ``out``."""

    width: int
    heads: int
    quant_bits: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, l, d = x.shape
        hd = d // self.heads
        q, k, v = (Dense(d, quant_bits=self.quant_bits, kernel_init=_init, name=n)(x).reshape(b, l, self.heads, hd)
                   for n in ("query", "key", "value"))
        o = dot_product_attention(q, k, v, hd ** -0.5, None)
        return Dense(d, quant_bits=self.quant_bits, kernel_init=_init, name="out")(o.reshape(b, l, d))


class ViTMLP(nn.Module):
    """fc1 -> exact GELU -> fc2."""

    width: int
    mlp_dim: int
    quant_bits: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = activation("gelu", Dense(self.mlp_dim, quant_bits=self.quant_bits, kernel_init=_init, name="fc1")(x))
        return Dense(self.width, quant_bits=self.quant_bits, kernel_init=_init, name="fc2")(h)


class ViTBlock(nn.Module):
    """layernorm_before -> attn -> residual, layernorm_after -> mlp -> residual."""

    width: int
    heads: int
    mlp_dim: int
    layer_norm_eps: float = 1e-12
    quant_bits: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + ViTAttention(self.width, self.heads, self.quant_bits, name="attn")(
            LayerNorm(self.layer_norm_eps, name="layernorm_before")(x))
        return x + ViTMLP(self.width, self.mlp_dim, self.quant_bits, name="mlp")(
            LayerNorm(self.layer_norm_eps, name="layernorm_after")(x))


class ViT(nn.Module):
    """Vision Transformer classifier: ``apply(variables, images)`` -> logits (batch, num_classes).

    Images are NHWC of any size: sides that are not multiples of ``patch_size`` are zero-padded
    at the bottom and right up to the next multiple (the position table has one row per patch
    of the padded image, plus the CLS token). ``train`` is accepted for the training loop's
    convention; the model has no dropout or batch statistics.
    """

    num_classes: int = 10
    patch_size: int = 7
    width: int = 64
    depth: int = 4
    heads: int = 4
    mlp_dim: int = 128
    layer_norm_eps: float = 1e-12
    quant_bits: int | None = None
    conv_impl: str = "auto"

    MODULE_PATTERNS = {"embeddings": ("patch_embed", "cls_token", "pos_embed"), "attention": ("blocks_*/attn",), "mlp": ("blocks_*/mlp",),
                       "norms": ("blocks_*/layernorm_before", "blocks_*/layernorm_after", "layernorm"),
                       "lm_head": ("head",)}

    def __post_init__(self):
        if self.width % self.heads:
            raise JaxfaultError(f"ViT width ({self.width}) must be a multiple of heads ({self.heads})")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim != 4:
            raise JaxfaultError(f"ViT takes NHWC images, got shape {tuple(x.shape)}")
        h, w = x.shape[1:3]
        p = self.patch_size
        if h % p or w % p:  # any input size, as the zoo's CNNs: zero-pad to whole patches
            x = jnp.pad(x, ((0, 0), (0, -h % p), (0, -w % p), (0, 0)))
        y = Conv(self.width, (p, p), strides=(p, p), padding="VALID", quant_bits=self.quant_bits,
                 kernel_init=_init, conv_impl=self.conv_impl, name="patch_embed")(x)
        b = y.shape[0]
        y = y.reshape(b, -1, self.width)
        cls = self.param("cls_token", _init, (1, 1, self.width)).astype(y.dtype)
        y = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.width)), y], axis=1)
        y = y + self.param("pos_embed", _init, (1, y.shape[1], self.width)).astype(y.dtype)
        for i in range(self.depth):
            y = ViTBlock(self.width, self.heads, self.mlp_dim, self.layer_norm_eps, self.quant_bits,
                         name=f"blocks_{i}")(y)
        y = LayerNorm(self.layer_norm_eps, name="layernorm")(y)
        return Dense(self.num_classes, quant_bits=self.quant_bits, name="head")(y[:, 0])
