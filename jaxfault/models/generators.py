"""NeuralFuse generators (SPEC 3.2): small conv nets G with x' = clip(x + tanh(G(x)), -1, 1).

Images are NHWC in [-1, 1]. Every generator preserves the input shape for any H x W x C: the
input is edge-padded to a multiple of 8 (three 2x downsamplings), G runs on the padded image and
its output is cropped back before the residual is added.

* ConvL / ConvS: encoder of 3 stages (2 x conv3x3+BN+ReLU, then 2x2 max-pool), widths 32-64-128
  (L) or 32-64-64 (S); the decoder mirrors it (2 x conv3x3+BN+ReLU, then 2x nearest-neighbour upsampling
  per stage); a final conv3x3 to the input channels + BN.
* DeConvL / DeConvS: same encoder; each decoder stage is a 4x4 stride-2 transposed conv+BN+ReLU
  followed by conv3x3+BN+ReLU; same final conv + BN.
* UNetL / UNetS: U-Net with 3 downsamplings, base width 16 (L) or 8 (S) doubling per level,
  skip connections by concatenation, 2x2 stride-2 transposed-conv upsampling, 1x1 output conv.

Batch norm uses batch statistics when ``train=True`` (apply with ``mutable=["batch_stats"]``)
and the running averages otherwise.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfault.errors import JaxfaultError

GENERATOR_NAMES = ("ConvL", "ConvS", "DeConvL", "DeConvS", "UNetL", "UNetS")
_MULTIPLE = 8


def _bn(train: bool) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)


class ConvBNReLU(nn.Module):
    """conv (kernel k, 'SAME') + batch norm + ReLU."""
    features: int
    kernel: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.features, (self.kernel, self.kernel), padding="SAME", use_bias=False)(x)
        return nn.relu(_bn(train)(x))


def _upsample2(x):
    """2x nearest-neighbour upsampling (cheap forward and backward on CPU, unlike image.resize)."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _maxpool2(x):
    """2x2 stride-2 max-pool by reshape (H, W even here); its gradient avoids XLA CPU's slow
    select-and-scatter of nn.max_pool."""
    n, h, w, c = x.shape
    return jnp.max(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


class _PadCropResidual(nn.Module):
    """Shared wrapper: pad to a multiple of 8, run self.body, crop, x' = clip(x + tanh(g), -1, 1)."""

    def body(self, x, train: bool):  # pragma: no cover - overridden
        raise NotImplementedError

    @nn.compact
    def __call__(self, x, train: bool = False):
        if x.ndim != 4:
            raise JaxfaultError(f"generator input must be NHWC (4-D), got shape {tuple(x.shape)}")
        _, h, w, c = x.shape
        ph, pw = (-h) % _MULTIPLE, (-w) % _MULTIPLE
        xp = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode="edge")
        g = self.body(xp, train)
        g = g[:, ph // 2:ph // 2 + h, pw // 2:pw // 2 + w, :]
        return jnp.clip(x + jnp.tanh(g), -1.0, 1.0)


class ConvGenerator(_PadCropResidual):
    """ConvL/ConvS (decoder="upsample") and DeConvL/DeConvS (decoder="deconv")."""
    widths: Sequence[int] = (32, 64, 128)
    decoder: str = "upsample"

    def body(self, x, train: bool):
        c = x.shape[-1]
        for wd in self.widths:
            x = ConvBNReLU(wd)(x, train)
            x = ConvBNReLU(wd)(x, train)
            x = _maxpool2(x)
        for wd in reversed(self.widths):
            if self.decoder == "deconv":
                x = nn.ConvTranspose(wd, (4, 4), strides=(2, 2), padding="SAME", use_bias=False)(x)
                x = nn.relu(_bn(train)(x))
                x = ConvBNReLU(wd)(x, train)
            else:
                x = ConvBNReLU(wd)(x, train)
                x = ConvBNReLU(wd)(x, train)
                x = _upsample2(x)
        x = nn.Conv(c, (3, 3), padding="SAME", use_bias=False)(x)
        return _bn(train)(x)


class UNetGenerator(_PadCropResidual):
    """UNetL (base 16) / UNetS (base 8): 3 downsamplings, skip connections, 1x1 output conv."""
    base: int = 16

    def body(self, x, train: bool):
        c = x.shape[-1]
        skips = []
        for level in range(3):
            wd = self.base * 2 ** level
            x = ConvBNReLU(wd)(x, train)
            x = ConvBNReLU(wd)(x, train)
            skips.append(x)
            x = _maxpool2(x)
        x = ConvBNReLU(self.base * 8)(x, train)
        x = ConvBNReLU(self.base * 8)(x, train)
        for level in reversed(range(3)):
            wd = self.base * 2 ** level
            x = nn.ConvTranspose(wd, (2, 2), strides=(2, 2), padding="SAME")(x)
            x = jnp.concatenate([x, skips[level]], axis=-1)
            x = ConvBNReLU(wd)(x, train)
            x = ConvBNReLU(wd)(x, train)
        return nn.Conv(c, (1, 1))(x)


def create_generator(name: str) -> nn.Module:
    """A generator by its SPEC name (ConvL, ConvS, DeConvL, DeConvS, UNetL, UNetS)."""
    if name == "ConvL":
        return ConvGenerator(widths=(32, 64, 128), decoder="upsample")
    if name == "ConvS":
        return ConvGenerator(widths=(32, 64, 64), decoder="upsample")
    if name == "DeConvL":
        return ConvGenerator(widths=(32, 64, 128), decoder="deconv")
    if name == "DeConvS":
        return ConvGenerator(widths=(32, 64, 64), decoder="deconv")
    if name == "UNetL":
        return UNetGenerator(base=16)
    if name == "UNetS":
        return UNetGenerator(base=8)
    raise JaxfaultError(f"unknown generator {name!r}; choose one of {', '.join(GENERATOR_NAMES)}")


def init_generator(generator: nn.Module, key: jax.Array, input_shape: Sequence[int]) -> dict:
    """Variables {"params", "batch_stats"} for images of shape input_shape = (H, W, C)."""
    x = jnp.zeros((1, *tuple(input_shape)), jnp.float32)
    return dict(jax.jit(lambda k, x: generator.init(k, x, train=False))(key, x))
