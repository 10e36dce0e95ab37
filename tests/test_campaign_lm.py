"""Campaigns on a language model: perplexity points equal the engine's evaluation with the same
keys, the table and records carry medians with intervals, and ci_width is refused."""
import json
from pathlib import Path

import numpy as np
import pytest

from jaxfault import campaign as cp
from tests._cli_run import one_error_line, run_cli


@pytest.fixture()
def lm_checkpoint(make_lm_checkpoint):
    return make_lm_checkpoint(16)


def test_a_language_model_point_equals_the_engine_with_its_keys(lm_checkpoint):
    from jaxfault import engine
    from jaxfault.campaign.methods import build_point
    from jaxfault.core.keys import trial_keys

    config = cp.validate_config({"checkpoint": str(lm_checkpoint), "eval_windows": 3, "trials": 4,
                                 "grid": [{"method": "sparrow", "scheme": "none", "ber": 3e-2}]})
    data, identity = cp.load_eval_data(config, log=lambda s: None)
    assert identity["task"] == "language_model" and identity["eval_windows"] == 3 and "eval_examples" not in identity
    point = cp.expand_grid(config["grid"])[0]
    records, compiled = cp.run_campaign(cp.Campaign(points=[point], trials=4, seed=0), data)
    rec = records[0]
    fm, rate, _ = build_point(point.params, 3e-2)
    ref = engine.evaluate(data.model, data.variables, data.images, data.labels, fm, [rate],
                          trial_keys(point.key(0), 4), strategy="loop", task=data.task)
    np.testing.assert_array_equal(rec["perplexity"], np.asarray(ref.metrics["perplexity"][0], np.float64))
    assert rec["metric"] == "perplexity" and rec["trials"] == 4 and compiled == 1
    assert rec["perplexity_median_lo"] <= rec["perplexity_median"] <= rec["perplexity_median_hi"]
    assert not any(np.isnan(v) for v in rec["perplexity"])
    assert 0 <= rec["diverged_lo"] <= rec["diverged_fraction"] <= rec["diverged_hi"] <= 1
    assert "accuracy_mean" not in rec


def test_language_model_campaign_cli_writes_perplexity_rows(lm_checkpoint, tmp_path, capsys):
    out = tmp_path / "res" / "results.jsonl"
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"checkpoint": str(lm_checkpoint), "out": str(out.parent), "eval_windows": 2,
                               "trials": 3, "grid": [{"method": "sparrow", "scheme": ["sparrow", "none"],
                                                      "ber": 1e-2}]}))
    code, text, err = run_cli("eval.campaign", [str(cfg), "--plot", "--no-compile-cache"], capsys)
    assert code == 0, err
    assert "perplexity median [95% interval]" in text and "diverged" in text and "eval.tradeoff" in text
    rows = [json.loads(line) for line in out.read_text().splitlines()[1:]]
    assert len(rows) == 2 and all(len(r["perplexity"]) == 3 for r in rows)
    assert (out.parent / "campaign.png").stat().st_size > 0
    # eval.tradeoff reads these rows by median perplexity, priced from the campaign's checkpoint
    from jaxfault.energy.tradeoff import load_records

    recs = load_records([str(out)])
    assert [r["perplexity_median"] for r in recs] == [r["perplexity_median"] for r in rows]
    assert all(r["metric"] == "perplexity" and r["model"] == str(Path(lm_checkpoint).resolve()) for r in recs)


def test_ci_width_on_a_language_model_is_one_line_before_work(lm_checkpoint, tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"checkpoint": str(lm_checkpoint), "out": str(tmp_path / "r"),
                               "ci_width": 0.01, "grid": [{"method": "sparrow", "ber": 1e-3}]}))
    code, _, err = run_cli("eval.campaign", [str(cfg), "--no-compile-cache"], capsys)
    one_error_line(code, err, "ci_width stops a point on the interval of a mean accuracy")
    assert not (tmp_path / "r").exists()
