"""NeuralFuse generators: the reference layers (parameter counts from a layer table written here,
transposed-conv geometry against a numpy transcription, UNet up-block sizes, 8-bit weights, output
clamp with/without tanh), shape preservation for any HxWxC, conv_impl."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfault.core.errors import JaxfaultError
from jaxfault.models.generators import (GENERATOR_NAMES, REFERENCE_GENERATORS, REFERENCE_PARAM_COUNTS,
                                        create_generator, init_generator)
from jaxfault.models.layers import ConvTranspose
from jaxfault.core.quant import fake_quant


# ---- parameter counts: the reference layers as a table (in, out, kernel, bias, batch norm after) ----

def _conv(cin, cout, k=3, bias=True, bn=True):
    return cin * cout * k * k + (cout if bias else 0) + (2 * cout if bn else 0)


def _table_count(name: str, c: int) -> int:
    if name == "ConvL":
        chans = [(c, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128),  # encoder
                 (128, 128), (128, 128), (128, 64), (64, 64), (64, 32), (32, 32), (32, c)]  # decoder + out
        return sum(_conv(a, b) for a, b in chans)
    if name == "ConvS":
        return sum(_conv(a, b) for a, b in [(c, 32), (32, 64), (64, 64), (64, 64), (64, 32), (32, c), (c, c)])
    if name == "DeConvL":
        enc = sum(_conv(a, b) for a, b in [(c, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128), (128, 128)])
        return enc + _conv(128, 64, 4) + _conv(64, 64) + _conv(64, 32, 4) + _conv(32, 32) + _conv(32, c, 4)
    if name == "DeConvS":
        enc = sum(_conv(a, b) for a, b in [(c, 32), (32, 64), (64, 64)])
        return enc + _conv(64, 64, 4) + _conv(64, 32, 4) + _conv(32, c, 4)
    b = 16 if name == "UNetL" else 8
    double = lambda i, o: _conv(i, o, bias=False) + _conv(o, o, bias=False)  # noqa: E731
    total = double(c, b) + double(b, 2 * b) + double(2 * b, 4 * b) + double(4 * b, 8 * b)
    for cin, cout in [(8 * b, 4 * b), (4 * b, 2 * b), (2 * b, b)]:
        total += _conv(cin, cin // 2, 2, bn=False) + double(cin, cout)
    return total + _conv(b, c, 1, bn=False)


def _abstract_count(gen, shape) -> int:
    v = jax.eval_shape(lambda k: gen.init(k, jnp.zeros((1, *shape)), train=False), jax.random.key(0))
    return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(v["params"]))


@pytest.mark.parametrize("name", REFERENCE_GENERATORS)
def test_reference_parameter_counts(name):
    """Exactly the reference's count on 32x32x3 (PyTorch's: weights, biases, BN scale/offset)."""
    assert _table_count(name, 3) == REFERENCE_PARAM_COUNTS[name]
    assert _abstract_count(create_generator(name), (32, 32, 3)) == REFERENCE_PARAM_COUNTS[name]
    assert _abstract_count(create_generator(name), (28, 28, 1)) == _table_count(name, 1)


# ---- the transposed convolution: PyTorch's ConvTranspose2d definition, transcribed in numpy ----

def _numpy_conv_transpose(x, kernel, bias, stride, padding):
    """out[n, a*s - p + i, b*s - p + j, o] += x[n, a, b, c] * kernel[i, j, c, o], cropped to
    (H - 1) * s - 2p + k."""
    n, h, w, _ = x.shape
    kh, kw, _, cout = kernel.shape
    full = np.zeros((n, (h - 1) * stride + kh, (w - 1) * stride + kw, cout))
    for a in range(h):
        for b in range(w):
            full[:, a * stride:a * stride + kh, b * stride:b * stride + kw, :] += np.einsum(
                "nc,ijco->nijo", x[:, a, b, :], kernel)
    oh, ow = (h - 1) * stride - 2 * padding + kh, (w - 1) * stride - 2 * padding + kw
    return full[:, padding:padding + oh, padding:padding + ow, :] + bias


@pytest.mark.parametrize("kernel,stride,padding", [(2, 2, 1), (4, 2, 1), (2, 2, 0), (3, 1, 1)])
def test_conv_transpose_matches_numpy_transcription(kernel, stride, padding):
    x = np.asarray(jax.random.normal(jax.random.key(0), (2, 5, 4, 3)), np.float64)
    layer = ConvTranspose(6, (kernel, kernel), (stride, stride), padding=padding,
                          bias_init=nn.initializers.normal(1.0))
    v = layer.init(jax.random.key(1), jnp.asarray(x, jnp.float32))
    got = np.asarray(layer.apply(v, jnp.asarray(x, jnp.float32)))
    want = _numpy_conv_transpose(x, np.asarray(v["params"]["kernel"], np.float64),
                                 np.asarray(v["params"]["bias"], np.float64), stride, padding)
    assert got.shape == want.shape == (2, (5 - 1) * stride - 2 * padding + kernel,
                                       (4 - 1) * stride - 2 * padding + kernel, 6)
    np.testing.assert_allclose(got, want, atol=1e-5)  # float32 sums of 3 * k * k products of N(0, 1)


def test_unet_up_block_shrinks_by_two_then_pads():
    """2x2 stride-2 transposed conv with padding 1: 4x4 -> 6x6, zero-padded to the 8x8 skip."""
    gen = create_generator("UNetS")
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    # shapes only: jax.eval_shape traces init and apply without compiling or running them
    v = jax.eval_shape(gen.init, jax.random.key(1), x)
    _, inter = jax.eval_shape(lambda v, x: gen.apply(v, x, capture_intermediates=lambda m, _: m.name and "deconv" in m.name), v, x)
    shapes = {k: inter["intermediates"][k]["__call__"][0].shape for k in ("up1_deconv", "up2_deconv", "up3_deconv")}
    assert shapes == {"up1_deconv": (1, 6, 6, 32), "up2_deconv": (1, 14, 14, 16), "up3_deconv": (1, 30, 30, 8)}


# ---- quantized weights, float biases; the output forms ----

@pytest.mark.parametrize("name", ["ConvS", pytest.param("UNetS", marks=pytest.mark.slow)])
def test_weights_are_8bit_fake_quantized_biases_float(name):
    x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3), minval=-1, maxval=1)
    q8, fp = create_generator(name), create_generator(name, quant_bits=None)
    v = jax.jit(q8.init)(jax.random.key(1), x)

    def quantize_kernels(tree):
        return {k: quantize_kernels(t) if isinstance(t, dict) else (fake_quant(t, 8) if k == "kernel" else t)
                for k, t in tree.items()}

    vq = {"params": quantize_kernels(v["params"]), "batch_stats": v["batch_stats"]}
    q8_apply, fp_apply = jax.jit(q8.apply), jax.jit(fp.apply)
    np.testing.assert_array_equal(np.asarray(q8_apply(v, x)), np.asarray(fp_apply(vq, x)))
    assert not np.array_equal(np.asarray(q8_apply(v, x)), np.asarray(fp_apply(v, x)))


def _random_variables(gen, x, key):
    """Variables of gen's shapes, without running its init (compiling init costs seconds): kernels
    and biases at random, batch norms as initialised (scale 1, running mean 0 and variance 1)."""
    shapes = jax.eval_shape(gen.init, key, x)
    leaves, tree = jax.tree_util.tree_flatten_with_path(shapes)
    keys = jax.random.split(key, len(leaves))
    fixed = {"['scale']": jnp.ones, "['var']": jnp.ones, "['mean']": jnp.zeros}

    def fill(k, path, s):
        name = str(path[-1])
        return fixed[name](s.shape, s.dtype) if name in fixed else 0.1 * jax.random.normal(k, s.shape, s.dtype)

    vals = [fill(k, path, s) for k, (path, s) in zip(keys, leaves)]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shapes), vals)


@pytest.mark.slow
def test_output_clamp_with_tanh_for_conv_and_without_for_unet():
    """Zero the last layer's weights and put 1.5 into its offset: ConvS gives clip(x + tanh(1.5)),
    UNetS clip(x + 1.5) (no tanh); a zero offset gives x' = x."""
    x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3), minval=-1, maxval=1)
    for name, last, offset_layer, out in (("ConvS", "convout", "bnout", np.tanh(1.5)), ("UNetS", "outc", "outc", 1.5)):
        gen = create_generator(name)
        v = _random_variables(gen, x, jax.random.key(1))
        apply = jax.jit(gen.apply)  # one compile for both offsets (eager op-by-op dispatch is far slower)
        for off, want in ((1.5, np.clip(np.asarray(x) + out, -1, 1)), (0.0, np.asarray(x))):
            p = dict(v["params"])
            p[last] = {**p[last], "kernel": jnp.zeros_like(p[last]["kernel"])}
            if "bias" in p[last]:
                p[last]["bias"] = jnp.zeros_like(p[last]["bias"])
            p[offset_layer] = {**p[offset_layer], "bias": jnp.full_like(p[offset_layer]["bias"], off)}
            got = np.asarray(apply({"params": p, "batch_stats": v["batch_stats"]}, x))
            np.testing.assert_allclose(got, want, atol=1e-6, err_msg=f"{name} offset {off}")


# ---- any input size; batch norm modes ----

# one generator of each family in the default suite (UNetS also runs on an odd size below); the
# other pairings compile for 10-30 s each on a 2-core CPU and run with -m slow
FAST_CASES = [("ConvL", (28, 28, 1)), ("ConvS", (32, 32, 3)), ("DeConvS", (28, 28, 1))]
ALL_CASES = [(n, s) for n in GENERATOR_NAMES for s in [(28, 28, 1), (32, 32, 3)]]
SLOW_CASES = [pytest.param(n, s, marks=pytest.mark.slow) for n, s in ALL_CASES if (n, s) not in FAST_CASES]


@pytest.mark.parametrize("name,shape", FAST_CASES + SLOW_CASES)
def test_shape_and_range_preserved(name, shape):
    """Every generator on 28x28x1 and 32x32x3 (most pairings run with -m slow: one compile each)."""
    gen = create_generator(name)
    x = jax.random.uniform(jax.random.key(1), (2, *shape), minval=-1.0, maxval=1.0)
    x = x.at[0, 0, 0, 0].set(1.0).at[1, 0, 0, 0].set(-1.0)

    @jax.jit
    def init_and_apply(key, x):  # one compilation for init + train-mode apply
        v = gen.init(key, x, train=False)
        y, upd = gen.apply(v, x, train=True, mutable=["batch_stats"])
        return v, y, upd

    v, y, upd = init_and_apply(jax.random.key(0), x)
    assert y.shape == x.shape and y.dtype == x.dtype
    y = np.asarray(y)
    assert np.all(y >= -1.0) and np.all(y <= 1.0)
    assert not np.allclose(y, np.asarray(x))  # a fresh generator does change the image
    assert jax.tree_util.tree_structure(upd["batch_stats"]) == jax.tree_util.tree_structure(v["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree_util.tree_leaves(upd["batch_stats"]),
                                                      jax.tree_util.tree_leaves(v["batch_stats"])))


@pytest.mark.slow  # one UNetS compile (~25 s here); padding to a multiple of 8 is also run by the DeConvS/ConvL shape cases
def test_odd_size_batch_independence_and_zero_output_identity():
    """13x17x2 is padded and cropped; eval mode is per image; a zero output conv gives x' = x."""
    gen = create_generator("UNetS")
    x = jax.random.uniform(jax.random.key(1), (3, 13, 17, 2), minval=-1.0, maxval=1.0)
    x2 = x.at[1:].set(jax.random.uniform(jax.random.key(2), (2, 13, 17, 2), minval=-1.0, maxval=1.0))

    @jax.jit
    def run(key, x, x2):
        v = gen.init(key, x, train=False)
        params = dict(v["params"])
        params["outc"] = jax.tree_util.tree_map(jnp.zeros_like, params["outc"])
        zero = {"params": params, "batch_stats": v["batch_stats"]}
        return gen.apply(v, x, train=False), gen.apply(v, x2, train=False), gen.apply(zero, x, train=False)

    y, y2, yz = run(jax.random.key(0), x, x2)
    assert y.shape == (3, 13, 17, 2)
    np.testing.assert_allclose(np.asarray(y2[0]), np.asarray(y[0]), atol=1e-5)
    assert not np.allclose(np.asarray(y[0]), np.asarray(x[0]))
    np.testing.assert_array_equal(np.asarray(yz), np.asarray(x))


def test_conv_impls_agree_and_are_compiled_separately():
    """conv_impl is a module field: xla and shift_add give the same images (float32 rounding of
    27-term sums), and one jitted function taking the module as a static argument compiles one
    program per implementation (the jit cache keys on the module value)."""
    x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 1), minval=-1, maxval=1)
    xla, shift = create_generator("ConvS", conv_impl="xla"), create_generator("ConvS", conv_impl="shift_add")
    v = jax.eval_shape(xla.init, jax.random.key(1), x)   # random weights of init's shapes (no init compile)
    leaves, tree = jax.tree_util.tree_flatten(v)
    v = jax.tree_util.tree_unflatten(tree, [jnp.abs(jax.random.normal(jax.random.key(i), s.shape)) * 0.3 + 0.5
                                            for i, s in enumerate(leaves)])
    apply = jax.jit(lambda g, v, x: g.apply(v, x), static_argnums=0)
    a, b = apply(xla, v, x), apply(shift, v, x)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    assert apply._cache_size() == 2
    hlo = {impl: apply.lower(g, v, x).as_text().count("convolution")
           for impl, g in (("xla", xla), ("shift_add", shift))}
    assert hlo["shift_add"] < hlo["xla"]  # the one-input-channel conv is not an XLA convolution there
    with pytest.raises(JaxfaultError, match="unknown convolution implementation 'fft'"):
        create_generator("ConvS", conv_impl="fft")


def test_unknown_generator_bad_bits_and_bad_rank():
    with pytest.raises(JaxfaultError, match="unknown generator 'ConvXL'"):
        create_generator("ConvXL")
    with pytest.raises(JaxfaultError, match="precision"):
        create_generator("UNetS", quant_bits=5)
    gen = create_generator("ConvS")
    with pytest.raises(JaxfaultError, match="NHWC"):
        init_generator(gen, jax.random.key(0), (28, 28))
