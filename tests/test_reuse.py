"""The engine's work-saving path (jaxfault.engine.reuse, jaxfault.engine.stages): the same numbers as a full
evaluation, per trial, bit for bit; compiled programs reused across calls."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxfault
from jaxfault import engine
from jaxfault.engine import reuse
from jaxfault.ecc.hbm import HBMFaults
from jaxfault.models.classifiers import ConvNet, LeNet5, LeNetSWIM
from jaxfault.engine.stages import model_stages, staged_apply


def _bits(x):
    return np.asarray(jax.lax.bitcast_convert_type(jnp.asarray(x, jnp.float32), jnp.uint32))


@pytest.fixture(scope="module")
def lenet():
    """A randomly initialised LeNet5 on 24 16x16 images whose labels are its own predictions
    (so faults visibly lower the accuracy), batch size 16: the last batch is padded."""
    model = LeNet5()
    x = jax.random.normal(jax.random.key(0), (24, 16, 16, 1))
    variables = jax.jit(model.init)(jax.random.key(1), x)
    labels = jnp.argmax(jax.jit(model.apply)(variables, x), -1)
    return model, variables, x, labels


@pytest.mark.parametrize("cls", [LeNet5, pytest.param(LeNetSWIM, marks=pytest.mark.slow)])
def test_stages_compute_what_the_model_computes(cls, lenet):
    """Compiled, the stages from any cut give the model's logits bit for bit."""
    if cls is LeNet5:
        model, variables, x, _ = lenet
    else:
        model = cls()
        x = jax.random.normal(jax.random.key(2), (5, 16, 16, 1))
        variables = jax.jit(model.init)(jax.random.key(3), x)
    stages = model_stages(model, variables)
    assert stages is not None and len(stages) == 3

    def every_cut(v, x):
        outs, h = [], x
        for k in range(3):
            outs.append(staged_apply(stages, v["params"], h, k))
            h = stages[k].fn(v["params"], h)
        return outs

    full = jax.jit(lambda v, x: model.apply(v, x))(variables, x)
    for got in jax.jit(every_cut)(variables, x):
        np.testing.assert_array_equal(_bits(got), _bits(full))
    assert model_stages(ConvNet()) is None and model_stages(LeNet5(quant_bits=8)) is None


def test_reuse_equals_full_evaluation_per_trial(lenet):
    model, variables, x, labels = lenet
    keys = jax.random.split(jax.random.key(4), 5)
    keys = jnp.concatenate([keys, keys[1:2]])       # the last trial repeats trial 1
    rates = [0.0, 2e-6, 3e-3]
    kw = dict(batch_size=16, topk=(1, 2))
    fast = engine.evaluate(model, variables, x, labels, jaxfault.bit_flips(), rates, keys, reuse=True, **kw)
    full = engine.evaluate(model, variables, x, labels, jaxfault.bit_flips(), rates, keys, reuse=False, **kw)
    assert fast.work is not None and full.work is None
    for k in full.metrics:
        np.testing.assert_array_equal(_bits(fast.metrics[k]), _bits(full.metrics[k]), err_msg=k)
    for k in full.stats:
        np.testing.assert_array_equal(np.asarray(fast.stats[k]), np.asarray(full.stats[k]), err_msg=k)
    assert fast.clean == full.clean
    # every route was taken: rate 0 copies the clean row, 2e-6 mostly starts from a cut,
    # 3e-3 runs whole, the repeated key is a duplicate
    routes = fast.work
    assert routes["clean"] >= 6 and routes["duplicate"] >= 1 and routes.get("full", 0) >= 1
    assert routes.get("cut1", 0) + routes.get("cut2", 0) >= 1
    assert sum(routes.values()) == 18
    assert full.accuracy[2].mean() < full.accuracy[0].mean() == 1.0


def test_reuse_without_the_clean_row_starts_no_trial_from_a_cut(lenet):
    """clean=False leaves no clean activations to start from: every trial runs whole, with the
    numbers of the full evaluation (a staged trial would have started from an empty cache)."""
    model, variables, x, labels = lenet
    keys = jax.random.split(jax.random.key(4), 4)
    kw = dict(batch_size=16, topk=(1, 2))
    quiet = engine.evaluate(model, variables, x, labels, jaxfault.bit_flips(), [2e-6, 3e-3], keys, reuse=True,
                            clean=False, **kw)
    full = engine.evaluate(model, variables, x, labels, jaxfault.bit_flips(), [2e-6, 3e-3], keys, reuse=False, **kw)
    assert quiet.clean == {} and not any(k.startswith("cut") for k in quiet.work)
    for k in full.metrics:
        np.testing.assert_array_equal(_bits(quiet.metrics[k]), _bits(full.metrics[k]), err_msg=k)


class _AddsALeaf(jaxfault.faults.fault_models.BitFlips):
    """Bit flips whose perturbed variables carry one more collection than the prepared ones."""

    def perturb(self, key, variables, rate):
        faulty, stats = super().perturb(key, variables, rate)
        return {**faulty, "extra": {"seen": jnp.float32(rate)}}, stats


def test_reuse_falls_back_to_the_grid_when_the_layout_changes(lenet):
    """A fault model whose perturbed variables differ in layout from the prepared ones cannot run
    its clean row through the trial code: reuse=True then evaluates the plain grid (found while
    tracing, before anything runs), with the numbers of reuse=False."""
    model, variables, x, labels = lenet
    keys = jax.random.split(jax.random.key(4), 3)
    kw = dict(batch_size=16, topk=(1, 2))
    fm = _AddsALeaf()
    with pytest.raises(reuse.LayoutDiffers):
        reuse._check_same_layout(variables, fm.perturb(keys[0], variables, 1e-3)[0])
    asked = engine.evaluate(model, variables, x, labels, fm, [2e-6, 3e-3], keys, reuse=True, **kw)
    plain = engine.evaluate(model, variables, x, labels, fm, [2e-6, 3e-3], keys, reuse=False, **kw)
    assert asked.work is None and asked.clean == plain.clean
    for k in plain.metrics:
        np.testing.assert_array_equal(_bits(asked.metrics[k]), _bits(plain.metrics[k]), err_msg=k)


def test_programs_are_reused_across_calls(lenet):
    """A second call with the same shapes and fault-model structure compiles nothing."""
    model, variables, x, labels = lenet
    kw = dict(batch_size=16, topk=(1, 2))
    first = engine.evaluate(model, variables, x, labels, jaxfault.bit_flips(), [0.0, 2e-6, 3e-3],
                            jax.random.split(jax.random.key(4), 6), reuse=True, **kw)
    before = reuse._program_jit._cache_size()
    again = engine.evaluate(model, variables, x, labels, jaxfault.bit_flips(), [0.0, 1e-6, 3e-3],
                            jax.random.split(jax.random.key(7), 6), reuse=True, **kw)
    assert reuse._program_jit._cache_size() == before
    assert first.seconds > 0 and again.seconds > 0 and again.work is not None


def test_bf16_stages_cut_only_where_the_stage_rounds(lenet):
    """In bf16 a LeNet is cut once, after its first stage, whose shift-add convolution rounds its
    own output; the whole model and the stages from that cut agree bit for bit, compiled. With
    XLA's convolution there (conv_impl="xla") nothing rounds inside a stage: no cut."""
    model, variables, x, _ = lenet
    v16 = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), variables)
    x16 = x.astype(jnp.bfloat16)
    stages = model_stages(model, v16, jnp.bfloat16)
    assert [s.leaves for s in stages] == [("Conv_0",), ("Conv_1", "Dense_0", "Dense_1", "Dense_2")]
    assert len(model_stages(model, variables, jnp.float32)) == 3
    assert model_stages(model.clone(conv_impl="xla"), v16, jnp.bfloat16) is None

    def from_cut(v, x):
        return staged_apply(stages, v["params"], stages[0].fn(v["params"], x), 1)

    full = jax.jit(lambda v, x: model.apply(v, x))(v16, x16)
    np.testing.assert_array_equal(np.asarray(jax.jit(from_cut)(v16, x16)).view(np.uint16),
                                  np.asarray(full).view(np.uint16))


@pytest.mark.slow
def test_reuse_bf16_sparrow_equals_full(lenet):
    """bf16 evaluation under Sparrow: known answers skipped, trials whose first convolution is
    clean start after it; the same numbers as the whole evaluation, never a cut before the head."""
    model, variables, x, labels = lenet
    keys = jax.random.split(jax.random.key(5), 4)
    fm = HBMFaults(scheme="sparrow")
    fast = engine.evaluate(model, variables, x, labels, fm, [1e-4, 2e-2], keys, batch_size=16, reuse=True)
    full = engine.evaluate(model, variables, x, labels, fm, [1e-4, 2e-2], keys, batch_size=16, reuse=False)
    np.testing.assert_array_equal(_bits(fast.accuracy), _bits(full.accuracy))
    np.testing.assert_array_equal(fast.stats["changed_fraction"], full.stats["changed_fraction"])
    assert fast.clean == full.clean and set(fast.work) <= {"clean", "duplicate", "full", "cut1"}


@pytest.mark.slow
def test_reuse_bf16_unprotected_and_clean_optional(lenet):
    model, variables, x, labels = lenet
    keys = jax.random.split(jax.random.key(5), 4)
    fm = HBMFaults(scheme="none")
    fast = engine.evaluate(model, variables, x, labels, fm, [1e-4, 2e-2], keys, batch_size=16, reuse=True)
    full = engine.evaluate(model, variables, x, labels, fm, [1e-4, 2e-2], keys, batch_size=16, reuse=False)
    np.testing.assert_array_equal(_bits(fast.accuracy), _bits(full.accuracy))
    quiet = engine.evaluate(model, variables, x, labels, fm, [1e-4, 2e-2], keys, batch_size=16, clean=False,
                            reuse=True)
    assert quiet.clean == {}
    np.testing.assert_array_equal(_bits(quiet.accuracy), _bits(full.accuracy))


@pytest.mark.slow
def test_compute_dtype_float32_of_bf16_weights(lenet):
    """compute_dtype='float32' evaluates the same bf16-stored weights in float32: it may start
    from cuts, and agrees with the full float32 evaluation bit for bit."""
    model, variables, x, labels = lenet
    keys = jax.random.split(jax.random.key(8), 3)
    fm = HBMFaults(scheme="none")
    fast = engine.evaluate(model, variables, x, labels, fm, [1e-5], keys, batch_size=16, compute_dtype="float32",
                           reuse=True)
    full = engine.evaluate(model, variables, x, labels, fm, [1e-5], keys, batch_size=16, compute_dtype="float32",
                           reuse=False)
    np.testing.assert_array_equal(_bits(fast.accuracy), _bits(full.accuracy))


def test_compute_dtype_checked(lenet):
    model, variables, x, labels = lenet
    with pytest.raises(jaxfault.JaxfaultError, match="compute_dtype"):
        engine.evaluate(model, variables, x, labels, jaxfault.bit_flips(), [1e-5], jax.random.split(jax.random.key(8), 3),
                        compute_dtype="float16")
