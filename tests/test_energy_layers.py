"""Layer extraction from traced Flax models: shapes checked against the model definitions."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfault.energy import Layer, conv, fc, get_network, layers_from_model
from jaxfault.energy.networks import ALEXNET_REFERENCE
from jaxfault.core.errors import JaxfaultError
from jaxfault.core.quant import fake_quant


class SmallCNN(nn.Module):
    """SAME padding, stride 2 (asymmetric padding), flatten into a dense layer, fake-quant kernel."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(8, (3, 3), padding="SAME", name="a")(x))
        x = nn.Conv(16, (3, 3), strides=(2, 2), padding="SAME", name="b")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
        x = nn.avg_pool(nn.relu(x), (2, 2), strides=(2, 2))
        k = self.param("q_kernel", nn.initializers.lecun_normal(), (5, 5, 16, 4))
        x = jax.lax.conv_general_dilated(x, fake_quant(k, 8), (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        x = x.reshape((x.shape[0], -1))
        x = nn.Dense(32, name="fc")(x)
        return nn.Dense(10, name="out")(jnp.tanh(x))


class Odd(nn.Module):
    """Non-square input and kernel, a grouped conv, dense on a feature map, a skip connection,
    a pure activation x activation product (not a layer) and a parameter-only product."""

    @nn.compact
    def __call__(self, x):
        y = nn.Conv(6, (3, 5), strides=(1, 2), padding=((1, 1), (2, 2)), name="c1")(x)
        y = nn.Conv(6, (3, 3), padding=1, feature_group_count=3, name="dw")(y) + y
        z = nn.Dense(12, name="pointwise")(y)  # 1x1 conv over H x W
        s = self.param("s", nn.initializers.ones, (4, 4))
        t = s @ s  # parameter-only: not a layer
        att = jnp.einsum("nhwc,nhwc->nhw", z, z)  # activation x activation: not a layer
        return jnp.sum(att) * jnp.sum(t)


def test_small_cnn_shapes():
    layers = layers_from_model(SmallCNN(), (28, 28, 1))
    assert [l.name for l in layers] == ["a", "b", "q_kernel", "fc", "out"]
    a, b, q, f, o = layers
    assert a == Layer("a", "conv", (3, 3), 1, 8, (28, 28), ((1, 1), (1, 1)), (1, 1))
    # stride-2 SAME on 28: out 14, total pad = (14-1)*2 + 3 - 28 = 1 -> (0, 1)
    assert b == Layer("b", "conv", (3, 3), 8, 16, (28, 28), ((0, 1), (0, 1)), (2, 2))
    assert b.output_size == (14, 14)
    assert q == Layer("q_kernel", "conv", (5, 5), 16, 4, (7, 7))
    assert f == Layer("fc", "fc", (3, 3), 4, 32, (3, 3))  # flatten of 3x3x4 -> the model's K x K x C FC input
    assert o == Layer("out", "fc", (1, 1), 32, 10, (1, 1))


def test_odd_model_shapes_and_non_layers_ignored():
    layers = layers_from_model(Odd(), (9, 20, 3), apply_kwargs={})
    assert [l.name for l in layers] == ["c1", "dw", "pointwise"]
    c1, dw, pwise = layers
    assert c1 == Layer("c1", "conv", (3, 5), 3, 6, (9, 20), ((1, 1), (2, 2)), (1, 2))
    assert c1.output_size == (9, 10)
    assert dw == Layer("dw", "conv", (3, 3), 6, 6, (9, 10), ((1, 1), (1, 1)), (1, 1), groups=3)
    assert pwise == Layer("pointwise", "conv", (1, 1), 6, 12, (9, 10))


def test_real_variables_give_the_same_layers():
    model = SmallCNN()
    abstract = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 28, 28, 1))), jax.random.key(0))
    variables = jax.tree_util.tree_map(lambda s: np.ones(s.shape, s.dtype), abstract)  # concrete arrays
    assert layers_from_model(model, (28, 28, 1), variables) == layers_from_model(model, (28, 28, 1))


def test_alexnet_preset_matches_spec_reference_example():
    net = get_network("alexnet")
    want = [
        conv("conv1", 11, 3, 96, 227, stride=4),
        conv("conv2", 5, 96, 256, 27, padding=2),
        conv("conv3", 3, 256, 384, 13, padding=1),
        conv("conv4", 3, 384, 384, 13, padding=1),
        conv("conv5", 3, 384, 256, 13, padding=1),
        fc("fc1", 256, 4096, 6),
        fc("fc2", 4096, 4096),
        fc("fc3", 4096, 1000),
    ]
    assert net.layers == want
    assert [l.output_size for l in net.layers[:5]] == [(55, 55), (27, 27), (13, 13), (13, 13), (13, 13)]
    assert len(ALEXNET_REFERENCE["qw"]) == len(net.layers)


def test_bad_networks():
    with pytest.raises(JaxfaultError):
        get_network("no_such_net")
    with pytest.raises(JaxfaultError):
        get_network("alexnet", (10, 10, 3))  # 11x11 kernel on a 10x10 input
    with pytest.raises(JaxfaultError):
        get_network("no.such.module:Net")
    with pytest.raises(JaxfaultError):
        layers_from_model(nn.Dense(3), (0, 4, 4))

    class NoLayers(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.relu(x)

    with pytest.raises(JaxfaultError):
        layers_from_model(NoLayers(), (4, 4, 1), apply_kwargs={})


# ------------------------------------------------------------------ the project's models

from jaxfault.energy.layers import abstract_variables  # noqa: E402
from jaxfault.models import create_model  # noqa: E402


def _kernel_shapes(model, shape):
    params = abstract_variables(model, shape)["params"]
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = [getattr(k, "key", str(k)) for k in path]
        if names[-1] == "kernel":
            out["/".join(names[:-1])] = leaf.shape
    return out


def _check_against_params(model, shape, layers):
    """Every extracted layer matches its kernel parameter; every kernel is used exactly once."""
    kernels = _kernel_shapes(model, shape)
    assert sorted(l.name for l in layers) == sorted(kernels)
    for l in layers:
        ks = kernels[l.name]
        if l.kind == "conv":
            assert ks == (*l.kernel, l.in_channels // l.groups, l.out_channels)
        else:
            assert ks == (l.kernel[0] * l.kernel[1] * l.in_channels, l.out_channels)


def test_lenet_layers():
    net = get_network("lenet")  # default input: 28x28x1 (Fashion-MNIST)
    assert net.input_shape == (28, 28, 1)
    assert net.layers == [
        conv("Conv_0", 5, 1, 6, 28, padding=2),  # 28 -> 28, max-pool -> 14
        conv("Conv_1", 5, 6, 16, 14),  # VALID: 14 -> 10, max-pool -> 5
        fc("Dense_0", 16, 120, 5),  # flatten of 5x5x16
        fc("Dense_1", 120, 84),
        fc("Dense_2", 84, 10),
    ]
    _check_against_params(create_model("lenet"), (28, 28, 1), net.layers)
    # QAT variant (fake-quantized kernels) has the same layers
    assert layers_from_model(create_model("lenet", quant_bits=8), (28, 28, 1)) == net.layers


def test_resnet18_layers():
    net = get_network("resnet18", (32, 32, 3))
    want = [conv("Conv_0", 3, 3, 64, 32, padding=1)]
    b, size, cin = 0, 32, 64
    for stage, width in enumerate((64, 128, 256, 512)):
        for j in range(2):
            s = 2 if stage > 0 and j == 0 else 1
            out = size // s
            # SAME padding: total (out - 1) * s + k - size, split low = total // 2
            tot = max((out - 1) * s + 3 - size, 0)
            want.append(conv(f"BasicBlock_{b}/Conv_0", 3, cin, width, size, padding=((tot // 2, tot - tot // 2),) * 2, stride=s))
            want.append(conv(f"BasicBlock_{b}/Conv_1", 3, width, width, out, padding=1))
            if s != 1 or cin != width:
                want.append(conv(f"BasicBlock_{b}/Conv_2", 1, cin, width, size, stride=s))
            b, size, cin = b + 1, out, width
    want.append(fc("Dense_0", 512, 10))  # after global average pooling: 1x1x512
    assert net.layers == want
    assert len(want) == 21
    _check_against_params(create_model("resnet18"), (32, 32, 3), net.layers)


@pytest.mark.parametrize("name,shape", [("convnet", (32, 32, 3)), ("vgg11", (32, 32, 3)), ("lenet", (32, 32, 3))])
def test_other_project_models_match_their_params(name, shape):
    net = get_network(name, shape)
    _check_against_params(create_model(name), shape, net.layers)


def test_transposed_conv_is_a_conv_over_the_zero_inserted_input():
    class Up(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.ConvTranspose(5, (4, 4), strides=(2, 2), padding="SAME", name="up")(x)

    (l,) = layers_from_model(Up(), (7, 7, 3), apply_kwargs={})
    # 7 -> 13 after inserting zeros; output 14x14 (SAME, stride 2), as a stride-1 conv
    assert (l.kind, l.kernel, l.in_channels, l.out_channels, l.input_size, l.stride) == ("conv", (4, 4), 3, 5, (13, 13), (1, 1))
    assert l.output_size == (14, 14)

    class Atrous(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Conv(5, (3, 3), kernel_dilation=2)(x)

    with pytest.raises(JaxfaultError):
        layers_from_model(Atrous(), (9, 9, 3), apply_kwargs={})
