"""Model zoo: create_model(name, num_classes, quant_bits) -> a flax.linen classifier (the CNNs and
the small ViT 'vit', jaxfault.models.vit); the transformer language-model families GPT2 and Llama
(jaxfault.models.gpt2 / llama); from_hf(folder) -> (model, variables) for Hugging Face checkpoint
folders (jaxfault.models.hf)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxfault.core.errors import JaxfaultError
from jaxfault.models.classifiers import (VGG, VGG_CONFIGS, BasicBlock, Bottleneck, ConvNet, LeNet5, LeNetSWIM,
                                         ResNet)
from jaxfault.models.gpt2 import GPT2
from jaxfault.models.hf import from_hf, is_hf_folder, load_tokenizer
from jaxfault.models.layers import Conv, Dense
from jaxfault.models.llama import Llama
from jaxfault.models.transformer import MODULE_KINDS, module_kind
from jaxfault.models.vit import ViT
from jaxfault.core.quant import check_bits

MODEL_NAMES = ("lenet", "lenet-swim", "convnet", "resnet18", "resnet50", "vgg11", "vgg16", "vgg19", "vit")


def create_model(name: str, num_classes: int = 10, quant_bits: int | None = None):
    """Build a classifier by name; quant_bits (4/8/16) turns on weight fake-quantization (QAT)."""
    if quant_bits is not None:
        check_bits(quant_bits)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise JaxfaultError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if name == "lenet":
        return LeNet5(num_classes=num_classes, quant_bits=quant_bits)
    if name == "lenet-swim":
        return LeNetSWIM(num_classes=num_classes, quant_bits=quant_bits)
    if name == "convnet":
        return ConvNet(num_classes=num_classes, quant_bits=quant_bits)
    if name == "resnet18":
        return ResNet((2, 2, 2, 2), BasicBlock, num_classes=num_classes, quant_bits=quant_bits)
    if name == "resnet50":
        return ResNet((3, 4, 6, 3), Bottleneck, num_classes=num_classes, quant_bits=quant_bits)
    if name in VGG_CONFIGS:
        return VGG(VGG_CONFIGS[name], num_classes=num_classes, quant_bits=quant_bits)
    if name == "vit":
        return ViT(num_classes=num_classes, quant_bits=quant_bits)
    raise JaxfaultError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")


def init_variables(model, key: jax.Array, input_shape) -> dict:
    """Initialise {'params', maybe 'batch_stats'} for inputs of shape (H, W, C)."""
    if len(tuple(input_shape)) != 3:
        raise JaxfaultError(f"input_shape must be (H, W, C), got {tuple(input_shape)!r}")
    x = jnp.zeros((1, *input_shape), jnp.float32)
    return dict(jax.jit(lambda k: model.init(k, x, train=False))(key))


__all__ = ["MODEL_NAMES", "create_model", "init_variables", "Conv", "Dense", "LeNet5", "LeNetSWIM", "ConvNet",
           "ResNet", "VGG", "GPT2", "Llama", "ViT", "MODULE_KINDS", "module_kind",
           "from_hf", "is_hf_folder", "load_tokenizer"]
