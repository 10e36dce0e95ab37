"""Named networks for the estimator: the AlexNet reference preset (docs/energy.md) and the project's
models (jaxfault.models), the language models ('gpt2': GPT-2 small's configuration, or a Hugging
Face folder / config.json path, priced from its config alone), plus user models given as
'package.module:attribute'. A language model's input shape is (context_length,).

Every network is a Flax module; its layer list always comes from `layers_from_model` (a traced
forward pass), never from a hand-written table.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Sequence

import flax.linen as nn

from jaxfault.energy.layers import Layer, layers_from_model
from jaxfault.core.errors import JaxfaultError

# The reference example (docs/energy.md, "The reference example: AlexNet"): per-layer bit widths
# and pruning ratios of AlexNet.
ALEXNET_REFERENCE = {
    "qw": (5, 3, 3, 6, 4, 4, 7, 4),
    "qa": (5, 6, 5, 7, 4, 7, 7, 6),
    "pw": (0.625, 0.375, 0.125, 0.195, 0.121, 0.008, 0.234, 0.4),
}


class AlexNet(nn.Module):
    """AlexNet of docs/energy.md's reference example (single tower, no LRN/dropout: they cost
    nothing): conv 11x11/4 96, pool 3/2, conv 5x5 pad 2 256, pool, conv 3x3 pad 1 384, 384, 256, pool,
    FC 4096, 4096, num_classes."""

    num_classes: int = 1000

    @nn.compact
    def __call__(self, x, train: bool = False):
        pool = lambda y: nn.max_pool(y, (3, 3), strides=(2, 2))
        x = nn.relu(nn.Conv(96, (11, 11), strides=(4, 4), padding="VALID", name="conv1")(x))
        x = pool(x)
        x = nn.relu(nn.Conv(256, (5, 5), padding=2, name="conv2")(x))
        x = pool(x)
        x = nn.relu(nn.Conv(384, (3, 3), padding=1, name="conv3")(x))
        x = nn.relu(nn.Conv(384, (3, 3), padding=1, name="conv4")(x))
        x = nn.relu(nn.Conv(256, (3, 3), padding=1, name="conv5")(x))
        x = pool(x)
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(4096, name="fc1")(x))
        x = nn.relu(nn.Dense(4096, name="fc2")(x))
        return nn.Dense(self.num_classes, name="fc3")(x)


# default input (H, W, C) per project model name: the dataset each is trained on in the project
DEFAULT_INPUTS = {
    "alexnet": (227, 227, 3),
    "lenet": (28, 28, 1),
    "vit": (28, 28, 1),  # its 7x7 patches tile Fashion-MNIST's 28x28
}
GENERIC_INPUT = (32, 32, 3)


@dataclasses.dataclass
class Network:
    name: str
    layers: list[Layer]
    input_shape: tuple[int, ...]


def _project_model_names() -> list[str]:
    try:
        from jaxfault.models import MODEL_NAMES
    except ImportError:
        return []
    return list(MODEL_NAMES)


def _generator_names() -> list[str]:
    try:
        from jaxfault.models.generators import GENERATOR_NAMES
    except ImportError:
        return []
    return list(GENERATOR_NAMES)


# GPT-2 small (124M parameters): Hugging Face's GPT2Config defaults
LM_PRESETS = {"gpt2": dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)}
DEFAULT_CONTEXT = 1024  # tokens, capped at the model's positions


def _hf_config_path(name: str):
    """A Hugging Face folder or config.json named by `name`, or None."""
    from pathlib import Path

    p = Path(name)
    if p.is_dir() and (p / "config.json").is_file():
        return p / "config.json"
    if p.is_file() and p.suffix == ".json":
        return p
    return None


def _language_model(name: str):
    """The LM preset, jaxfault language-model checkpoint folder or Hugging Face config `name`
    describes (its architecture: no weights are read), or None when it names none of them."""
    if name in LM_PRESETS:
        from jaxfault.models import GPT2

        return GPT2(**LM_PRESETS[name])
    from pathlib import Path

    from jaxfault.training.checkpoints import META_FILE, read_metadata

    if (Path(name) / META_FILE).is_file() and read_metadata(name).get("kind") == "language_model":
        from jaxfault.training.lm import build_language_model

        cfg = read_metadata(name)["config"]
        return build_language_model(cfg["family"], cfg["model_config"])
    path = _hf_config_path(name)
    if path is None:
        return None
    import json

    from jaxfault.models.hf import model_from_config

    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise JaxfaultError(f"{path} is not valid JSON: {' '.join(str(e).split())}") from None
    return model_from_config(cfg)


def default_context(model) -> int:
    """DEFAULT_CONTEXT tokens, or fewer when the model has fewer positions."""
    positions = getattr(model, "n_positions", None) or getattr(model, "max_position_embeddings", None)
    return min(DEFAULT_CONTEXT, int(positions)) if positions else DEFAULT_CONTEXT


def network_names() -> list[str]:
    """Names accepted by get_network (besides 'module:attribute'): AlexNet, the project's
    classifiers and, where present, the NeuralFuse generators."""
    return ["alexnet"] + [n for n in _project_model_names() if n != "alexnet"] + _generator_names() + list(LM_PRESETS)


def _user_model(spec: str, num_classes: int):
    """The Flax module that 'package.module:attribute' names: a module instance, a module class, or a
    factory function returning a module (called with num_classes when it takes it). Anything else,
    or a factory returning something else, is a one-line JaxfaultError before the module is used."""
    import functools
    import inspect

    mod_name, _, attr = spec.partition(":")
    try:
        obj = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise JaxfaultError(f"unknown network {spec!r}: {e}") from None
    if isinstance(obj, nn.Module):
        return obj
    what = f"network {spec!r}"
    if isinstance(obj, type):
        if not issubclass(obj, nn.Module):
            raise JaxfaultError(f"{what} is the class {obj.__name__}, not a Flax module (flax.linen.Module)")
    elif not (inspect.isfunction(obj) or inspect.ismethod(obj) or isinstance(obj, functools.partial)):
        raise JaxfaultError(f"{what} is a {type(obj).__name__}, not a Flax module or a function returning one")
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        params = {}
    try:
        model = obj(num_classes=num_classes) if "num_classes" in params else obj()
    except Exception as e:  # the user's constructor: report its failure in one line
        raise JaxfaultError(f"{what} could not be built: {type(e).__name__}: {' '.join(str(e).split())[:160]}") from None
    if not isinstance(model, nn.Module):
        raise JaxfaultError(f"{what} returned a {type(model).__name__}, not a Flax module (flax.linen.Module)")
    return model


def get_model(name: str, num_classes: int | None = None) -> nn.Module:
    """A Flax module by name: 'alexnet', a jaxfault.models name, an LM preset or Hugging Face
    folder / config.json, or 'package.module:attribute'."""
    lm = _language_model(name)
    if lm is not None:
        return lm
    if name == "alexnet":
        return AlexNet(num_classes=num_classes or 1000)
    if ":" in name:
        return _user_model(name, num_classes or 10)
    if name in _project_model_names():
        from jaxfault.models import create_model

        return create_model(name, num_classes=num_classes or 10)
    if name in _generator_names():
        from jaxfault.models.generators import create_generator

        return create_generator(name)
    raise JaxfaultError(f"unknown network {name!r}; choose from {', '.join(network_names())} or 'module:attribute'")


def get_network(name: str, input_shape: Sequence[int] | None = None, num_classes: int | None = None) -> Network:
    """Layer list of a named network for a batch-1 input of input_shape (H, W, C), or for a
    language model one sequence of input_shape = (context_length,) tokens (default:
    default_context)."""
    model = get_model(name, num_classes)
    if getattr(model, "TAKES_TOKENS", False):
        shape = tuple(input_shape) if input_shape is not None else (default_context(model),)
        if len(shape) != 1 or min(shape) < 1:
            raise JaxfaultError(f"language model {name!r} takes a context length (one positive integer), got {shape}")
        return Network(name, layers_from_model(model, shape), shape)
    shape = tuple(input_shape) if input_shape is not None else DEFAULT_INPUTS.get(name, GENERIC_INPUT)
    if len(shape) != 3 or min(shape) < 1:
        raise JaxfaultError(f"`input` must be H,W,C positive integers, got {shape}")
    try:
        layers = layers_from_model(model, shape)
    except JaxfaultError:
        raise
    except (TypeError, ValueError, ArithmeticError, IndexError) as e:  # shape errors inside the model: the input does not fit it
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise JaxfaultError(f"network {name!r} cannot run on input {shape}: {msg}") from None
    return Network(name, layers, shape)
