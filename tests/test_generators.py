"""NeuralFuse generators (SPEC 3.2): shape preservation for any HxWxC, output range, residual form."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfault.errors import JaxfaultError
from jaxfault.models.generators import GENERATOR_NAMES, create_generator, init_generator


@pytest.mark.parametrize("name", GENERATOR_NAMES)
def test_shape_and_range_preserved(name):
    gen = create_generator(name)
    for shape in [(28, 28, 1), (32, 32, 3)]:
        v = init_generator(gen, jax.random.PRNGKey(0), shape)
        x = jax.random.uniform(jax.random.PRNGKey(1), (2, *shape), minval=-1.0, maxval=1.0)
        x = x.at[0, 0, 0, 0].set(1.0).at[1, 0, 0, 0].set(-1.0)
        y, upd = jax.jit(lambda v, x: gen.apply(v, x, train=True, mutable=["batch_stats"]))(v, x)
        assert y.shape == x.shape and y.dtype == x.dtype
        y = np.asarray(y)
        assert np.all(y >= -1.0) and np.all(y <= 1.0)
        assert np.all(np.abs(y - np.asarray(x)) <= 1.0 + 1e-6)  # |tanh| <= 1 before the clip
        assert not np.allclose(y, np.asarray(x))  # a fresh generator does change the image
        assert jax.tree_util.tree_structure(upd["batch_stats"]) == jax.tree_util.tree_structure(v["batch_stats"])


def test_odd_size_is_padded_and_cropped_and_eval_mode_runs():
    gen = create_generator("UNetS")
    v = init_generator(gen, jax.random.PRNGKey(0), (13, 17, 2))
    x = jax.random.uniform(jax.random.PRNGKey(1), (3, 13, 17, 2), minval=-1.0, maxval=1.0)
    apply = jax.jit(lambda v, x: gen.apply(v, x, train=False))
    y = apply(v, x)
    assert y.shape == (3, 13, 17, 2)
    # eval mode is per-image: the output of one image does not depend on the rest of the batch
    np.testing.assert_allclose(np.asarray(apply(v, x[:1])), np.asarray(y[:1]), atol=1e-5)


def test_zero_residual_gives_identity():
    gen = create_generator("UNetS")
    v = init_generator(gen, jax.random.PRNGKey(0), (8, 8, 1))
    params = jax.tree_util.tree_map(lambda a: a, v["params"])
    last = sorted(k for k in params if k.startswith("Conv_"))[-1]  # the 1x1 output conv
    params[last] = jax.tree_util.tree_map(jnp.zeros_like, params[last])
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 8, 8, 1), minval=-1.0, maxval=1.0)
    y = jax.jit(lambda v, x: gen.apply(v, x, train=False))({"params": params, "batch_stats": v["batch_stats"]}, x)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))


def test_unknown_generator_and_bad_rank():
    with pytest.raises(JaxfaultError, match="unknown generator 'ConvXL'"):
        create_generator("ConvXL")
    gen = create_generator("ConvS")
    with pytest.raises(JaxfaultError, match="NHWC"):
        init_generator(gen, jax.random.PRNGKey(0), (28, 28))
