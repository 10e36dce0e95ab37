"""Conv, ConvTranspose and Dense layers with optional weight fake-quantization (QAT).

They create the same parameters as flax.linen.Conv / Dense ('kernel', 'bias'), so every fault
method finds the weights by name and a model with quant_bits=None runs the same params unquantized.

The convolution implementation is an explicit module field, ``conv_impl`` ("auto", "xla" or
"shift_add"), never ambient state: a model built with ``conv_impl="xla"`` is a different (hashable)
module value, so jit caches keyed on the module, or closures over it, never mix implementations.
Models that contain these layers carry the same field and pass it down;
``with_conv_impl(model, impl)`` returns the model with another implementation.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from jaxfault.core.bits import narrow_to_bf16, widen_bf16
from jaxfault.core.errors import JaxfaultError
from jaxfault.core.quant import fake_quant

default_kernel_init = nn.initializers.lecun_normal()
_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def _xla_conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, ...], pads: tuple[tuple[int, int], ...]):
    return jax.lax.conv_general_dilated(x, kernel, window_strides=strides, padding=pads,
                                        dimension_numbers=_DIMENSION_NUMBERS)


def _shift_add_conv_impl(x, kernel, strides, pads, bias=None):
    """Convolution as a sum of kh*kw shifted, strided slices of the padded input times kernel taps.

    Computed batch-last (H, W, C, N) so XLA's CPU loop fusion vectorises over the batch; a
    batch-first layout fused into a following max-pool was measured 5-10x slower.
    """
    kh, kw, cin, cout = kernel.shape
    out_dtype = x.dtype
    bf16 = x.dtype == jnp.bfloat16 and kernel.dtype == jnp.bfloat16
    acc = jnp.promote_types(x.dtype, jnp.float32)  # bf16/fp16 inputs: accumulate in fp32, like XLA's conv
    if bf16:
        x, kernel = widen_bf16(x), widen_bf16(kernel)
    else:
        x, kernel = x.astype(acc), kernel.astype(acc)
    xt = jnp.transpose(x, (1, 2, 3, 0))  # H W Cin N
    xp = jnp.pad(xt, (*pads, (0, 0), (0, 0)))
    (sh, sw) = strides
    out_h = (xp.shape[0] - kh) // sh + 1
    out_w = (xp.shape[1] - kw) // sw + 1
    y = None
    for i in range(kh):
        for j in range(kw):
            tap = jax.lax.slice(xp, (i, j, 0, 0), (i + (out_h - 1) * sh + 1, j + (out_w - 1) * sw + 1, cin,
                                                   xp.shape[3]), (sh, sw, 1, 1))  # H W Cin N
            term = jnp.einsum("hwcn,cd->hwdn", tap, kernel[i, j]) if cin > 1 else tap * kernel[i, j, 0][:, None]
            y = term if y is None else y + term
    y = jnp.transpose(y, (3, 0, 1, 2))
    if bf16:
        # Integer rounding (the bias added in float32 between two roundings, as XLA adds two bf16
        # arrays), and a barrier that keeps the bf16 ops that follow out of this loop: fused into
        # it they run at the speed of XLA's unvectorised bf16 converts. The same bits as casting
        # and adding in bf16.
        y = narrow_to_bf16(y)
        if bias is not None:
            y = narrow_to_bf16(widen_bf16(y) + widen_bf16(bias))
        return jax.lax.optimization_barrier(y)
    y = y.astype(out_dtype)
    return y if bias is None else y + bias


@partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def shift_add_conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, ...],
                   pads: tuple[tuple[int, int], ...]) -> jax.Array:
    """Same result as XLA's NHWC/HWIO convolution, computed as shifted multiply-adds.

    On XLA's CPU backend a convolution with one input channel (the first layer of every
    grayscale model) runs several times slower than this shifted sum (bench/RESULTS.md).
    Derivatives use XLA's own convolution (custom JVP), so gradients, transposes and HVPs cost
    what they did before.
    """
    return _shift_add_conv_impl(x, kernel, strides, pads)


def _conv_tangent(x, kernel, dx, dkernel, strides, pads):
    dy = None
    if not isinstance(dx, SymbolicZero):
        dy = _xla_conv(dx, kernel, strides, pads)
    if not isinstance(dkernel, SymbolicZero):
        dk = _xla_conv(x, dkernel, strides, pads)
        dy = dk if dy is None else dy + dk
    return dy


def _shift_add_conv_jvp(strides, pads, primals, tangents):
    x, kernel = primals
    dx, dkernel = tangents
    y = shift_add_conv(x, kernel, strides, pads)
    dy = _conv_tangent(x, kernel, dx, dkernel, strides, pads)
    if dy is None:
        dy = SymbolicZero(jax.core.get_aval(y).to_tangent_aval())
    return y, dy


shift_add_conv.defjvp(_shift_add_conv_jvp, symbolic_zeros=True)


@partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def shift_add_conv_bias(x: jax.Array, kernel: jax.Array, bias: jax.Array, strides: tuple[int, ...],
                        pads: tuple[tuple[int, int], ...]) -> jax.Array:
    """``shift_add_conv(x, kernel) + bias``, with the same bits; in bf16 the bias is added inside
    the convolution's loop, where XLA's CPU backend adds it several times faster."""
    return _shift_add_conv_impl(x, kernel, strides, pads, bias)


def _shift_add_conv_bias_jvp(strides, pads, primals, tangents):
    x, kernel, bias = primals
    dx, dkernel, dbias = tangents
    y = shift_add_conv_bias(x, kernel, bias, strides, pads)
    dy = _conv_tangent(x, kernel, dx, dkernel, strides, pads)
    if not isinstance(dbias, SymbolicZero):
        db = jnp.broadcast_to(dbias, y.shape)
        dy = db if dy is None else dy + db
    if dy is None:
        dy = SymbolicZero(jax.core.get_aval(y).to_tangent_aval())
    return y, dy


shift_add_conv_bias.defjvp(_shift_add_conv_bias_jvp, symbolic_zeros=True)


CONV_IMPLS = ("auto", "xla", "shift_add")


def check_conv_impl(impl: str) -> str:
    """Validate a convolution implementation name."""
    if impl not in CONV_IMPLS:
        raise JaxfaultError(f"unknown convolution implementation {impl!r}; choose {', '.join(CONV_IMPLS)}")
    return impl


def resolve_conv_impl(impl: str, in_channels: int) -> str:
    """The implementation a convolution with this many input channels runs: 'auto' is
    'shift_add' for one input channel on the CPU backend (where it is measured faster), else
    'xla'; 'xla' and 'shift_add' are themselves."""
    if check_conv_impl(impl) == "auto":
        return "shift_add" if in_channels == 1 and jax.default_backend() == "cpu" else "xla"
    return impl


def conv2d(x: jax.Array, kernel: jax.Array, strides=(1, 1), padding="SAME", impl: str = "auto",
           bias: jax.Array | None = None) -> jax.Array:
    """NHWC x HWIO convolution, plus ``bias`` (per output channel) when given; impl 'xla',
    'shift_add', or 'auto' (shift_add for one input channel on the CPU backend, where it is
    measured faster, else XLA's convolution)."""
    check_conv_impl(impl)
    strides = tuple(int(s) for s in strides)
    kh, kw = kernel.shape[:2]
    if isinstance(padding, str):
        pads = tuple(jax.lax.padtype_to_pads(x.shape[1:3], (kh, kw), strides, padding))
    else:
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    impl = resolve_conv_impl(impl, kernel.shape[2])
    if impl == "shift_add":
        if bias is not None:
            return shift_add_conv_bias(x, kernel, bias, strides, pads)
        return shift_add_conv(x, kernel, strides, pads)
    y = _xla_conv(x, kernel, strides, pads)
    return y if bias is None else y + bias


def with_conv_impl(module: nn.Module, impl: str) -> nn.Module:
    """`module` with convolution implementation `impl` (a clone; the original is unchanged).

    Modules without a ``conv_impl`` field (plain flax models) are returned as they are: their
    convolutions are flax's own, i.e. XLA's."""
    check_conv_impl(impl)
    if "conv_impl" in getattr(module, "__dataclass_fields__", {}):
        return module.clone(conv_impl=impl)
    return module


def uniform_init(bound: float) -> nn.initializers.Initializer:
    """U(-bound, bound): PyTorch's default bias initialisation with bound = 1/sqrt(fan_in)."""
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def torch_default_inits(fan_in: int) -> dict:
    """kernel_init / bias_init of PyTorch's Conv2d / ConvTranspose2d defaults: both uniform in
    +-1/sqrt(fan_in) (kaiming_uniform with a = sqrt(5) gives exactly that bound for the weight)."""
    bound = 1.0 / math.sqrt(fan_in)
    return {"kernel_init": uniform_init(bound), "bias_init": uniform_init(bound)}


class Conv(nn.Module):
    """2-D convolution (NHWC, HWIO kernel) whose kernel is fake-quantized when quant_bits is set."""

    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (1, 1)
    padding: str | Sequence[tuple[int, int]] = "SAME"
    use_bias: bool = True
    quant_bits: int | None = None
    kernel_init: nn.initializers.Initializer = nn.initializers.kaiming_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, x.shape[-1], self.features))
        if self.quant_bits is not None:
            kernel = fake_quant(kernel, self.quant_bits)
        bias = self.param("bias", self.bias_init, (self.features,)).astype(x.dtype) if self.use_bias else None
        return conv2d(x, kernel.astype(x.dtype), self.strides, self.padding, self.conv_impl, bias)


class ConvTranspose(nn.Module):
    """Transposed 2-D convolution with PyTorch's ConvTranspose2d geometry, kernel fake-quantized
    when quant_bits is set.

    Kernel layout (kh, kw, in, out): ``kernel[i, j, c, o]`` is PyTorch's ``weight[c, o, i, j]``.
    Output pixel ``(y, x)`` receives ``in[n, a, b, c] * kernel[i, j, c, o]`` for every input pixel
    with ``y = a * stride - padding + i`` (same for x), so the output size is
    ``(H - 1) * stride - 2 * padding + kh``. Computed as XLA's convolution of the stride-dilated
    input, padded by ``k - 1 - padding``, with the spatially flipped kernel.
    """

    features: int
    kernel_size: Sequence[int] = (2, 2)
    strides: Sequence[int] = (2, 2)
    padding: int = 0
    use_bias: bool = True
    quant_bits: int | None = None
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        if not 0 <= self.padding <= min(kh, kw) - 1:
            raise JaxfaultError(f"transposed-conv padding must be in [0, {min(kh, kw) - 1}], got {self.padding}")
        kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features))
        if self.quant_bits is not None:
            kernel = fake_quant(kernel, self.quant_bits)
        pads = ((kh - 1 - self.padding,) * 2, (kw - 1 - self.padding,) * 2)
        y = jax.lax.conv_general_dilated(x, kernel[::-1, ::-1].astype(x.dtype), window_strides=(1, 1),
                                         padding=pads, lhs_dilation=tuple(int(s) for s in self.strides),
                                         dimension_numbers=_DIMENSION_NUMBERS)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,)).astype(x.dtype)
        return y


class Dense(nn.Module):
    """Fully connected layer whose kernel is fake-quantized when quant_bits is set."""

    features: int
    use_bias: bool = True
    quant_bits: int | None = None
    kernel_init: nn.initializers.Initializer = default_kernel_init

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
        if self.quant_bits is not None:
            kernel = fake_quant(kernel, self.quant_bits)
        y = jnp.dot(x, kernel.astype(x.dtype))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(x.dtype)
        return y
