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


def test_toy_activation_fault_through_the_run_cli_and_a_campaign(lenet_checkpoint, tmp_path, capsys):
    """A fault model on the activation site, registered in tests/toy_dead_units.py only, runs
    through eval.run and a campaign; its faults follow the rate (Dense outputs of 100 images:
    LeNet's Dense layers have 120 + 84 + 10 = 214 outputs, so 21400 units per trial)."""
    import toy_dead_units  # noqa: F401  (registers "toy-dead-units")
    from eval import campaign as campaign_cli
    from eval import run as run_cli

    out = tmp_path / "run"
    assert run(run_cli.main, ["--fault-model", "toy-dead-units", "--rates", "0,0.05", "--trials", "3",
                              "--limit", "100", "--checkpoint", str(lenet_checkpoint), "--out", str(out),
                              "--no-compile-cache"]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["p_dead"] for r in rows] == [0.0, 0.05] and rows[0]["activation_faults"]["max"] == 0
    assert abs(rows[1]["activation_faults"]["mean"] - 0.05 * 21400) < 5 * np.sqrt(21400 * 0.05 * 0.95 / 3)

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"checkpoint": str(lenet_checkpoint), "eval_examples": 100, "trials": 2,
                               "output": str(tmp_path / "c.jsonl"),
                               "grid": [{"method": "toy-dead-units", "p_dead": [0.0, 0.3]}]}))
    assert run(campaign_cli.main, [str(cfg), "--no-compile-cache"]) == 0
    recs = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines() if line.strip()]
    recs = {r["config"]["p_dead"]: r for r in recs if "config" in r}
    assert recs[0.3]["accuracy_mean"] < recs[0.0]["accuracy_mean"]
