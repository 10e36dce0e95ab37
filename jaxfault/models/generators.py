"""NeuralFuse generators: small conv nets G that transform an input image x (NHWC, in [-1, 1])
into x' = clip(x + G(x), -1, 1), trained so that a frozen quantized classifier stays accurate on x'
when its weights are read from faulty SRAM.

The six reference generators (``create_generator(name)``), layer for layer as in the NeuralFuse
authors' code. In all of them: "conv" is a 3x3 convolution with padding 1 and a bias, "BN" batch
norm, "pool" a 2x2 max-pool, "up" 2x nearest-neighbour upsampling, C the input channel count; the
weights of every convolution (not the biases) are fake-quantized to ``quant_bits`` (default 8,
symmetric per tensor, straight-through gradient).

* ConvL:   encoder  [conv 32, BN, ReLU] x2, pool, [conv 64, BN, ReLU] x2, pool,
           [conv 128, BN, ReLU] x2, pool;
           decoder  conv 128+BN+ReLU, up, conv 128+BN+ReLU, conv 64+BN+ReLU, up, conv 64+BN+ReLU,
           conv 32+BN+ReLU, up, conv 32+BN+ReLU; then conv C + BN, tanh.
* ConvS:   conv 32+BN+ReLU, pool, conv 64+BN+ReLU, pool, conv 64+BN+ReLU, pool;
           conv 64+BN+ReLU, up, conv 32+BN+ReLU, up, conv C+BN+ReLU, up; then conv C + BN, tanh.
* DeConvL: ConvL's encoder; conv 128+BN+ReLU; then per stage a 4x4 stride-2 transposed conv
           (padding 1, bias) + BN + ReLU: 64 -> conv 64+BN+ReLU, 32 -> conv 32+BN+ReLU, C + BN; tanh.
* DeConvS: ConvS's encoder; transposed convs 64+BN+ReLU, 32+BN+ReLU, C+BN; tanh.
* UNetL / UNetS (base width b = 16 / 8): double conv = [conv (no bias), BN, ReLU] x2.
           inc = double conv b; down_i = pool + double conv b*2^i (i = 1..3); up_i = 2x2 stride-2
           transposed conv (padding 1, bias) to half the channels, which makes the map 2 pixels
           smaller than the skip, zero-padded back to the skip's size, concatenated after the skip
           ([skip, up]) and a double conv; outc = 1x1 conv with bias to C; no tanh.

The output is clip(x + out, -1, 1), where out is the tanh above (Conv/DeConv) or the UNet's raw
1x1 conv. Parameter counts for 32x32x3 inputs (PyTorch's count: conv weights and biases, BN scale
and offset; running statistics are not parameters) are in ``REFERENCE_PARAM_COUNTS``.

Any H x W x C input works: the image is edge-padded to a multiple of 8 (three 2x poolings), G runs
on the padded image and its output is cropped back before the residual is added. (The reference
needs multiples of 8 for the Conv/DeConv generators; its UNet floors odd sizes instead.)

Initialisation follows PyTorch's defaults (kernel and bias uniform in +-1/sqrt(fan_in), BN scale 1,
offset 0). Batch norm (momentum 0.1 in PyTorch's convention, i.e. flax momentum ``BN_MOMENTUM``
= 0.9, epsilon 1e-5) uses batch statistics when ``train=True`` (apply with
``mutable=["batch_stats"]``) and the running averages otherwise.

Earlier jaxfault variants stay available as "ConvL-tanh", ..., "UNetS-tanh": two convs per stage
everywhere, no biases, float weights, a 2x2 stride-2 transposed conv without padding in the UNets,
and x' = clip(x + tanh(G(x)), -1, 1) for all six.

``conv_impl`` ("auto", "xla", "shift_add") selects the convolution implementation of the 3x3/1x1
convs (see jaxfault.models.layers); it changes no value beyond float rounding.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfault.core.errors import JaxfaultError
from jaxfault.models.layers import Conv, ConvTranspose, check_conv_impl, torch_default_inits
from jaxfault.core.quant import check_bits

REFERENCE_GENERATORS = ("ConvL", "ConvS", "DeConvL", "DeConvS", "UNetL", "UNetS")
TANH_GENERATORS = tuple(f"{n}-tanh" for n in REFERENCE_GENERATORS)
GENERATOR_NAMES = REFERENCE_GENERATORS + TANH_GENERATORS
# Trainable parameters of the reference generators on 32x32x3 inputs (tests/test_generators.py
# derives them layer by layer and checks the modules against them).
REFERENCE_PARAM_COUNTS = {"ConvL": 723_273, "ConvS": 113_187, "DeConvL": 647_785, "DeConvS": 156_777,
                          "UNetL": 482_771, "UNetS": 121_195}
BN_MOMENTUM = 0.9  # flax convention: running = 0.9 * running + 0.1 * batch (PyTorch momentum 0.1)
BN_EPSILON = 1e-5
_MULTIPLE = 8


def _bn(train: bool, name: str | None = None) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def _upsample2(x):
    """2x nearest-neighbour upsampling (cheap forward and backward on CPU, unlike image.resize)."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _maxpool2(x):
    """2x2 stride-2 max-pool by reshape (H, W even here); its gradient avoids XLA CPU's slow
    select-and-scatter of nn.max_pool."""
    n, h, w, c = x.shape
    return jnp.max(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


class _PadCrop(nn.Module):
    """Shared wrapper: pad to a multiple of 8, out = self.body(...), crop, x' = clip(x + out, -1, 1)."""

    def body(self, x, train: bool):  # pragma: no cover - overridden
        raise NotImplementedError

    @nn.compact
    def __call__(self, x, train: bool = False):
        if x.ndim != 4:
            raise JaxfaultError(f"generator input must be NHWC (4-D), got shape {tuple(x.shape)}")
        _, h, w, _ = x.shape
        ph, pw = (-h) % _MULTIPLE, (-w) % _MULTIPLE
        xp = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode="edge")
        out = self.body(xp, train)
        out = out[:, ph // 2:ph // 2 + h, pw // 2:pw // 2 + w, :]
        return jnp.clip(x + out, -1.0, 1.0)


# ----------------------------------------------------------------------------- reference generators

class _Reference(_PadCrop):
    quant_bits: int | None = 8
    conv_impl: str = "auto"

    def conv(self, features: int, name: str, kernel: int = 3, use_bias: bool = True):
        """kernel x kernel conv, padding (kernel-1)/2, PyTorch default init (fan_in known at call)."""
        pad = (kernel - 1) // 2

        def apply(x):
            inits = torch_default_inits(kernel * kernel * x.shape[-1])
            return Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)), use_bias=use_bias,
                        quant_bits=self.quant_bits, conv_impl=self.conv_impl, name=name, **inits)(x)
        return apply

    def deconv(self, features: int, name: str, kernel: int, padding: int):
        """kernel x kernel stride-2 transposed conv with PyTorch's padding, bias and default init
        (PyTorch's fan_in of a transposed-conv weight is out_channels * kh * kw)."""
        inits = torch_default_inits(kernel * kernel * features)
        return ConvTranspose(features, (kernel, kernel), (2, 2), padding=padding, use_bias=True,
                             quant_bits=self.quant_bits, name=name, **inits)

    def cbr(self, x, features: int, name: str, train: bool):
        """conv + BN + ReLU, parameters named conv{name} / bn{name} as the reference's layers."""
        return nn.relu(_bn(train, f"bn{name}")(self.conv(features, f"conv{name}")(x)))

    def encoder_l(self, x, train: bool):
        """The encoder ConvL and DeConvL share: three stages of two conv-BN-ReLU (32, 64, 128
        features) each followed by a 2x2 max-pool, named conv{stage}_{1,2} / bn{stage}_{1,2}."""
        for stage, wd in zip((1, 2, 3), (32, 64, 128)):
            x = self.cbr(x, wd, f"{stage}_1", train)
            x = self.cbr(x, wd, f"{stage}_2", train)
            x = _maxpool2(x)
        return x


class ConvLReference(_Reference):
    """The reference ConvL (see the module docstring)."""

    def body(self, x, train: bool):
        c = x.shape[-1]
        x = self.encoder_l(x, train)
        for stage, (w1, w2) in zip((4, 5, 6), ((128, 128), (64, 64), (32, 32))):
            x = self.cbr(x, w1, f"{stage}_1", train)
            x = _upsample2(x)
            x = self.cbr(x, w2, f"{stage}_2", train)
        return jnp.tanh(_bn(train, "bnout")(self.conv(c, "convout")(x)))


class ConvSReference(_Reference):
    """The reference ConvS (see the module docstring)."""

    def body(self, x, train: bool):
        c = x.shape[-1]
        for stage, wd in zip((1, 2, 3), (32, 64, 64)):
            x = _maxpool2(self.cbr(x, wd, f"{stage}_1", train))
        for stage, wd in zip((4, 5, 6), (64, 32, c)):
            x = _upsample2(self.cbr(x, wd, f"{stage}_1", train))
        return jnp.tanh(_bn(train, "bnout")(self.conv(c, "convout")(x)))


class DeConvLReference(_Reference):
    """The reference DeConvL (see the module docstring)."""

    def body(self, x, train: bool):
        c = x.shape[-1]
        x = self.encoder_l(x, train)
        x = self.cbr(x, 128, "_mid", train)
        for stage, wd in zip((4, 5), (64, 32)):
            x = nn.relu(_bn(train, f"bn{stage}_1")(self.deconv(wd, f"dconv{stage}_1", 4, 1)(x)))
            x = self.cbr(x, wd, f"{stage}_2", train)
        return jnp.tanh(_bn(train, "bn6_1")(self.deconv(c, "dconv6_1", 4, 1)(x)))


class DeConvSReference(_Reference):
    """The reference DeConvS (see the module docstring)."""

    def body(self, x, train: bool):
        c = x.shape[-1]
        for stage, wd in zip((1, 2, 3), (32, 64, 64)):
            x = _maxpool2(self.cbr(x, wd, f"{stage}_1", train))
        for stage, wd in zip((4, 5), (64, 32)):
            x = nn.relu(_bn(train, f"bn{stage}_1")(self.deconv(wd, f"dconv{stage}_1", 4, 1)(x)))
        return jnp.tanh(_bn(train, "bn6_1")(self.deconv(c, "dconv6_1", 4, 1)(x)))


class UNetReference(_Reference):
    """The reference UNetL (base 16) / UNetS (base 8) (see the module docstring)."""
    base: int = 16

    def double_conv(self, x, features: int, name: str, train: bool):
        for i in (1, 2):
            x = self.conv(features, f"{name}_conv{i}", use_bias=False)(x)
            x = nn.relu(_bn(train, f"{name}_bn{i}")(x))
        return x

    def body(self, x, train: bool):
        c = x.shape[-1]
        skips = [self.double_conv(x, self.base, "inc", train)]
        for level in (1, 2, 3):
            skips.append(self.double_conv(_maxpool2(skips[-1]), self.base * 2 ** level, f"down{level}", train))
        x = skips.pop()
        for level in (1, 2, 3):
            skip = skips.pop()
            x = self.deconv(x.shape[-1] // 2, f"up{level}_deconv", 2, 1)(x)
            dy, dx = skip.shape[1] - x.shape[1], skip.shape[2] - x.shape[2]
            x = jnp.pad(x, ((0, 0), (dy // 2, dy - dy // 2), (dx // 2, dx - dx // 2), (0, 0)))
            x = self.double_conv(jnp.concatenate([skip, x], axis=-1), skip.shape[-1], f"up{level}", train)
        return self.conv(c, "outc", kernel=1)(x)


# ------------------------------------------------------------------- earlier (tanh residual) variants

class ConvBNReLU(nn.Module):
    """conv (kernel k, 'SAME', no bias) + batch norm + ReLU."""
    features: int
    kernel: int = 3
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Conv(self.features, (self.kernel, self.kernel), padding="SAME", use_bias=False,
                 kernel_init=nn.initializers.lecun_normal(), conv_impl=self.conv_impl)(x)
        return nn.relu(_bn(train)(x))


class ConvGenerator(_PadCrop):
    """ConvL-tanh/ConvS-tanh (decoder="upsample") and DeConvL-tanh/DeConvS-tanh (decoder="deconv"):
    3 encoder stages of 2 x conv3x3+BN+ReLU and a pool; per decoder stage 2 x conv+BN+ReLU then up
    (or a 4x4 stride-2 transposed conv+BN+ReLU then conv+BN+ReLU); conv3x3 to C + BN; tanh."""
    widths: Sequence[int] = (32, 64, 128)
    decoder: str = "upsample"
    conv_impl: str = "auto"

    def body(self, x, train: bool):
        c = x.shape[-1]
        cbr = lambda wd: ConvBNReLU(wd, conv_impl=self.conv_impl)  # noqa: E731
        for wd in self.widths:
            x = cbr(wd)(x, train)
            x = cbr(wd)(x, train)
            x = _maxpool2(x)
        for wd in reversed(self.widths):
            if self.decoder == "deconv":
                x = nn.ConvTranspose(wd, (4, 4), strides=(2, 2), padding="SAME", use_bias=False)(x)
                x = nn.relu(_bn(train)(x))
                x = cbr(wd)(x, train)
            else:
                x = cbr(wd)(x, train)
                x = cbr(wd)(x, train)
                x = _upsample2(x)
        x = Conv(c, (3, 3), padding="SAME", use_bias=False, kernel_init=nn.initializers.lecun_normal(),
                 conv_impl=self.conv_impl)(x)
        return jnp.tanh(_bn(train)(x))


class UNetGenerator(_PadCrop):
    """UNetL-tanh (base 16) / UNetS-tanh (base 8): 3 downsamplings, skips, 2x2 stride-2 transposed
    conv without padding, 1x1 output conv; tanh."""
    base: int = 16
    conv_impl: str = "auto"

    def body(self, x, train: bool):
        c = x.shape[-1]
        cbr = lambda wd: ConvBNReLU(wd, conv_impl=self.conv_impl)  # noqa: E731
        skips = []
        for level in range(3):
            wd = self.base * 2 ** level
            x = cbr(wd)(x, train)
            x = cbr(wd)(x, train)
            skips.append(x)
            x = _maxpool2(x)
        x = cbr(self.base * 8)(x, train)
        x = cbr(self.base * 8)(x, train)
        for level in reversed(range(3)):
            wd = self.base * 2 ** level
            x = nn.ConvTranspose(wd, (2, 2), strides=(2, 2), padding="SAME")(x)
            x = jnp.concatenate([x, skips[level]], axis=-1)
            x = cbr(wd)(x, train)
            x = cbr(wd)(x, train)
        return jnp.tanh(Conv(c, (1, 1), kernel_init=nn.initializers.lecun_normal(), conv_impl=self.conv_impl)(x))


def create_generator(name: str, *, quant_bits: int | None = 8, conv_impl: str = "auto") -> nn.Module:
    """A generator by name: one of REFERENCE_GENERATORS (weights fake-quantized to quant_bits,
    None for float weights) or the earlier float "-tanh" variants (quant_bits does not apply)."""
    check_conv_impl(conv_impl)
    if quant_bits is not None:
        check_bits(quant_bits)
    ref = {"ConvL": ConvLReference, "ConvS": ConvSReference, "DeConvL": DeConvLReference,
           "DeConvS": DeConvSReference}
    if name in ref:
        return ref[name](quant_bits=quant_bits, conv_impl=conv_impl)
    if name in ("UNetL", "UNetS"):
        return UNetReference(base=16 if name == "UNetL" else 8, quant_bits=quant_bits, conv_impl=conv_impl)
    tanh = {"ConvL-tanh": dict(widths=(32, 64, 128), decoder="upsample"),
            "ConvS-tanh": dict(widths=(32, 64, 64), decoder="upsample"),
            "DeConvL-tanh": dict(widths=(32, 64, 128), decoder="deconv"),
            "DeConvS-tanh": dict(widths=(32, 64, 64), decoder="deconv")}
    if name in tanh:
        return ConvGenerator(**tanh[name], conv_impl=conv_impl)
    if name in ("UNetL-tanh", "UNetS-tanh"):
        return UNetGenerator(base=16 if name == "UNetL-tanh" else 8, conv_impl=conv_impl)
    raise JaxfaultError(f"unknown generator {name!r}; choose one of {', '.join(GENERATOR_NAMES)}")


def init_generator(generator: nn.Module, key: jax.Array, input_shape: Sequence[int]) -> dict:
    """Variables {"params", "batch_stats"} for images of shape input_shape = (H, W, C)."""
    x = jnp.zeros((1, *tuple(input_shape)), jnp.float32)
    return dict(jax.jit(lambda k, x: generator.init(k, x, train=False))(key, x))
