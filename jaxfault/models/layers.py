"""Conv and Dense layers with optional weight fake-quantization (QAT, SPEC 3.1).

They create the same parameters as flax.linen.Conv / Dense ('kernel', 'bias'), so every fault
method finds the weights by name and a model with quant_bits=None runs the same params unquantized.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfault.quant import fake_quant

default_kernel_init = nn.initializers.lecun_normal()


class Conv(nn.Module):
    """2-D convolution (NHWC, HWIO kernel) whose kernel is fake-quantized when quant_bits is set."""

    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (1, 1)
    padding: str | Sequence[tuple[int, int]] = "SAME"
    use_bias: bool = True
    quant_bits: int | None = None
    kernel_init: nn.initializers.Initializer = nn.initializers.kaiming_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, x.shape[-1], self.features))
        if self.quant_bits is not None:
            kernel = fake_quant(kernel, self.quant_bits)
        y = jax.lax.conv_general_dilated(
            x, kernel.astype(x.dtype), window_strides=tuple(self.strides), padding=self.padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(x.dtype)
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
