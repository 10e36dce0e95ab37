"""python -m eval.sparrow on a language-model checkpoint: perplexity rows, tensor groups, bad input."""
import json
import math

import pytest

from jaxfault.core.errors import JaxfaultError


@pytest.fixture()
def lm_checkpoint(make_lm_checkpoint):
    return make_lm_checkpoint(32)


def test_sparrow_cli_reports_perplexity_of_a_language_model(lm_checkpoint, tmp_path, capsys):
    from eval.sparrow import main

    assert main(["--checkpoint", str(lm_checkpoint), "--ber", "1e-2", "--scheme", "none", "--trials", "3",
                 "--limit", "4", "--tensors", "attention,mlp", "--out", str(tmp_path / "out"),
                 "--no-compile-cache"]) == 0
    out = capsys.readouterr().out
    assert "clean bf16: perplexity" in out and "perplexity median" in out and "diverged" in out
    rec = json.loads(next((tmp_path / "out").glob("none_*_attention+mlp.json")).read_text())
    assert rec["task"] == "language_model" and rec["tokens"] == 4 * 16 and rec["trials"] == 3
    assert len(rec["perplexity"]["values"]) == 3 and not any(math.isnan(v) for v in rec["perplexity"]["values"])
    assert 0 <= rec["diverged"]["fraction"] <= 1
    # only the attention and MLP kernels and biases are stored: 1 block x (4 + 2) x 32^2 weights + biases
    assert rec["protected_weights"] == 32 * 96 + 96 + 32 * 32 + 32 + 32 * 128 + 128 + 128 * 32 + 32


def test_unknown_tensor_group_is_refused_before_work(tmp_path, monkeypatch):
    import eval.sparrow as cli
    from eval.sparrow import main

    monkeypatch.setattr(cli, "run", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(JaxfaultError, match="unknown tensor group 'attn'"):
        main(["--checkpoint", str(tmp_path), "--ber", "1e-3", "--tensors", "attn", "--out", str(tmp_path),
              "--no-compile-cache"])


@pytest.mark.slow
def test_memory_budget_bounds_the_trials_held_at_once(lm_checkpoint, tmp_path):
    from eval.sparrow import main

    # 1 KiB cannot hold one trial of even this model: refused with the sizes, before any trial runs
    with pytest.raises(JaxfaultError, match="more than the memory budget of 0.00 GiB"):
        main(["--checkpoint", str(lm_checkpoint), "--ber", "1e-3", "--trials", "4", "--limit", "2",
              "--strategy", "vmap", "--memory-budget", str(1 / 2**20), "--out", str(tmp_path), "--no-compile-cache"])
