"""Model zoo: forward shapes on 28x28x1 and 32x32x3, QAT grid and straight-through gradient."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfault.core.errors import JaxfaultError
from jaxfault.models import MODEL_NAMES, create_model, init_variables
from jaxfault.core.pytree import kernel_names
from jaxfault.core.quant import fake_quant, quantize


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_forward_shape(name, shape):
    model = create_model(name, num_classes=7, quant_bits=8)
    x = jnp.zeros((2, *shape))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    assert out.shape == (2, 7)
    assert len(kernel_names(variables["params"])) >= 5


@pytest.mark.parametrize("name", ["lenet", pytest.param("convnet", marks=pytest.mark.slow)])
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


@pytest.mark.parametrize("shape,kernel,strides,padding", [
    ((1, 12, 12, 1), (5, 5, 1, 6), (1, 1), ((2, 2), (2, 2))),  # LeNet's first layer (smaller image)
    ((2, 9, 9, 1), (3, 3, 1, 4), (2, 2), "SAME"),
    ((2, 10, 10, 3), (3, 3, 3, 5), (1, 2), "VALID"),
])
def test_shift_add_conv_equals_xla_conv_values_gradients_hessian_vmap(shape, kernel, strides, padding):
    from jaxfault.models.layers import conv2d

    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), kernel)
    impls = ("xla", "shift_add")
    fwd = {m: jax.jit(lambda x, w, m=m: conv2d(x, w, strides, padding, m))(x, w) for m in impls}
    np.testing.assert_allclose(fwd["shift_add"], fwd["xla"], atol=1e-4)
    loss = lambda m: (lambda x, w: jnp.sum(jnp.sin(conv2d(x, w, strides, padding, m))))  # noqa: E731
    grads = {m: jax.jit(jax.grad(loss(m), (0, 1)))(x, w) for m in impls}
    for a, b in zip(grads["shift_add"], grads["xla"]):
        np.testing.assert_allclose(a, b, atol=1e-3)
    if kernel[2] == 1:  # the case 'auto' uses
        hess = {m: jax.jit(jax.hessian(loss(m), 1))(x, w) for m in impls}
        np.testing.assert_allclose(hess["shift_add"], hess["xla"], atol=1e-3)
    ws = jax.random.normal(jax.random.key(2), (3, *kernel))
    vm = {m: jax.jit(jax.vmap(lambda w, m=m: conv2d(x, w, strides, padding, m)))(ws) for m in impls}
    np.testing.assert_allclose(vm["shift_add"], vm["xla"], atol=1e-4)
    with pytest.raises(JaxfaultError, match="unknown convolution implementation"):
        conv2d(x, w, strides, padding, "fft")


def test_conv_impl_is_a_model_field_and_jit_keeps_implementations_apart():
    """No ambient state: the implementation is the model's conv_impl field (every zoo model has
    it); xla and shift_add agree within float32 rounding and compile to different programs."""
    from jaxfault.models import MODEL_NAMES
    from jaxfault.models.layers import with_conv_impl

    for name in MODEL_NAMES:
        assert create_model(name).conv_impl == "auto"
    model = create_model("lenet")
    v = init_variables(model, jax.random.key(0), (28, 28, 1))
    x = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
    apply = jax.jit(lambda m, v, x: m.apply(v, x), static_argnums=0)
    count = lambda m: str(jax.make_jaxpr(lambda x: m.apply(v, x))(x)).count("conv_general_dilated")
    xla, shift = with_conv_impl(model, "xla"), with_conv_impl(model, "shift_add")
    assert (count(xla), count(shift)) == (2, 0)
    assert count(model) == (1 if jax.default_backend() == "cpu" else 2)  # auto: one-input-channel layer on CPU
    np.testing.assert_allclose(apply(xla, v, x), apply(shift, v, x), atol=1e-5, rtol=1e-5)
    assert apply._cache_size() == 2
    with pytest.raises(JaxfaultError, match="unknown convolution implementation 'fft'"):
        with_conv_impl(model, "fft")


def test_shift_add_conv_accumulates_low_precision_inputs_in_fp32():
    from jaxfault.models.layers import conv2d

    x = jax.random.normal(jax.random.key(0), (4, 12, 12, 1)).astype(jnp.bfloat16)
    w = jax.random.normal(jax.random.key(1), (5, 5, 1, 6)).astype(jnp.bfloat16)
    got = conv2d(x, w, (1, 1), ((2, 2), (2, 2)), "shift_add")
    want = conv2d(x.astype(jnp.float32), w.astype(jnp.float32), (1, 1), ((2, 2), (2, 2)), "xla")
    assert got.dtype == jnp.bfloat16
    # within one bf16 rounding of the fp32 result (a bf16 running sum of 25 taps drifts by several)
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want), rtol=2 ** -8, atol=1e-6)


def test_shift_add_conv_with_bias_in_bf16_equals_cast_then_bf16_add_bit_for_bit():
    """The bf16 shift-add path rounds with integer arithmetic and adds the bias inside its loop:
    the same bits as the float32 sum cast to bf16 plus the bias in bf16, alone and under vmap;
    gradients are XLA's convolution's plus the bias's."""
    from jaxfault.models.layers import conv2d

    pads = ((2, 2), (2, 2))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 12, 12, 1), np.float32)
    x[0, 3, 3, 0], x[1, 4, 4, 0] = np.inf, np.nan
    x = jnp.asarray(x, jnp.bfloat16)
    ws = jnp.asarray(0.5 * rng.standard_normal((3, 5, 5, 1, 6)), jnp.bfloat16)
    b = jnp.asarray(0.1 * rng.standard_normal(6), jnp.bfloat16)
    f32 = lambda a: a.astype(jnp.float32)  # noqa: E731
    got = jax.jit(lambda x, w, b: conv2d(x, w, (1, 1), pads, "shift_add", bias=b))
    want = jax.jit(lambda x, w, b: conv2d(f32(x), f32(w), (1, 1), pads, "shift_add").astype(jnp.bfloat16) + b)
    bits = lambda a: np.asarray(a).view(np.uint16)  # noqa: E731
    g = got(x, ws[0], b)
    assert g.dtype == jnp.bfloat16
    np.testing.assert_array_equal(bits(g), bits(want(x, ws[0], b)))
    np.testing.assert_array_equal(bits(jax.vmap(got, (None, 0, None))(x, ws, b)),
                                  bits(jax.vmap(want, (None, 0, None))(x, ws, b)))
    xs, w32, b32 = jnp.asarray(rng.standard_normal((2, 9, 9, 1)), jnp.float32), f32(ws[0]), f32(b)
    loss = lambda m: (lambda x, w, b: jnp.sum(jnp.sin(conv2d(x, w, (1, 1), pads, m, bias=b))))  # noqa: E731
    grads = {m: jax.jit(jax.grad(loss(m), (0, 1, 2)))(xs, w32, b32) for m in ("shift_add", "xla")}
    for a, c in zip(grads["shift_add"], grads["xla"]):
        np.testing.assert_allclose(a, c, atol=1e-3)
