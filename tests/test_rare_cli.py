"""eval.sparrow --estimator: the flag's bad values and senseless combinations are refused in one
line before any work, and the stratified path reports the stratified estimate, its interval and
forward passes, and records the estimator. Tiny synthetic model, so each test takes seconds."""
import jax
import jax.numpy as jnp
import pytest

from _cli_run import one_error_line, run_cli
from test_rare import Tiny
from jaxfault.experiment.ecc_eval import (SparrowEvalConfig, evaluate_schemes, format_comparison, result_config,
                                   sweep_table)
from jaxfault.core.errors import JaxfaultError
from tests._fast_init import random_variables


@pytest.mark.parametrize("argv, needles", [
    (["--ber", "1e-6", "--estimator", "fast"], ("--estimator", "fast")),
    (["--ber", "1e-6", "--estimator", "stratified", "--ci-width", "0.01"], ("--estimator stratified", "--ci-width")),
    (["--ber", "1e-6", "--estimator", "auto", "--tensors", "mlp"], ("--estimator auto", "--tensors")),
    (["--ber", "1e-6", "--estimator", "stratified", "--task", "language_model"], ("--task language_model",)),
])
def test_bad_estimator_flags_give_one_error_line(argv, needles, capsys, tmp_path):
    code, out, err = run_cli("eval.sparrow", argv + ["--out", str(tmp_path)], capsys)
    one_error_line(code, err, *needles)
    assert out == "" and not any(tmp_path.iterdir())          # refused before any work


def test_config_refuses_senseless_combinations():
    with pytest.raises(JaxfaultError, match="unknown estimator"):
        SparrowEvalConfig(bers=(1e-6,), estimator="fast")
    with pytest.raises(JaxfaultError, match="ci_width"):
        SparrowEvalConfig(bers=(1e-6,), estimator="stratified", ci_width=0.01)
    # the plain default leaves the recorded configuration as it was before the flag existed
    assert "estimator" not in result_config(SparrowEvalConfig(bers=(1e-6,)))
    assert result_config(SparrowEvalConfig(bers=(1e-6,), estimator="auto"))["estimator"] == "auto"


@pytest.fixture(scope="module")
def tiny():
    model = Tiny()
    x = jax.random.normal(jax.random.key(0), (64, 8))
    variables = random_variables(model, 1, x)
    return model, variables, x, jnp.argmax(model.apply(variables, x), -1)


def test_stratified_and_auto_rows(tiny):
    model, variables, x, labels = tiny
    # 192 kernel words: the bit-30 0->1 class (q = 0.5) expects 192 * 1e-3 * 0.5 = 0.096 faults per
    # trial at BER 1e-3 (auto: stratified) and 192 * 0.05 * 0.5 = 4.8 at 5e-2 (auto: plain)
    cfg = SparrowEvalConfig(bers=(1e-3, 5e-2), schemes=("none",), zero_to_one=0.5, trials=8, strategy="map",
                            estimator="auto")
    rep = evaluate_schemes(cfg, model, variables, x, labels, topk=(1,))
    assert rep["estimator"] == "auto"
    low, high = rep["rows"]
    assert low["estimator"] == "stratified" and high["estimator"] == "plain"
    assert abs(low["expected_class_faults"] - 0.096) < 1e-6 and abs(high["expected_class_faults"] - 4.8) < 1e-5
    t = low["top1"]
    assert t["method"] == "stratified" and t["ci_lo"] <= t["mean"] <= t["ci_hi"]
    assert t["passes"] == low["stratified"]["estimate"]["passes"] and low["forward_passes"] >= t["passes"]
    assert high["top1"]["n"] == 8 and len(high["top1"]["values"]) == 8
    text = format_comparison({**rep, "rows": [low]})
    assert "stratified" in text and "forward passes" in text and "estimator auto" in text
    assert "plain:" not in text                                  # no plain row, no plain legend
    both = format_comparison(rep)
    assert "plain: betting" in both and both.count("\n") == 4   # header, 2 rows, legend
    table = sweep_table(rep)
    assert f"({t['n']}, stratified)" in table and "(8)" in table
    plain = evaluate_schemes(SparrowEvalConfig(bers=(1e-3,), schemes=("none",), trials=2, strategy="map"),
                             model, variables, x, labels, topk=(1,))
    assert plain["estimator"] == "plain" and "estimator" not in plain["rows"][0]
