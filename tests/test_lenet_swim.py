"""The SWIM code's LeNet as create_model("lenet-swim"): layer shapes, parameter names, kernel count."""
import jax
import jax.numpy as jnp
import numpy as np

from jaxfault.models import MODEL_NAMES, create_model, init_variables
from jaxfault.core.pytree import count_kernel_weights


def test_lenet_swim_shapes_and_kernel_count():
    assert "lenet-swim" in MODEL_NAMES
    model = create_model("lenet-swim", num_classes=10)
    variables = init_variables(model, jax.random.key(0), (28, 28, 1))
    shapes = jax.tree_util.tree_map(lambda x: tuple(x.shape), variables["params"])
    assert shapes == {
        "Conv_0": {"kernel": (3, 3, 1, 6), "bias": (6,)},     # 3x3, 1 -> 6, padding 1
        "Conv_1": {"kernel": (3, 3, 6, 16), "bias": (16,)},   # 3x3, 6 -> 16, padding 1
        "Dense_0": {"kernel": (784, 120), "bias": (120,)},    # 16 * 7 * 7 = 784 after two 2x2 pools
        "Dense_1": {"kernel": (120, 84), "bias": (84,)},
        "Dense_2": {"kernel": (84, 10), "bias": (10,)},
    }
    assert set(variables) == {"params"}  # no batch norm
    # 54 + 864 + 94080 + 10080 + 840 kernel weights, as in the reference LeNet
    assert count_kernel_weights(variables["params"]) == 105_918
    logits = model.apply(variables, jnp.zeros((3, 28, 28, 1)), train=False)
    assert logits.shape == (3, 10)


def test_lenet_swim_forward_equals_numpy_transcription():
    """conv3x3(pad 1)-ReLU-maxpool2 twice, flatten (H, W, C), then three dense layers with ReLU."""
    model = create_model("lenet-swim", num_classes=10)
    variables = init_variables(model, jax.random.key(1), (28, 28, 1))
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables["params"])
    x = np.asarray(jax.random.normal(jax.random.key(2), (2, 28, 28, 1)), np.float64)

    def conv_pad1(x, k, b):
        n, h, w, _ = x.shape
        xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        out = np.zeros((n, h, w, k.shape[3]))
        for dy in range(3):
            for dx in range(3):
                out += np.einsum("nhwc,co->nhwo", xp[:, dy:dy + h, dx:dx + w], k[dy, dx])
        return out + b

    def pool(x):
        n, h, w, c = x.shape
        return x[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))

    relu = lambda v: np.maximum(v, 0.0)
    y = pool(relu(conv_pad1(x, p["Conv_0"]["kernel"], p["Conv_0"]["bias"])))
    y = pool(relu(conv_pad1(y, p["Conv_1"]["kernel"], p["Conv_1"]["bias"])))
    y = y.reshape(2, -1)
    y = relu(y @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
    y = relu(y @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"])
    y = y @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"]
    got = np.asarray(model.apply(variables, jnp.asarray(x, jnp.float32), train=False), np.float64)
    np.testing.assert_allclose(got, y, rtol=1e-4, atol=1e-4)  # float32 sums of <= 784 terms
