"""Transformer families beyond the Hugging Face golden logits (tests/test_hf.py): the energy
model's layer shapes of GPT-2 and Llama (attention matmuls included) against hand formulas,
module kinds for fault-site selection, and input validation."""
from __future__ import annotations

import numpy as np
import pytest

from jaxfault.energy.core import access_counts
from jaxfault.energy.layers import layers_from_model, to_arrays
from jaxfault.core.errors import JaxfaultError
from jaxfault.models import GPT2, Llama, module_kind


GPT2_CFG = dict(d=32, heads=4, inner=80, vocab=64, n=2, length=8)
LLAMA_CFG = dict(d=32, heads=4, kv=2, inter=48, vocab=64, n=2, length=8)


def _gpt2_tiny(positions=16, n=2):
    c = GPT2_CFG
    return GPT2(vocab_size=c["vocab"], n_positions=positions, n_embd=c["d"], n_layer=n, n_head=c["heads"],
                n_inner=c["inner"])


def _llama_tiny():
    c = LLAMA_CFG
    return Llama(vocab_size=c["vocab"], hidden_size=c["d"], intermediate_size=c["inter"], num_hidden_layers=c["n"],
                 num_attention_heads=c["heads"], num_key_value_heads=c["kv"])


@pytest.fixture(scope="module")
def macs():
    """Per-layer MACs of the energy model (access_counts) for every (model, context) used below,
    from one estimator call over all their layers (one compilation)."""
    runs = {"gpt2": (_gpt2_tiny(), 8), "llama": (_llama_tiny(), 8), "gpt2@8": (_gpt2_tiny(64, 1), 8),
            "gpt2@32": (_gpt2_tiny(64, 1), 32)}
    layers = {k: layers_from_model(m, (L,)) for k, (m, L) in runs.items()}
    flat = [l for ls in layers.values() for l in ls]
    counts = np.asarray(access_counts(to_arrays(flat), 0.0).macs).astype(np.int64)
    out, i = {}, 0
    for k, ls in layers.items():
        out[k] = ({l.name: int(m) for l, m in zip(ls, counts[i:i + len(ls)])}, ls)
        i += len(ls)
    return out


def test_gpt2_macs_match_hand_formula(macs):
    c = GPT2_CFG
    d, heads, inner, vocab, n, length = c["d"], c["heads"], c["inner"], c["vocab"], c["n"], c["length"]
    per, _ = macs["gpt2"]
    hd = d // heads
    attn = heads * length * length * hd  # Q K^T and P V each: every head, every query, every key
    layer = length * d * 3 * d + 2 * attn + length * d * d + 2 * length * d * inner
    assert per["h_0/attn/scores"] == per["h_1/attn/context"] == attn
    assert sum(per.values()) == n * layer + length * d * vocab  # the tied head, named after its weight 'wte'
    assert set(per) == {f"h_{i}/{m}" for i in range(n) for m in ("attn/c_attn", "attn/scores", "attn/context",
                                                              "attn/c_proj", "mlp/c_fc", "mlp/c_proj")} | {"wte"}


def test_llama_gqa_macs_match_hand_formula(macs):
    c = LLAMA_CFG
    d, heads, kv, inter, vocab, n, length = c["d"], c["heads"], c["kv"], c["inter"], c["vocab"], c["n"], c["length"]
    per, layers = macs["llama"]
    hd = d // heads
    attn = heads * length * length * hd  # query heads count, not kv heads
    layer = length * d * (heads + 2 * kv) * hd + 2 * attn + length * heads * hd * d + 3 * length * d * inter
    assert per["layers_1/self_attn/scores"] == per["layers_0/self_attn/context"] == attn
    assert sum(per.values()) == n * layer + length * d * vocab
    # the scores' stationary operand is K: kv heads x keys x head_dim values
    scores = next(l for l in layers if l.name == "layers_0/self_attn/scores")
    assert (scores.groups, scores.in_channels // kv, scores.out_channels // kv) == (kv, hd, length)
    assert scores.num_weights == 0  # K is an activation: no weight storage
    assert sum(l.num_weights for l in layers) == n * (d * (heads + 2 * kv) * hd + heads * hd * d + 3 * d * inter) \
        + d * vocab  # the untied input embedding is a lookup, not a matmul layer


def test_attention_macs_grow_with_context_squared(macs):
    (p8, _), (p32, _) = macs["gpt2@8"], macs["gpt2@32"]
    assert p32["h_0/attn/scores"] == 16 * p8["h_0/attn/scores"]
    assert p32["h_0/mlp/c_fc"] == 4 * p8["h_0/mlp/c_fc"]


def test_module_kinds():
    g, l = GPT2.MODULE_PATTERNS, Llama.MODULE_PATTERNS
    assert [module_kind(g, p) for p in ("wte/kernel", "wpe/kernel", "h_3/attn/c_attn/bias", "h_0/mlp/c_proj/kernel",
                                        "h_1/ln_2/scale", "ln_f/bias", "lm_head/kernel", "h_0/attn")] == \
        ["embeddings", "embeddings", "attention", "mlp", "norms", "norms", "lm_head", "attention"]
    assert [module_kind(l, p) for p in ("embed_tokens/kernel", "layers_0/self_attn/k_proj/kernel",
                                        "layers_2/mlp/up_proj/kernel", "layers_0/input_layernorm/scale",
                                        "norm/scale", "lm_head/kernel", "other")] == \
        ["embeddings", "attention", "mlp", "norms", "norms", "lm_head", None]


def test_bad_inputs_are_one_line_errors():
    import jax.numpy as jnp

    model = GPT2(vocab_size=64, n_positions=8, n_embd=16, n_layer=1, n_head=2)
    with pytest.raises(JaxfaultError, match="integer token ids of shape"):
        model.init(__import__("jax").random.key(0), jnp.zeros((2, 4), jnp.float32))
    with pytest.raises(JaxfaultError, match=r"token id 64 is outside the vocabulary \[0, 64\)"):
        model.init(__import__("jax").random.key(0), jnp.full((1, 4), 64, jnp.int32))
    with pytest.raises(JaxfaultError, match="sequence length 9 exceeds the model's 8 positions"):
        layers_from_model(model, (9,))
    with pytest.raises(JaxfaultError, match="must be a multiple of n_head"):
        GPT2(n_embd=30, n_head=4)
    with pytest.raises(JaxfaultError, match="unsupported activation 'swish'"):
        Llama(hidden_act="swish")


def test_energy_networks_price_hf_configs():
    """eval.energy's network lookup prices a Hugging Face folder from its config alone."""
    from pathlib import Path

    from jaxfault.energy.networks import get_network

    folder = Path(__file__).parent / "data" / "hf" / "llama_gqa"
    net = get_network(str(folder), (8,))
    assert net.input_shape == (8,) and net.layers[3].name == "layers_0/self_attn/scores"
    assert get_network(str(folder / "config.json")).input_shape == (32,)  # capped at max_position_embeddings
    with pytest.raises(JaxfaultError, match="takes a context length"):
        get_network(str(folder), (28, 28, 1))


def test_vit_train_step_shapes():
    """The training loop's step traces through the zoo's ViT (abstractly: no compilation)."""
    import jax
    import jax.numpy as jnp
    import optax

    from jaxfault.models import ViT, create_model
    from jaxfault.training import make_train_step

    model = create_model("vit")
    assert isinstance(model, ViT) and create_model("vit", 10, 8).quant_bits == 8
    x = jax.ShapeDtypeStruct((8, 28, 28, 1), jnp.float32)
    variables = jax.eval_shape(lambda k: model.init(k, jnp.zeros(x.shape), train=False), jax.random.key(0))
    opt = optax.adam(1e-3)
    state = (variables["params"], {}, jax.eval_shape(opt.init, variables["params"]))
    y = jax.ShapeDtypeStruct((8,), jnp.int32)
    new_state, (loss, acc) = jax.eval_shape(make_train_step(model, opt), state, x, y, jax.random.key(1))
    assert loss.shape == () and jax.tree_util.tree_structure(new_state[0]) == jax.tree_util.tree_structure(state[0])
    d, mlp, tokens = 64, 128, 16 + 1
    block = 2 * 2 * d + 4 * (d * d + d) + (d * mlp + mlp) + (mlp * d + d)
    expected = (7 * 7 * 1 * d + d) + d + tokens * d + 4 * block + 2 * d + (d * 10 + 10)
    assert sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(variables)) == expected == 139018


@pytest.mark.slow
def test_vit_trains_with_the_training_loop(small_dataset):
    """A one-block ViT goes through train_classifier (its init, train step and evaluation)."""
    from jaxfault.data import Dataset
    from jaxfault.models import ViT
    from jaxfault.training import train_classifier

    d = small_dataset
    tiny = Dataset(d.name, d.train_images[:256], d.train_labels[:256], d.test_images[:128], d.test_labels[:128],
                   10, d.value_range, d.source)
    model = ViT(width=16, depth=1, heads=2, mlp_dim=32)
    variables, history = train_classifier(model, tiny, epochs=2, batch_size=64, learning_rate=3e-3,
                                          key=__import__("jax").random.key(0), log=lambda s: None,
                                          show_progress=False)
    assert set(variables) == {"params"} and variables["params"]["pos_embed"].shape == (1, 17, 16)
    assert len(history) == 2 and history[1]["train_loss"] < history[0]["train_loss"]
    assert 0.0 <= history[-1]["test_accuracy"] <= 1.0
    # 30x30 is zero-padded to 35x35: 25 patches
    assert next(l for l in layers_from_model(model, (30, 30, 1)) if l.name == "blocks_0/attn/query").input_size == (26, 1)
