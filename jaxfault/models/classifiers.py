"""Image classifiers (NHWC, any input size and channel count): LeNet-5, the SWIM code's LeNet, a small
ConvNet, ResNet-18/50 and VGG-11/16/19 (CIFAR-style stems, batch norm), each optionally QAT. Every
model has a ``conv_impl`` field (see jaxfault.models.layers) passed down to its convolutions."""
from __future__ import annotations

from functools import partial
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxfault.models.layers import Conv, Dense


def _bn(train: bool, name: str | None = None):
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


def _lenet_head(x, num_classes: int, quant_bits: int | None):
    """The fully connected part LeNet5 and LeNetSWIM share: flatten, 120-84 with ReLU, classes.
    Called inside a compact __call__, so its Dense layers are the caller's Dense_0..Dense_2."""
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(Dense(120, quant_bits=quant_bits)(x))
    x = nn.relu(Dense(84, quant_bits=quant_bits)(x))
    return Dense(num_classes, quant_bits=quant_bits)(x)


class LeNet5(nn.Module):
    """LeNet-5: conv5x5(6, pad 2)-pool-conv5x5(16)-pool-120-84-classes, ReLU, max pooling."""

    num_classes: int = 10
    quant_bits: int | None = None
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool = False):
        q = self.quant_bits
        x = nn.relu(Conv(6, (5, 5), padding=((2, 2), (2, 2)), quant_bits=q, conv_impl=self.conv_impl)(x))
        x = nn.max_pool(x, (2, 2), (2, 2), padding="SAME")
        x = nn.relu(Conv(16, (5, 5), padding="VALID" if min(x.shape[1:3]) >= 5 else "SAME", quant_bits=q,
                         conv_impl=self.conv_impl)(x))
        x = nn.max_pool(x, (2, 2), (2, 2), padding="SAME")
        return _lenet_head(x, self.num_classes, q)


class LeNetSWIM(nn.Module):
    """The LeNet of the SWIM paper's code: conv3x3(6, pad 1)-ReLU-pool-conv3x3(16, pad 1)-ReLU-pool,
    then 120-84-classes with ReLU; 2x2 max pooling with stride 2 (floor). For 28x28x1 inputs the
    flattened features are 16*7*7 = 784 and the kernels hold 105,918 weights.

    Flax flattens NHWC as (H, W, C) where torch flattens (C, H, W): the first dense kernel is the
    torch one with its input rows permuted, which changes no function a trained model computes."""

    num_classes: int = 10
    quant_bits: int | None = None
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool = False):
        q = self.quant_bits
        for features in (6, 16):
            x = nn.relu(Conv(features, (3, 3), padding=((1, 1), (1, 1)), quant_bits=q, conv_impl=self.conv_impl)(x))
            x = nn.max_pool(x, (2, 2), (2, 2), padding="VALID")
        return _lenet_head(x, self.num_classes, q)


class ConvNet(nn.Module):
    """Small CIFAR-style ConvNet: 3 stages of 2x(conv3x3-BN-ReLU) + max-pool (32-64-128), FC 256."""

    num_classes: int = 10
    widths: Sequence[int] = (32, 64, 128)
    quant_bits: int | None = None
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool = False):
        for w in self.widths:
            for _ in range(2):
                x = Conv(w, (3, 3), use_bias=False, quant_bits=self.quant_bits, conv_impl=self.conv_impl)(x)
                x = nn.relu(_bn(train)(x))
            x = nn.max_pool(x, (2, 2), (2, 2), padding="SAME")
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(Dense(256, quant_bits=self.quant_bits)(x))
        return Dense(self.num_classes, quant_bits=self.quant_bits)(x)


class BasicBlock(nn.Module):
    features: int
    strides: int = 1
    quant_bits: int | None = None
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool):
        conv = partial(Conv, use_bias=False, quant_bits=self.quant_bits, conv_impl=self.conv_impl)
        y = nn.relu(_bn(train)(conv(self.features, (3, 3), (self.strides,) * 2)(x)))
        y = _bn(train)(conv(self.features, (3, 3))(y))
        if self.strides != 1 or x.shape[-1] != self.features:
            x = _bn(train)(conv(self.features, (1, 1), (self.strides,) * 2)(x))
        return nn.relu(x + y)


class Bottleneck(nn.Module):
    features: int
    strides: int = 1
    quant_bits: int | None = None
    conv_impl: str = "auto"
    expansion: int = 4

    @nn.compact
    def __call__(self, x, train: bool):
        conv = partial(Conv, use_bias=False, quant_bits=self.quant_bits, conv_impl=self.conv_impl)
        out = self.features * self.expansion
        y = nn.relu(_bn(train)(conv(self.features, (1, 1))(x)))
        y = nn.relu(_bn(train)(conv(self.features, (3, 3), (self.strides,) * 2)(y)))
        y = _bn(train)(conv(out, (1, 1))(y))
        if self.strides != 1 or x.shape[-1] != out:
            x = _bn(train)(conv(out, (1, 1), (self.strides,) * 2)(x))
        return nn.relu(x + y)


class ResNet(nn.Module):
    """ResNet with a CIFAR-style 3x3 stem (no max-pool), global average pooling, linear head."""

    stage_sizes: Sequence[int]
    block: type = BasicBlock
    num_classes: int = 10
    width: int = 64
    quant_bits: int | None = None
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Conv(self.width, (3, 3), use_bias=False, quant_bits=self.quant_bits, conv_impl=self.conv_impl)(x)
        x = nn.relu(_bn(train)(x))
        for i, n in enumerate(self.stage_sizes):
            for j in range(n):
                strides = 2 if i > 0 and j == 0 else 1
                x = self.block(self.width * 2 ** i, strides, quant_bits=self.quant_bits,
                               conv_impl=self.conv_impl)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return Dense(self.num_classes, quant_bits=self.quant_bits)(x)


VGG_CONFIGS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"),
}


class VGG(nn.Module):
    """VGG with batch norm (CIFAR-style: SAME pooling, so 28x28 inputs work), linear head."""

    config: Sequence = VGG_CONFIGS["vgg11"]
    num_classes: int = 10
    quant_bits: int | None = None
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool = False):
        for v in self.config:
            if v == "M":
                x = nn.max_pool(x, (2, 2), (2, 2), padding="SAME")
            else:
                x = Conv(v, (3, 3), use_bias=False, quant_bits=self.quant_bits, conv_impl=self.conv_impl)(x)
                x = nn.relu(_bn(train)(x))
        x = jnp.mean(x, axis=(1, 2))
        return Dense(self.num_classes, quant_bits=self.quant_bits)(x)
