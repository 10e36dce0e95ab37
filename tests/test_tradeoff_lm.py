"""eval.tradeoff on a language model's results: scored by median perplexity (lower is better),
priced from the model the results name, never read as a classifier's top-1 or priced as LeNet."""
import json

import pytest

from jaxfault.core.rows import make_row, report
from jaxfault.energy import protection as P
from jaxfault.energy import tradeoff as T
from jaxfault.energy.analysis import evaluate
from jaxfault.energy.networks import get_network
from jaxfault.core.errors import JaxfaultError

KW = dict(dram_kw={}, retention_table=P.RETENTION_BER_TABLE, voltage_table=P.VOLTAGE_BER_TABLE, v_nominal=1.0,
          write_verify=P.WriteVerify())


def lm_point(scheme, median, ci, bits):
    return make_row(fault_model="hbm", method="sparrow", fault={"scheme": scheme, "block_size": 64}, rate_name="ber",
                    rate=1e-3, trials=4, metric="perplexity",
                    summary={"median": median, "median_lo": ci[0], "median_hi": ci[1], "n": 4},
                    stored_bits_per_weight=bits, top1={"mean": 0.5, "n": 4})   # next-token top-1: not the score


def sparrow_lm_file(checkpoint):
    """A language model's report in the row schema, as eval.sparrow writes it."""
    return report([lm_point("sparrow", 5.556, [5.55, 5.58], 18), lm_point("secded", 5.9, [5.6, 6.3], 18),
                   lm_point("none", float("inf"), [77.0, float("inf")], 16)],
                  checkpoint=str(checkpoint), task="language_model")


def test_lm_results_are_scored_by_perplexity_and_priced_from_their_model(make_lm_checkpoint, tmp_path):
    ck = make_lm_checkpoint()
    f = tmp_path / "sparrow_lm.json"
    f.write_text(json.dumps(sparrow_lm_file(ck)))
    recs = T.load_records([str(f)])
    assert [r["metric"] for r in recs] == ["perplexity"] * 3 and all(r["model"] == str(ck) for r in recs)
    net = get_network(str(ck))          # the checkpoint's own architecture, one window of its context
    assert net.input_shape == (16,) and any("attn" in l.name for l in net.layers)
    rows = T.tradeoff(recs, lambda model, shape: get_network(model, shape).layers, **KW)
    by = {r["label"]: r for r in rows}
    assert by["sparrow B64"]["perplexity_median"] == 5.556 and by["sparrow B64"]["perplexity_ci"] == [5.55, 5.58]
    assert "accuracy_mean" not in by["none"]
    e = evaluate(net.layers, 16, 16, 0.0)
    assert by["none"]["reference_energy"] > float(e.total)          # the network plus its 64 ms refresh
    # the front: sparrow dominates secded (same bits, lower perplexity); none is cheaper but diverged
    assert by["sparrow B64"]["pareto"] and not by["secded"]["pareto"] and by["none"]["pareto"]
    table = T.format_rows(rows)
    assert "perplexity" in table.splitlines()[0] and "inf" in table and "0.5000" not in table


def test_lm_and_classifier_results_are_not_mixed_and_need_a_model(make_lm_checkpoint, tmp_path):
    lm = tmp_path / "lm.json"
    lm.write_text(json.dumps(sparrow_lm_file(make_lm_checkpoint())))
    cls = tmp_path / "cls.json"
    cls.write_text(json.dumps(report([make_row(fault_model="hbm", method="sparrow", fault={"scheme": "sparrow"},
                                               rate_name="ber", rate=1e-3, trials=4, metric="top1",
                                               summary={"mean": 0.9})])))
    with pytest.raises(JaxfaultError, match="holds a language model's perplexities, the other files accuracies"):
        T.load_records([str(lm), str(cls)])
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(report([{**lm_point("none", 6.0, [5.0, 7.0], 16)}])))
    with pytest.raises(JaxfaultError, match=r"bare.json: row 1: a perplexity row needs the language model"):
        T.load_records([str(bare)])
    low = tmp_path / "low.json"
    low.write_text(json.dumps(report([lm_point("none", 0.5, [0.4, 0.6], 16)], model="gpt2")))
    with pytest.raises(JaxfaultError, match=r"perplexity must be a number >= 1"):
        T.load_records([str(low)])


def test_lm_campaign_rows(make_lm_checkpoint, tmp_path):
    ck = make_lm_checkpoint()
    header = {"jaxfault_results": 1, "identity": {"checkpoint": str(ck), "task": "language_model", "dataset": "fox"}}
    row = {"config": {"method": "sparrow", "ber": 1e-3}, "perplexity": [5.0, 5.1, 5.2], "top1": [0.5, 0.5, 0.5],
           **make_row(fault_model="hbm", method="sparrow", fault={"scheme": "sparrow"}, rate_name="ber", rate=1e-3,
                      trials=3, metric="perplexity", summary={"median": 5.1, "median_lo": 5.0, "median_hi": 5.2})}
    f = tmp_path / "results.jsonl"
    f.write_text(json.dumps(header) + "\n" + json.dumps(row) + "\n")
    (rec,) = T.load_records([str(f)])
    assert rec["metric"] == "perplexity" and rec["perplexity_median"] == 5.1 and rec["perplexity_ci"] == [5.0, 5.2]
    assert rec["model"] == str(ck)
