"""A classifier as a sequence of stages, so that a faulty instance can start from clean activations.

A stage is a pure ``fn(params, x) -> x`` together with the top-level parameter names it reads.
Running the stages one after the other computes exactly what ``model.apply`` computes (same
layers, same operations, same order): a faulty instance whose first changed parameter sits in
stage k shares the clean model's activations at the input of stage k, and only stages k, k+1, ...
need to run (jaxfault.engine.reuse).

Split models: LeNet5 and LeNetSWIM, as (conv-ReLU-pool, conv-ReLU-pool, fully connected head).
``model_stages`` returns None for every other model (no batch statistics, QAT or branches to
reason about): such models are evaluated whole.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import flax.linen as nn

from jaxfault.models.classifiers import LeNet5, LeNetSWIM
from jaxfault.models.layers import Conv, Dense


class Stage(NamedTuple):
    """One stage: the top-level parameter names it reads and fn(params, x) -> x."""

    leaves: tuple
    fn: Callable


def _conv(p, x, features, kernel, padding, impl):
    return nn.relu(Conv(features, kernel, padding=padding, conv_impl=impl).apply({"params": p}, x))


def _head(params, x, num_classes):
    """LeNet's fully connected part (jaxfault.models.classifiers._lenet_head) on Dense_0..Dense_2."""
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(Dense(120).apply({"params": params["Dense_0"]}, x))
    x = nn.relu(Dense(84).apply({"params": params["Dense_1"]}, x))
    return Dense(num_classes).apply({"params": params["Dense_2"]}, x)


def _lenet5(model: LeNet5) -> tuple:
    impl = model.conv_impl

    def first(params, x):
        x = _conv(params["Conv_0"], x, 6, (5, 5), ((2, 2), (2, 2)), impl)
        return nn.max_pool(x, (2, 2), (2, 2), padding="SAME")

    def second(params, x):
        x = _conv(params["Conv_1"], x, 16, (5, 5), "VALID" if min(x.shape[1:3]) >= 5 else "SAME", impl)
        return nn.max_pool(x, (2, 2), (2, 2), padding="SAME")

    return (Stage(("Conv_0",), first), Stage(("Conv_1",), second),
            Stage(("Dense_0", "Dense_1", "Dense_2"), lambda p, x: _head(p, x, model.num_classes)))


def _lenet_swim(model: LeNetSWIM) -> tuple:
    impl = model.conv_impl

    def conv_stage(name, features):
        def fn(params, x):
            x = _conv(params[name], x, features, (3, 3), ((1, 1), (1, 1)), impl)
            return nn.max_pool(x, (2, 2), (2, 2), padding="VALID")
        return Stage((name,), fn)

    return (conv_stage("Conv_0", 6), conv_stage("Conv_1", 16),
            Stage(("Dense_0", "Dense_1", "Dense_2"), lambda p, x: _head(p, x, model.num_classes)))


_SPLITS = {LeNet5: _lenet5, LeNetSWIM: _lenet_swim}


def model_stages(model, variables=None) -> tuple | None:
    """The stages of a model (a tuple of Stage), or None when it is not split.

    Args:
      model: a flax module; only LeNet5 and LeNetSWIM without quantization are split.
      variables: optional variables; when given, a model whose variables hold anything but the
        stages' parameters (batch statistics, extra parameters) is not split.
    Returns:
      The stages in data-flow order, or None.
    """
    split = _SPLITS.get(type(model))
    if split is None or getattr(model, "quant_bits", None):
        return None
    stages = split(model)
    if variables is not None:
        names = {n for s in stages for n in s.leaves}
        if set(variables) - {"params"} or set(variables.get("params", {})) != names:
            return None
    return stages


def staged_apply(stages, params, x, start: int = 0):
    """Run stages[start:] on x (the input of stage ``start``); the model's output for start 0."""
    for s in stages[start:]:
        x = s.fn(params, x)
    return x
