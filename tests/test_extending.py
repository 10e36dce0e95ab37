"""A scheme registered in one outside module runs through the CLI, a campaign and the energy
report without edits elsewhere (docs/extending.md)."""
import json

import jax
import numpy as np
import pytest

import toy_tmr_scheme  # noqa: F401  (registers "tmr")
from jaxfault.cli import run_main


def run(main, argv):
    with pytest.raises(SystemExit) as e:
        run_main(main, argv)
    return e.value.code


def test_toy_scheme_corrects_every_single_exponent_error():
    """Exhaustive: every bf16 exponent value x every one of the 24 exponent-copy cells flipped."""
    w = (np.arange(256, dtype=np.uint32) << 23) | np.uint32(0x80550000)
    enc = np.asarray(toy_tmr_scheme.encode(jax.numpy.asarray(w)))
    for bit in list(range(23, 31)) + list(range(0, 16)):
        bad = enc ^ np.uint32(1 << bit)
        np.testing.assert_array_equal(np.asarray(toy_tmr_scheme.decode(jax.numpy.asarray(bad))), w, err_msg=str(bit))


def test_toy_scheme_through_cli_campaign_and_energy(lenet_checkpoint, tmp_path, capsys):
    from eval import campaign as campaign_cli
    from eval import sparrow as sparrow_cli
    from eval import tradeoff as tradeoff_cli

    out = tmp_path / "sp"
    assert run(sparrow_cli.main, ["--ber", "1e-2", "--scheme", "tmr", "--trials", "2", "--limit", "200",
                                  "--checkpoint", str(lenet_checkpoint), "--out", str(out)]) == 0
    result = next(out.glob("tmr_*.json"))
    r = json.loads(result.read_text())
    assert r["scheme"] == "tmr" and r["stored_bits_per_weight"] == 32
    assert 0.005 < r["realised_ber"]["mean"] < 0.02

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"checkpoint": str(lenet_checkpoint), "eval_examples": 200, "trials": 2,
                               "output": str(tmp_path / "c.jsonl"),
                               "grid": [{"method": "sparrow", "scheme": ["tmr", "none"], "ber": [1e-3, 1e-2]}]}))
    assert run(campaign_cli.main, [str(cfg)]) == 0
    rows = [json.loads(l) for l in (tmp_path / "c.jsonl").read_text().splitlines() if l.strip()]
    rows = [r for r in rows if "config" in r]
    assert sorted((r["config"]["scheme"], r["config"]["ber"]) for r in rows) == \
        [("none", 1e-3), ("none", 1e-2), ("tmr", 1e-3), ("tmr", 1e-2)]
    tmr_hi = next(r for r in rows if r["config"] == {"method": "sparrow", "scheme": "tmr", "ber": 1e-2})
    none_hi = next(r for r in rows if r["config"] == {"method": "sparrow", "scheme": "none", "ber": 1e-2})
    assert tmr_hi["accuracy_mean"] >= none_hi["accuracy_mean"] - 0.02   # exponent protected

    capsys.readouterr()
    assert run(tradeoff_cli.main, [str(result), "--json", str(tmp_path / "t.json")]) == 0
    text = capsys.readouterr().out
    assert "tmr" in text
