"""A classifier as a sequence of stages, so that a faulty instance can start from clean activations.

A stage is a pure ``fn(params, x) -> x`` together with the top-level parameter names it reads.
Running the stages one after the other computes exactly what ``model.apply`` computes (same
layers, same operations, same order): a faulty instance whose first changed parameter sits in
stage k shares the clean model's activations at the input of stage k, and only stages k, k+1, ...
need to run (jaxfault.engine.reuse).

Split models: LeNet5 and LeNetSWIM, as (conv-ReLU-pool, conv-ReLU-pool, fully connected head).
``model_stages`` returns None for every other model (no batch statistics, QAT or branches to
reason about): such models are evaluated whole.

Cuts and arithmetic dtype. In float32 every cut is exact: the compiled whole model rounds every
operation to float32, as the stages do. In bfloat16 XLA's CPU backend keeps float32 values
across some fused operations (a convolution's output flows into its ReLU, pooling and the next
layer without rounding), so cutting there would round once more than the whole model. A cut is
exact in every dtype only after a stage whose convolution rounds its output itself: the
shift-add convolution rounds to bf16 with integer arithmetic behind an optimisation barrier, and
the ReLU and max-pooling after it only select values. ``model_stages(..., dtype)`` merges the
stages across every other cut, so a bf16 LeNet is split once, after its first stage, when that
convolution runs shift-add (one input channel on the CPU backend, or ``conv_impl="shift_add"``).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import flax.linen as nn
import numpy as np

from jaxfault.models.classifiers import LeNet5, LeNetSWIM
from jaxfault.models.layers import Conv, Dense, resolve_conv_impl


class Stage(NamedTuple):
    """One stage: the top-level parameter names it reads, fn(params, x) -> x, and whether its
    output is rounded to the activation dtype inside the stage (so a cut after it is exact in
    every dtype, not only float32)."""

    leaves: tuple
    fn: Callable
    rounds_output: bool = False


def _conv(p, x, features, kernel, padding, impl):
    return nn.relu(Conv(features, kernel, padding=padding, conv_impl=impl).apply({"params": p}, x))


def _head(params, x, num_classes):
    """LeNet's fully connected part (jaxfault.models.classifiers._lenet_head) on Dense_0..Dense_2."""
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(Dense(120).apply({"params": params["Dense_0"]}, x))
    x = nn.relu(Dense(84).apply({"params": params["Dense_1"]}, x))
    return Dense(num_classes).apply({"params": params["Dense_2"]}, x)


def _first_conv_rounds(model, in_channels: int) -> bool:
    """True when the model's first convolution, on inputs with this many channels, runs shift-add
    (which rounds its output itself; see the module docstring)."""
    return resolve_conv_impl(model.conv_impl, in_channels) == "shift_add"


def _lenet5(model: LeNet5, in_channels: int) -> tuple:
    impl = model.conv_impl

    def first(params, x):
        x = _conv(params["Conv_0"], x, 6, (5, 5), ((2, 2), (2, 2)), impl)
        return nn.max_pool(x, (2, 2), (2, 2), padding="SAME")

    def second(params, x):
        x = _conv(params["Conv_1"], x, 16, (5, 5), "VALID" if min(x.shape[1:3]) >= 5 else "SAME", impl)
        return nn.max_pool(x, (2, 2), (2, 2), padding="SAME")

    return (Stage(("Conv_0",), first, _first_conv_rounds(model, in_channels)), Stage(("Conv_1",), second),
            Stage(("Dense_0", "Dense_1", "Dense_2"), lambda p, x: _head(p, x, model.num_classes)))


def _lenet_swim(model: LeNetSWIM, in_channels: int) -> tuple:
    impl = model.conv_impl

    def conv_stage(name, features, rounds=False):
        def fn(params, x):
            x = _conv(params[name], x, features, (3, 3), ((1, 1), (1, 1)), impl)
            return nn.max_pool(x, (2, 2), (2, 2), padding="VALID")
        return Stage((name,), fn, rounds)

    return (conv_stage("Conv_0", 6, _first_conv_rounds(model, in_channels)), conv_stage("Conv_1", 16),
            Stage(("Dense_0", "Dense_1", "Dense_2"), lambda p, x: _head(p, x, model.num_classes)))


_SPLITS = {LeNet5: _lenet5, LeNetSWIM: _lenet_swim}


def model_stages(model, variables=None, dtype=None) -> tuple | None:
    """The stages of a model (a tuple of Stage), or None when it is not split.

    Args:
      model: a flax module; only LeNet5 and LeNetSWIM without quantization are split.
      variables: optional variables; when given, a model whose variables hold anything but the
        stages' parameters (batch statistics, extra parameters) is not split, and the first
        kernel's input channels decide its convolution's implementation (default: one channel).
      dtype: the arithmetic dtype (default float32: every cut). For any other dtype, stages are
        merged across every cut after a stage that does not round its own output; None when
        nothing is left to cut.
    Returns:
      The stages in data-flow order, or None.
    """
    split = _SPLITS.get(type(model))
    if split is None or getattr(model, "quant_bits", None):
        return None
    in_channels = 1
    if variables is not None:
        kernel = variables.get("params", {}).get("Conv_0", {}).get("kernel")
        in_channels = int(np.shape(kernel)[2]) if kernel is not None and np.ndim(kernel) == 4 else 1
    stages = split(model, in_channels)
    if variables is not None:
        names = {n for s in stages for n in s.leaves}
        if set(variables) - {"params"} or set(variables.get("params", {})) != names:
            return None
    if dtype is not None and np.dtype(dtype) != np.float32:
        stages = _merge_inexact_cuts(stages)
    return stages if len(stages) > 1 else None


def _merge_inexact_cuts(stages) -> tuple:
    """Stages merged across every cut after a stage that does not round its own output."""
    merged = [stages[0]]
    for s in stages[1:]:
        prev = merged[-1]
        if prev.rounds_output:
            merged.append(s)
            continue
        merged[-1] = Stage(prev.leaves + s.leaves,
                           lambda p, x, f=prev.fn, g=s.fn: g(p, f(p, x)), s.rounds_output)
    return tuple(merged)


def staged_apply(stages, params, x, start: int = 0):
    """Run stages[start:] on x (the input of stage ``start``); the model's output for start 0."""
    for s in stages[start:]:
        x = s.fn(params, x)
    return x
