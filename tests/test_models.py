"""Model zoo: forward shapes on 28x28x1 and 32x32x3, QAT grid and straight-through gradient."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfault.errors import JaxfaultError
from jaxfault.models import MODEL_NAMES, create_model, init_variables
from jaxfault.pytree import kernel_names
from jaxfault.quant import fake_quant, quantize


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_forward_shape(name, shape):
    model = create_model(name, num_classes=7, quant_bits=8)
    x = jnp.zeros((2, *shape))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    assert out.shape == (2, 7)
    assert len(kernel_names(variables["params"])) >= 5


@pytest.mark.parametrize("name", ["lenet", "convnet"])
def test_small_models_run_and_quant_off_shares_params(name):
    model = create_model(name, 10, quant_bits=8)
    v = init_variables(model, jax.random.key(0), (28, 28, 1))
    x = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1), minval=-1, maxval=1)
    y_q = model.apply(v, x, train=False)
    y_f = model.clone(quant_bits=None).apply(v, x, train=False)
    assert y_q.shape == (3, 10) and np.all(np.isfinite(y_q))
    assert not np.allclose(y_q, y_f)  # quantization changes the weights a little
    np.testing.assert_allclose(y_q, y_f, atol=0.2 * float(jnp.abs(y_f).max()) + 1e-3)


def test_quantization_grid():
    w = jax.random.normal(jax.random.key(0), (300, 7)) * 0.2
    q, delta = quantize(w, 8)
    assert q.dtype == jnp.int32 and int(jnp.abs(q).max()) == 127
    np.testing.assert_allclose(delta, jnp.abs(w).max() / 127, rtol=1e-6)
    wq = fake_quant(w, 8)
    ratio = np.asarray(wq / delta)
    np.testing.assert_allclose(ratio, np.round(ratio), atol=1e-3)
    assert np.abs(np.round(ratio)).max() <= 127
    assert float(jnp.abs(wq - w).max()) <= float(delta) / 2 + 1e-7
    q4, _ = quantize(w, 4)
    assert int(jnp.abs(q4).max()) == 7


def test_straight_through_gradient():
    w = jax.random.normal(jax.random.key(0), (5, 5))
    g = jax.grad(lambda w: jnp.sum(fake_quant(w, 8) * jnp.arange(25.0).reshape(5, 5)))(w)
    np.testing.assert_allclose(g, jnp.arange(25.0).reshape(5, 5))


def test_bad_model_arguments():
    with pytest.raises(JaxfaultError, match="unknown model 'alexnet9'"):
        create_model("alexnet9")
    with pytest.raises(JaxfaultError, match="precision"):
        create_model("lenet", quant_bits=3)
    with pytest.raises(JaxfaultError, match="num_classes"):
        create_model("lenet", num_classes=1)
