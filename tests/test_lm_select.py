"""Tensor-group selection: the groups of GPT-2 and Llama parameters, and every weight fault model
restricted to the chosen groups (only those leaves change; the cells counted are theirs)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxfault
from jaxfault.core.errors import JaxfaultError
from jaxfault.models import GPT2, Llama
from jaxfault.core.pytree import path_to_str
from jaxfault.faults.select import TENSOR_GROUPS, group_sizes, model_patterns, parse_tensors, select_tensors, tensor_group

GPT = GPT2(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2, tie_word_embeddings=False)
LLAMA = Llama(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=16, tie_word_embeddings=False)


def shapes(model):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32)))["params"]


def random_params(model, key=0):
    s = shapes(model)
    leaves, tree = jax.tree_util.tree_flatten(s)
    ks = jax.random.split(jax.random.key(key), len(leaves))
    return jax.tree_util.tree_unflatten(tree, [0.1 * jax.random.normal(k, x.shape) for k, x in zip(ks, leaves)])


@pytest.mark.parametrize("model", [GPT, LLAMA], ids=["gpt2", "llama"])
def test_name_rules_agree_with_the_family_patterns(model):
    pats = model_patterns(model)
    flat = jax.tree_util.tree_flatten_with_path(shapes(model))[0]
    groups = {path_to_str(p): tensor_group(p, pats) for p, _ in flat}
    assert all(g in TENSOR_GROUPS and g != "other" for g in groups.values()), groups
    assert {path_to_str(p): tensor_group(p) for p, _ in flat} == groups
    assert set(groups.values()) == {"embeddings", "attention", "mlp", "norms", "lm_head"}


def test_parse_tensors():
    assert parse_tensors("mlp,attention") == ("attention", "mlp")
    assert parse_tensors(["all"]) is None and parse_tensors(None) is None
    with pytest.raises(JaxfaultError, match="unknown tensor group 'attn'"):
        parse_tensors("attn")
    with pytest.raises(JaxfaultError, match="empty"):
        parse_tensors("")


# rates exactly representable in float32, so that the traced rate equals the bound
FAULT_MODELS = {
    "hbm-none": (lambda: jaxfault.hbm_faults(scheme="none", zero_to_one=0.5, mode="flip"), 1 / 16),
    "hbm-secded": (lambda: jaxfault.hbm_faults(scheme="secded", zero_to_one=0.5), 1 / 16),
    "hbm-sparrow": (lambda: jaxfault.hbm_faults(scheme="sparrow", zero_to_one=0.5), 1 / 16),
    "sram-int8": (lambda: jaxfault.sram_bit_errors(bits=8), 1 / 16),
    "sram-int4": (lambda: jaxfault.sram_bit_errors(bits=4), 1 / 16),
    "cim": (lambda: jaxfault.cim_variation(), 0.5),
    "bitflip": (lambda: jaxfault.BitFlips(), 1 / 64),
}
SMALL = GPT2(vocab_size=32, n_positions=16, n_embd=16, n_layer=1, n_head=2, tie_word_embeddings=False)


@pytest.mark.slow
def test_only_the_chosen_groups_change():
    params = random_params(SMALL)
    pats = model_patterns(SMALL)
    for name, (make, rate) in FAULT_MODELS.items():
        fm = select_tensors(make(), "attention,norms", model=SMALL).with_rate_bound(rate)
        variables = fm.prepare({"params": params})
        perturb = jax.jit(lambda k, v: fm.perturb(k, v, jnp.float32(rate)))
        out, _ = perturb(jax.random.key(3), variables)
        changed = set()
        for (p, a), b in zip(jax.tree_util.tree_flatten_with_path(variables["params"])[0],
                             jax.tree_util.tree_leaves(out["params"])):
            assert a.shape == b.shape and a.dtype == b.dtype
            if not np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True):
                changed.add(tensor_group(p, pats))
        assert changed == {"attention", "norms"}, name
        again, _ = perturb(jax.random.key(3), variables)
        assert all(np.array_equal(x, y, equal_nan=True) for x, y in
                   zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(again))), name


@pytest.mark.slow
def test_cells_are_those_of_the_chosen_tensors():
    params = random_params(LLAMA)
    sizes = group_sizes(params, model_patterns(LLAMA))
    fm = select_tensors(jaxfault.sram_bit_errors(bits=8), ["mlp", "lm_head"], model=LLAMA).with_rate_bound(1 / 128)
    _, st = jax.jit(lambda v: fm.perturb(jax.random.key(0), v, jnp.float32(1 / 128)))(fm.prepare({"params": params}))
    assert int(st.n_cells) == 8 * (sizes["mlp"] + sizes["lm_head"])
    # the realised rate follows the BER: n_faults ~ Binomial(cells, 1/128), within 5 sigma
    n, p = 8 * (sizes["mlp"] + sizes["lm_head"]), 1 / 128
    assert abs(int(st.n_faults) - p * n) < 5 * np.sqrt(n * p * (1 - p))


@pytest.mark.slow
def test_write_verify_mask_is_restricted_too():
    params = random_params(GPT)
    mask = jax.tree_util.tree_map(lambda x: jnp.ones(x.shape, bool), params)
    fm = select_tensors(jaxfault.cim_variation(write_var=0.0), "mlp", model=GPT)
    out, st = jax.jit(lambda v: fm.perturb(jax.random.key(1), v, jnp.float32(0.5)))(
        {"params": params, "write_verify": mask})
    assert "write_verify" not in out and int(st.n_faults) == 0      # every selected weight verified
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(params),
                                                    jax.tree_util.tree_leaves(out["params"])))


def test_a_group_the_model_lacks_is_an_error():
    params = random_params(GPT2(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2))  # tied: no lm_head
    fm = select_tensors(jaxfault.sram_bit_errors(), "lm_head", model=GPT)
    with pytest.raises(JaxfaultError, match="no parameter is in the tensor group"):
        fm.perturb(jax.random.key(0), {"params": params}, jnp.float32(0.01))


def test_a_selection_keeps_the_stored_bits_per_weight_of_its_storage():
    from jaxfault.ecc.hbm import hbm_faults
    from jaxfault.faults.select import select_tensors

    for scheme, bits in (("sparrow", 18), ("none", 16)):
        fm = hbm_faults(scheme=scheme)
        assert select_tensors(fm, "attention,mlp").stored_bits == fm.stored_bits == bits
