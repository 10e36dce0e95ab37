"""NeuralFuse generators (SPEC 3.2): shape preservation for any HxWxC, output range, residual form."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfault.errors import JaxfaultError
from jaxfault.models.generators import GENERATOR_NAMES, create_generator, init_generator


FAST_CASES = [("ConvL", (28, 28, 1)), ("ConvS", (32, 32, 3)), ("DeConvL", (32, 32, 3)), ("DeConvS", (28, 28, 1)),
              ("UNetL", (28, 28, 1)), ("UNetS", (32, 32, 3))]
ALL_CASES = [(n, s) for n in GENERATOR_NAMES for s in [(28, 28, 1), (32, 32, 3)]]
SLOW_CASES = [pytest.param(n, s, marks=pytest.mark.slow) for n, s in ALL_CASES if (n, s) not in FAST_CASES]


@pytest.mark.parametrize("name,shape", FAST_CASES + SLOW_CASES)
def test_shape_and_range_preserved(name, shape):
    """Every generator on 28x28x1 or 32x32x3 (the other pairings run with -m slow: one compile each)."""
    gen = create_generator(name)
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, *shape), minval=-1.0, maxval=1.0)
    x = x.at[0, 0, 0, 0].set(1.0).at[1, 0, 0, 0].set(-1.0)

    @jax.jit
    def init_and_apply(key, x):  # one compilation for init + train-mode apply
        v = gen.init(key, x, train=False)
        y, upd = gen.apply(v, x, train=True, mutable=["batch_stats"])
        return v, y, upd

    v, y, upd = init_and_apply(jax.random.PRNGKey(0), x)
    assert y.shape == x.shape and y.dtype == x.dtype
    y = np.asarray(y)
    assert np.all(y >= -1.0) and np.all(y <= 1.0)
    assert np.all(np.abs(y - np.asarray(x)) <= 1.0 + 1e-6)  # |tanh| <= 1 before the clip
    assert not np.allclose(y, np.asarray(x))  # a fresh generator does change the image
    assert jax.tree_util.tree_structure(upd["batch_stats"]) == jax.tree_util.tree_structure(v["batch_stats"])


def test_odd_size_batch_independence_and_zero_residual_identity():
    """13x17x2 is padded and cropped; eval mode is per image; a zero output conv gives x' = x."""
    gen = create_generator("UNetS")
    x = jax.random.uniform(jax.random.PRNGKey(1), (3, 13, 17, 2), minval=-1.0, maxval=1.0)
    x2 = x.at[1:].set(jax.random.uniform(jax.random.PRNGKey(2), (2, 13, 17, 2), minval=-1.0, maxval=1.0))

    @jax.jit
    def run(key, x, x2):
        v = gen.init(key, x, train=False)
        params = dict(v["params"])
        last = sorted(k for k in params if k.startswith("Conv_"))[-1]  # the 1x1 output conv
        params[last] = jax.tree_util.tree_map(jnp.zeros_like, params[last])
        zero = {"params": params, "batch_stats": v["batch_stats"]}
        return gen.apply(v, x, train=False), gen.apply(v, x2, train=False), gen.apply(zero, x, train=False)

    y, y2, yz = run(jax.random.PRNGKey(0), x, x2)
    assert y.shape == (3, 13, 17, 2)
    np.testing.assert_allclose(np.asarray(y2[0]), np.asarray(y[0]), atol=1e-5)
    assert not np.allclose(np.asarray(y[0]), np.asarray(x[0]))
    np.testing.assert_array_equal(np.asarray(yz), np.asarray(x))


def test_unknown_generator_and_bad_rank():
    with pytest.raises(JaxfaultError, match="unknown generator 'ConvXL'"):
        create_generator("ConvXL")
    gen = create_generator("ConvS")
    with pytest.raises(JaxfaultError, match="NHWC"):
        init_generator(gen, jax.random.PRNGKey(0), (28, 28))
