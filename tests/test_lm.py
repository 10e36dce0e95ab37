"""Language-model training, clean perplexity, checkpoints and the cached default LM (tiny sizes)."""
import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfault.core.errors import JaxfaultError
from jaxfault.training.lm import (build_language_model, lm_model_config, load_language_model, perplexity,
                         sample_windows, train_language_model, token_nll)
from jaxfault.data.text import inputs_targets, windows
from jaxfault.training.zoo import default_language_model, lm_cache_entry_name

TINY = dict(layers=1, width=32, heads=2, seq_len=16)


def tiny_model(family="gpt2"):
    return build_language_model(family, lm_model_config(family, vocab_size=256, **TINY))


def periodic_text(n=4000):
    return np.frombuffer((b"abcdefgh" * (n // 8 + 1))[:n], np.uint8).astype(np.int32)


@pytest.mark.slow
def test_perplexity_is_exp_of_the_mean_token_nll_batched_equals_direct():
    model = tiny_model("llama")
    variables = model.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))
    x, y = inputs_targets(windows(periodic_text(), 16, 5))
    got = perplexity(model, variables, x, y, batch_size=2)        # 3 batches, the last padded
    direct = float(token_nll(model.apply(variables, jnp.asarray(x)), jnp.asarray(y)).mean())
    assert got["tokens"] == 5 * 16
    assert got["nll"] == pytest.approx(direct, rel=1e-5)          # float32 sums in another order
    assert got["perplexity"] == pytest.approx(math.exp(direct), rel=1e-5)


@pytest.mark.slow
def test_training_learns_a_periodic_text():
    model = tiny_model()
    tokens = periodic_text()
    vx, vy = inputs_targets(windows(tokens, 16, 4))
    v, h = train_language_model(model, tokens, vx, vy, steps=30, batch_size=8, seq_len=16, learning_rate=1e-2,
                                key=jax.random.key(1), eval_every=30, log=lambda s: None)
    # the period is learnt: far below the unigram baseline of 8 equally frequent letters
    assert len(h) == 1 and h[0]["val_perplexity"] < 2.0 and h[0]["train_loss"] > 0
    assert all(np.asarray(a).dtype == np.float32 for a in jax.tree_util.tree_leaves(v))


def test_batches_are_a_function_of_the_key():
    tokens = np.arange(1000)
    a = sample_windows(jax.random.key(4), tokens, 8, 16)
    assert a.shape == (8, 17) and (np.diff(a, axis=1) == 1).all()      # contiguous windows
    assert np.array_equal(a, sample_windows(jax.random.key(4), tokens, 8, 16))
    assert not np.array_equal(a, sample_windows(jax.random.key(5), tokens, 8, 16))


@pytest.mark.slow
def test_default_lm_is_cached_and_loads(tmp_path):
    (tmp_path / "data").mkdir()
    lines = ["the quick brown fox jumps over the lazy dog " * 2] * 2000
    (tmp_path / "data" / "fox.txt").write_text("\n".join(lines))
    settings = dict(corpus="fox", steps=4, batch_size=4, val_windows=4, **TINY)
    logs = []
    path = default_language_model(cache_dir_override=tmp_path / "cache", data_dir=tmp_path / "data",
                                  log=logs.append, **settings)
    assert path.name == lm_cache_entry_name(**settings) and any("training it once" in s for s in logs)
    model, variables, config = load_language_model(path)
    meta = json.loads((path / "jaxfault.json").read_text())
    assert meta["kind"] == "language_model" and config["family"] == "gpt2" and config["tokenizer"] == "bytes"
    m = meta["metrics"]
    assert m["unigram_perplexity"] > 1 and math.isfinite(m["val_perplexity"])
    logs.clear()
    assert default_language_model(cache_dir_override=tmp_path / "cache", data_dir=tmp_path / "data",
                                  log=logs.append, **settings) == path and not logs      # reused
    logits = model.apply(variables, jnp.zeros((1, 16), jnp.int32))
    assert logits.shape == (1, 16, 256)
    # a checkpoint whose configuration no longer fits its arrays is refused
    meta["config"]["model_config"]["n_embd"] = 64
    meta["config"]["model_config"]["n_head"] = 2
    meta.pop("metadata_sha256")  # as in a checkpoint saved before the metadata digest (else: "edited")
    (path / "jaxfault.json").write_text(json.dumps(meta))
    with pytest.raises(JaxfaultError, match="does not match"):
        load_language_model(path)


def test_bad_settings_are_one_line_errors():
    with pytest.raises(JaxfaultError, match="multiple of heads"):
        lm_model_config("gpt2", vocab_size=256, layers=1, width=30, heads=4, seq_len=16)
    with pytest.raises(JaxfaultError, match="unknown language-model family 'gpt3'"):
        lm_model_config("gpt3", vocab_size=256, **TINY)
    with pytest.raises(JaxfaultError, match="unknown language-model setting"):
        default_language_model(widht=3)


def test_train_lm_cli_rejects_bad_input_before_work(capsys):
    from train.lm import main

    r = subprocess.run([sys.executable, "-m", "train.lm", "--width", "30", "--heads", "4", "--no-compile-cache"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr == "error: --width 30 is not a multiple of --heads 4\n"
    with pytest.raises(JaxfaultError, match="unknown model family 'gtp2'"):
        main(["--family", "gtp2", "--no-compile-cache"])
    with pytest.raises(SystemExit) as e:
        main(["--steps", "0", "--no-compile-cache"])
    assert e.value.code == 2 and "--steps" in capsys.readouterr().err
