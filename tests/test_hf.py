"""from_hf against Hugging Face's own logits (tests/data/hf, made by scripts/make_hf_golden.py with
transformers + torch; this suite needs neither), dtype preservation, and the one-line errors
for bad folders.

Tolerance of the float32 comparisons: |ours - HF| <= 1e-5 * max(1, max|HF logits|). Both sides
compute in float32 (HF on torch's CPU kernels, ours under precision="highest"), so they differ
only by rounding: summation order in matmuls of at most 64 terms, and the last-ulp differences
of exp/tanh/rsqrt/cos/sin between the two libraries, through two layers. Float32's unit
roundoff is 6e-8; the bound is ~170 of those relative to the logit scale, and the differences
measured on these checkpoints are 1.2-2.7e-6 on logits of magnitude 3.8-5.4 (at most 6e-7
relative, 15x below the bound). Any mapping mistake (a missing transpose, bias, norm weight, RoPE convention,
window, head grouping) changes logits by O(0.1) or more.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfault.core.errors import JaxfaultError
from jaxfault.models import GPT2, Llama
from jaxfault.models.hf import from_hf, load_tokenizer, model_from_config, read_tensors
from jaxfault.core.precision import precision_scope

DATA = Path(__file__).parent / "data" / "hf"
# the default suite compiles one model per case (~3-5 s each here); the rest run with -m slow
FLOAT32_CASES = ("gpt2_tied", "llama_gqa", "qwen2", "mistral_window",
                 pytest.param("gpt2_untied_sharded", marks=pytest.mark.slow),
                 pytest.param("llama_tied_bias", marks=pytest.mark.slow))


def _rtol_bound(ref):
    return 1e-5 * max(1.0, float(np.abs(ref).max()))


def _logits(model, variables, tokens):
    with precision_scope("highest"):
        return np.asarray(jax.jit(model.apply)(variables, jnp.asarray(tokens)).astype(jnp.float32))


@pytest.mark.parametrize("case", FLOAT32_CASES)
def test_from_hf_reproduces_reference_logits(case):
    model, variables = from_hf(DATA / case)
    golden = np.load(DATA / case / "golden.npz")
    out = _logits(model, variables, golden["tokens"])
    assert out.shape == golden["logits"].shape == (2, 8, 64)
    assert np.abs(out - golden["logits"]).max() <= _rtol_bound(golden["logits"])


def test_families_and_fields_map_as_documented():
    kinds = {c: from_hf(DATA / c)[0] for c in ("gpt2_untied_sharded", "qwen2", "mistral_window", "llama_tied_bias")}
    assert isinstance(kinds["gpt2_untied_sharded"], GPT2) and not kinds["gpt2_untied_sharded"].tie_word_embeddings
    q = kinds["qwen2"]
    assert isinstance(q, Llama) and (q.qkv_bias, q.o_bias, q.kv_heads, q.tie_word_embeddings) == (True, False, 1, True)
    assert kinds["mistral_window"].layer_windows == (4, 4)
    b = kinds["llama_tied_bias"]
    assert (b.qkv_bias, b.o_bias, b.mlp_bias, b.dim_per_head) == (True, True, True, 16)


@pytest.mark.slow
def test_sliding_window_changes_the_logits():
    """The window-4 mask over 8 tokens matters: without it the logits leave the tolerance."""
    model, variables = from_hf(DATA / "mistral_window")
    golden = np.load(DATA / "mistral_window" / "golden.npz")
    full = _logits(model.clone(layer_windows=()), variables, golden["tokens"])
    assert np.abs(full - golden["logits"]).max() > 100 * _rtol_bound(golden["logits"])


def test_bf16_checkpoint_stays_bf16():
    model, variables = from_hf(DATA / "llama_bf16")
    leaves = jax.tree_util.tree_leaves(variables)
    assert leaves and all(x.dtype == jnp.bfloat16 for x in leaves)
    golden = np.load(DATA / "llama_bf16" / "golden.npz")  # HF's float32 computation of the bf16 weights
    with precision_scope("highest"):
        out16 = jax.jit(model.apply)(variables, jnp.asarray(golden["tokens"]))
    assert out16.dtype == jnp.bfloat16
    # computed in bf16: bf16's unit roundoff is 2^-9 = 0.2 %; ~20 rounded stages (projections,
    # rotary products, residual adds, norms' casts) over two layers bound the error by ~4 % of
    # the logit scale (measured: 1.9 %)
    err = np.abs(np.asarray(out16.astype(jnp.float32)) - golden["logits"]).max()
    assert err <= 0.04 * np.abs(golden["logits"]).max()


@pytest.mark.slow
def test_bf16_weights_upcast_match_reference():
    """The same bf16 weights computed in float32 match HF's float32 computation to float32 tolerance."""
    model, variables = from_hf(DATA / "llama_bf16")
    golden = np.load(DATA / "llama_bf16" / "golden.npz")
    up = jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), variables)
    assert np.abs(_logits(model, up, golden["tokens"]) - golden["logits"]).max() <= _rtol_bound(golden["logits"])


def test_expected_tensors_match_the_model_tree():
    """The hand-written name/shape tables equal the parameter tree the modules create, and a
    sharded folder loads (without running it)."""
    from jaxfault.models.hf import expected_tensors

    for case in ("gpt2_untied_sharded", "llama_tied_bias", "qwen2"):
        model, variables = from_hf(DATA / case)
        shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32)))["params"]
        flat = {tuple(str(k.key) for k in p): tuple(x.shape)
                for p, x in jax.tree_util.tree_flatten_with_path(shapes)[0]}
        assert flat == {path: shape for path, (_, _, shape) in expected_tensors(model).items()}
        loaded = {tuple(str(k.key) for k in p): tuple(x.shape)
                  for p, x in jax.tree_util.tree_flatten_with_path(variables["params"])[0]}
        assert loaded == flat


def test_raw_bf16_read_matches_safetensors_header(tmp_path):
    """bf16 tensors are read from their byte ranges: the values equal the float32 upcast that
    safetensors' own torch-free path cannot give, checked by re-encoding the bits."""
    import ml_dtypes

    t = read_tensors(DATA / "llama_bf16")
    w = t["model.embed_tokens.weight"]
    assert w.dtype == np.dtype(ml_dtypes.bfloat16) and w.shape == (64, 32)
    raw = (DATA / "llama_bf16" / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    start, end = json.loads(raw[8:8 + n])["model.embed_tokens.weight"]["data_offsets"]
    bits = np.frombuffer(raw[8 + n + start:8 + n + end], "<u2").reshape(64, 32)
    np.testing.assert_array_equal(w.view(np.uint16), bits)


def test_tokenizer_from_tokenizer_json():
    tok = load_tokenizer(DATA / "gpt2_tied")
    assert tok.encode("w1 w5 unknownword w63").ids == [1, 5, 0, 63]
    assert load_tokenizer(DATA / "llama_gqa") is None


# ------------------------------------------------------------------------------- bad folders
def _copy(tmp_path, case="gpt2_tied"):
    dst = tmp_path / case
    shutil.copytree(DATA / case, dst)
    return dst


def _rewrite_tensors(folder, edit):
    from safetensors.numpy import save_file

    t = read_tensors(folder)
    edit(t)
    (folder / "model.safetensors").unlink()
    save_file(t, str(folder / "model.safetensors"))


def _edit_config(folder, **changes):
    f = folder / "config.json"
    cfg = json.loads(f.read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    f.write_text(json.dumps(cfg))


def _error(folder) -> str:
    with pytest.raises(JaxfaultError) as e:
        from_hf(folder)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_missing_config(tmp_path):
    d = _copy(tmp_path)
    (d / "config.json").unlink()
    assert "has no config.json" in _error(d)


def test_unsupported_model_type(tmp_path):
    d = _copy(tmp_path)
    _edit_config(d, model_type="bert")
    assert "unsupported model_type 'bert'" in _error(d)


def test_missing_config_field(tmp_path):
    d = _copy(tmp_path, "llama_gqa")
    _edit_config(d, intermediate_size=None)
    assert "no 'intermediate_size' field" in _error(d)


def test_rope_scaling_refused(tmp_path):
    d = _copy(tmp_path, "llama_gqa")
    _edit_config(d, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})
    assert "unsupported rope_scaling type 'linear'" in _error(d)


def test_mismatched_shape(tmp_path):
    d = _copy(tmp_path)
    _edit_config(d, n_inner=96)
    assert _error(d) == "tensor 'transformer.h.0.mlp.c_fc.weight' has shape [32, 64], the config implies [32, 96]"


def test_missing_tensor(tmp_path):
    d = _copy(tmp_path, "llama_gqa")
    _rewrite_tensors(d, lambda t: t.pop("model.layers.1.self_attn.k_proj.weight"))
    assert "no tensor 'model.layers.1.self_attn.k_proj.weight'" in _error(d)


def test_unknown_tensor_refused_known_buffers_ignored(tmp_path):
    d = _copy(tmp_path)
    _rewrite_tensors(d, lambda t: t.update({"transformer.h.0.attn.bias": np.ones((1, 1, 16, 16), np.float32),
                                            "transformer.h.1.attn.masked_bias": np.zeros((), np.float32)}))
    from_hf(d)  # GPT-2's mask buffers load as Hugging Face loads them: ignored
    _rewrite_tensors(d, lambda t: t.update({"transformer.h.0.mlp.extra.weight": np.ones((2, 2), np.float32)}))
    assert "tensor 'transformer.h.0.mlp.extra.weight' is not part of the GPT2 model" in _error(d)


def test_tied_head_copy_must_equal_embedding(tmp_path):
    d = _copy(tmp_path)
    emb = read_tensors(d)["transformer.wte.weight"]
    _rewrite_tensors(d, lambda t: t.update({"lm_head.weight": emb.copy()}))
    from_hf(d)
    _rewrite_tensors(d, lambda t: t.update({"lm_head.weight": emb + 1}))
    assert "differs from the token embedding" in _error(d)


def test_shard_missing(tmp_path):
    d = _copy(tmp_path, "gpt2_untied_sharded")
    shard = sorted(d.glob("model-0000*.safetensors"))[1]
    shard.unlink()
    assert f"shard {shard.name} listed in model.safetensors.index.json is missing" in _error(d)


def test_config_validation_without_weights():
    with pytest.raises(JaxfaultError, match="must be a multiple of num_key_value_heads"):
        model_from_config({"model_type": "llama", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8,
                           "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 3})
    with pytest.raises(JaxfaultError, match="sliding_window' is set for model_type 'llama'"):
        model_from_config({"model_type": "llama", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8,
                           "num_hidden_layers": 1, "num_attention_heads": 2, "sliding_window": 4})


@pytest.mark.parametrize("edit, message", [
    ({"model_type": "bert"}, "error: unsupported model_type 'bert'; supported: gpt2, llama, mistral, qwen2"),
    ({"n_layer": None}, "error: config.json has no 'n_layer' field"),
    ({"n_head": 0}, "error: config field 'n_head' must be a positive integer, got 0"),
])
def test_cli_bad_config_is_one_line_exit_2(tmp_path, capsys, edit, message):
    """A CLI given a bad Hugging Face folder (eval.energy prices one from its config) prints one
    'error:' line and exits 2 before any work."""
    from eval import energy
    from jaxfault.cli import run_main

    d = _copy(tmp_path)
    _edit_config(d, **edit)
    with pytest.raises(SystemExit) as e:
        run_main(energy.main, ["--network", str(d), "--input", "8"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err == message


def test_sliding_layers_from_config():
    """Mistral: one window on every layer (HF's default 4096 when the field is absent); Qwen2:
    layers from max_window_layers on, only with use_sliding_window (or as layer_types say)."""
    base = {"vocab_size": 8, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 3,
            "num_attention_heads": 2}
    assert model_from_config({**base, "model_type": "mistral"}).layer_windows == (4096,) * 3
    assert model_from_config({**base, "model_type": "mistral", "sliding_window": None}).layer_windows == ()
    qwen = {**base, "model_type": "qwen2", "sliding_window": 4, "max_window_layers": 1}
    assert model_from_config(qwen).layer_windows == ()
    assert model_from_config({**qwen, "use_sliding_window": True}).layer_windows == (0, 4, 4)
    assert model_from_config({**qwen, "use_sliding_window": True, "layer_types": [
        "sliding_attention", "full_attention", "sliding_attention"]}).layer_windows == (4, 0, 4)
