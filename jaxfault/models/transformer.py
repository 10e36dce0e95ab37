"""Building blocks shared by the transformer families (GPT-2, Llama, ViT): embeddings, LayerNorm,
RMSNorm, activations, multi-head / grouped-query attention, the tied LM head, and the
module-kind patterns used to select fault sites.

Numerics follow Hugging Face's PyTorch definitions: every module computes in the dtype of its
input (the dtype of the stored weights, since the first activation is an embedding row or a
projection of the input), norms accumulate in float32 and cast back, and attention softmax runs
in float32 and is cast to the dtype of the values. Float32 matmuls follow the precision scope in
force (jaxfault.core.precision), so an evaluation traced under ``precision="highest"`` runs them in
full float32. Linear projections are :class:`jaxfault.models.layers.Dense` (parameter ``kernel``
of shape (in, out), optional fake quantization), so every weight fault method and the
activation-fault site selection by module type ``Dense`` find them.
"""
from __future__ import annotations

import fnmatch
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfault.core.errors import JaxfaultError

ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu", "relu", "silu")

# the kinds a fault-site selection can name; each family maps them to module-path patterns
MODULE_KINDS = ("embeddings", "attention", "mlp", "norms", "lm_head")


def check_activation(name: str) -> str:
    """Validate an activation name of a Hugging Face config (``activation_function`` / ``hidden_act``)."""
    if name not in ACTIVATIONS:
        raise JaxfaultError(f"unsupported activation {name!r}; supported: {', '.join(ACTIVATIONS)}")
    return name


def activation(name: str, x: jax.Array) -> jax.Array:
    """Apply the named activation with Hugging Face's formula.

    Args:
      name: 'gelu_new' and 'gelu_pytorch_tanh' (the tanh approximation
        0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))), 'gelu' (exact, erf), 'relu' or 'silu'.
      x: the pre-activation.
    Returns:
      The activation, in x's dtype.
    """
    check_activation(name)
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        c = math.sqrt(2.0 / math.pi)
        return 0.5 * x * (1.0 + jnp.tanh(c * (x + 0.044715 * x * x * x)))
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if name == "relu":
        return jax.nn.relu(x)
    return jax.nn.silu(x)


class Embed(nn.Module):
    """A lookup table of ``num_embeddings`` rows of ``features`` values.

    The table is stored as the parameter ``kernel`` (num_embeddings, features), so weight fault
    methods (which act on every 2-D ``kernel``) cover embeddings like any other weight matrix."""

    num_embeddings: int
    features: int
    embedding_init: nn.initializers.Initializer = nn.initializers.normal(0.02)

    def setup(self):
        self.kernel = self.param("kernel", self.embedding_init, (self.num_embeddings, self.features))

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.kernel, ids, axis=0)


class TiedLMHead(nn.Module):
    """The LM head of a model with tied embeddings: logits = x @ table^T, with no parameter of its
    own. It exists so the logits are the output of a module named ``lm_head`` in both the tied and
    the untied case (activation-fault sites select it by that path)."""

    @nn.compact
    def __call__(self, x: jax.Array, table: jax.Array) -> jax.Array:
        return jnp.dot(x, table.T.astype(x.dtype))


class LayerNorm(nn.Module):
    """torch.nn.LayerNorm over the last axis (biased variance, eps inside the square root),
    accumulated in float32 and returned in the input's dtype. Parameters ``scale``, ``bias``."""

    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (d,))
        bias = self.param("bias", nn.initializers.zeros, (d,))
        h = x.astype(jnp.float32)
        mean = jnp.mean(h, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(h - mean), axis=-1, keepdims=True)
        y = (h - mean) * jax.lax.rsqrt(var + jnp.float32(self.epsilon))
        return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


class RMSNorm(nn.Module):
    """Llama's RMSNorm: x / sqrt(mean(x^2) + eps) in float32, cast to the input dtype, then times
    the weight ``scale`` (Hugging Face's LlamaRMSNorm order of operations)."""

    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        h = x.astype(jnp.float32)
        var = jnp.mean(h * h, axis=-1, keepdims=True)
        y = (h * jax.lax.rsqrt(var + jnp.float32(self.epsilon))).astype(x.dtype)
        return scale.astype(x.dtype) * y


def attention_mask(length: int, window: int = 0) -> jax.Array:
    """Boolean (length, length) mask: query i sees key j when j <= i (causal) and, for a sliding
    window w > 0, j > i - w (Hugging Face's sliding-window convention)."""
    i = jnp.arange(length)[:, None]
    j = jnp.arange(length)[None, :]
    m = j <= i
    if window > 0:
        m = m & (j > i - window)
    return m


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float,
                          mask: jax.Array | None) -> jax.Array:
    """Multi-head or grouped-query attention.

    Args:
      q: queries (batch, length, heads, head_dim).
      k, v: keys and values (batch, length, kv_heads, head_dim); heads must be a multiple of
        kv_heads, query head h reads kv head h // (heads // kv_heads) (Hugging Face's repeat_kv).
      scale: factor on the scores q.k.
      mask: boolean (length, length), True where a query may see a key; None: no mask.
    Returns:
      (batch, length, heads, head_dim) in v's dtype. Scores are computed in q's dtype, the masked
      softmax in float32 (masked scores set to float32's lowest value, as Hugging Face adds),
      the probabilities cast to v's dtype before they weight the values.
    """
    b, lq, h, d = q.shape
    kvh = k.shape[2]
    if h % kvh:
        raise JaxfaultError(f"attention heads ({h}) must be a multiple of key/value heads ({kvh})")
    g = h // kvh
    qg = q.reshape(b, lq, kvh, g, d)
    # explicit dot_generals with the keys / values second: the energy extraction
    # (jaxfault.energy.layers) reads the second operand of an activation matmul as its stationary one
    with jax.named_scope("scores"):  # (b, kvh, lq, g, s)
        s = jax.lax.dot_general(qg, k, (((4,), (3,)), ((0, 2), (0, 2))))
    s = (s * jnp.asarray(scale, s.dtype)).astype(jnp.float32)
    if mask is not None:
        s = jnp.where(mask[:, None, :], s, jnp.finfo(jnp.float32).min)
    p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    with jax.named_scope("context"):  # (b, kvh, lq, g, d)
        o = jax.lax.dot_general(p, v, (((4,), (1,)), ((0, 1), (0, 2))))
    return jnp.transpose(o, (0, 2, 1, 3, 4)).reshape(b, lq, h, d)


def check_tokens(tokens, max_length: int | None, vocab_size: int) -> jax.Array:
    """Validate a (batch, length) integer token array.

    Args:
      tokens: the model's input.
      max_length: the model's positions (None: unbounded).
      vocab_size: ids must lie in [0, vocab_size); checked when the values are concrete (an
        out-of-range id would otherwise gather a NaN row silently), not when traced.
    Returns:
      tokens as a JAX array; JaxfaultError naming the shape, dtype or id otherwise.
    """
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise JaxfaultError(f"a language model takes integer token ids of shape (batch, length), got "
                            f"{tokens.dtype} {tuple(tokens.shape)}")
    if max_length is not None and tokens.shape[1] > max_length:
        raise JaxfaultError(f"sequence length {tokens.shape[1]} exceeds the model's {max_length} positions")
    if not isinstance(tokens, jax.core.Tracer) and tokens.size:
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= vocab_size:
            raise JaxfaultError(f"token id {lo if lo < 0 else hi} is outside the vocabulary [0, {vocab_size})")
    return tokens


def module_kind(patterns: dict, path: str) -> str | None:
    """The kind ('embeddings', 'attention', 'mlp', 'norms', 'lm_head') of a module or parameter
    path under a family's patterns, or None when no pattern matches.

    Args:
      patterns: a family's ``MODULE_PATTERNS`` (kind -> shell-style patterns over module paths).
      path: a '/'-joined module path ('h_0/attn/c_attn') or parameter path ('h_0/attn/c_attn/kernel').
    Returns:
      The first kind one of whose patterns matches the path or one of its prefixes.
    """
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(len(parts), 0, -1)]
    for kind in MODULE_KINDS:
        for pat in patterns.get(kind, ()):
            if any(fnmatch.fnmatchcase(p, pat) for p in prefixes):
                return kind
    return None
