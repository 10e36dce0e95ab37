"""A tiny QAT-style classifier for NeuralFuse tests (same interface as jaxfault.models:
quant_bits field, apply(variables, x, train=False), kernels named 'kernel')."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfault.core.quant import fake_quant


class QConv(nn.Module):
    features: int
    quant_bits: int | None = None

    @nn.compact
    def __call__(self, x):
        k = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features))
        b = self.param("bias", nn.initializers.zeros, (self.features,))
        if self.quant_bits:
            k = fake_quant(k, self.quant_bits)
        return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + b


class QDense(nn.Module):
    features: int
    quant_bits: int | None = None

    @nn.compact
    def __call__(self, x):
        k = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
        b = self.param("bias", nn.initializers.zeros, (self.features,))
        if self.quant_bits:
            k = fake_quant(k, self.quant_bits)
        return x @ k + b


class TinyNet(nn.Module):
    num_classes: int = 10
    quant_bits: int | None = 8

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(QConv(4, self.quant_bits)(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(QConv(8, self.quant_bits)(x))
        x = x.reshape(x.shape[0], -1)
        return QDense(self.num_classes, self.quant_bits)(x)
