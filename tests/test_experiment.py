"""The experiment layer: one validated config, one runner, one row schema, a generic CLI."""
import json

import jax
import numpy as np
import pytest

from jaxfault import engine
from jaxfault.cli import run_main
from jaxfault.core.errors import JaxfaultError
from jaxfault.experiment import ExperimentConfig, fault_model_fields, read_rows, run
from jaxfault.core.keys import root_key, stream, trial_keys


@pytest.mark.parametrize("bad, match", [
    ({"trails": 3}, "unknown experiment setting 'trails'.*trials"),
    ({"fault_model": "hbmm"}, "unknown fault model 'hbmm'"),
    ({"fault_model": "activation", "fault": {"moduls": ["x"]}}, "has no field 'moduls'.*modules"),
    ({"fault_model": "hbm", "fault": {"scheme": "sparow"}}, "sparow"),
    ({"rates": [1e-3, float("nan")]}, "finite numbers >= 0"),
    ({"rates": [1e-3, 1e-3]}, "twice"),
    ({"trials": 10**10}, "trials must be an integer in"),
    ({"seed": 2**64}, "seed must be an integer in"),
    ({"task": "regression"}, "unknown task 'regression'"),
    ({"strategy": "fast"}, "unknown batching strategy"),
])
def test_config_is_validated_once_with_one_line_errors(bad, match):
    with pytest.raises(JaxfaultError, match=match) as e:
        ExperimentConfig.from_dict(bad)
    assert "\n" not in str(e.value) and "--" not in str(e.value)   # library errors name no CLI flag


def test_fault_model_fields_come_from_the_dataclass():
    assert "modules" in fault_model_fields("activation") and "scheme" in fault_model_fields("hbm")
    assert "rate_bound" not in fault_model_fields("activation")


def test_run_writes_one_row_schema_equal_to_the_engine(lenet_checkpoint, tmp_path):
    cfg = ExperimentConfig.from_dict({"fault_model": "activation", "fault": {"modules": ["Dense_*"]},
                                      "rates": [0.0, 1e-3], "trials": 3, "checkpoint": str(lenet_checkpoint),
                                      "limit": 200, "batch_size": 100})
    report = run(cfg, tmp_path / "r", log=lambda s: None)
    rows = read_rows(tmp_path / "r")
    assert [r["rate"] for r in rows] == [0.0, 1e-3] and rows[0]["ber"] == 0.0 and rows[0]["trials"] == 3
    assert report["primary"] == "top1" and set(rows[1]) >= {"fault_model", "fault", "rate_name", "top1",
                                                            "activation_faults"}
    assert rows[0]["top1"]["mean"] == pytest.approx(report["clean"]["top1"])          # rate 0 is clean
    # the same numbers as the engine called directly with the documented keys
    from jaxfault.faults.activations import activation_bit_flips
    from jaxfault.training.zoo import load_classifier_and_data

    _, model, variables, x, y, _ = load_classifier_and_data(str(lenet_checkpoint), 200, log=lambda s: None)
    keys = trial_keys(stream(root_key(0), "experiment"), 3)
    direct = engine.evaluate(model, variables, x, y, activation_bit_flips(modules=("Dense_*",)), [0.0, 1e-3], keys,
                             batch_size=100, topk=(1, 5))
    assert rows[1]["top1"]["values"] == [float(v) for v in direct.metrics["top1"][1]]
    # a second run refuses to replace the report unless asked, before any work
    with pytest.raises(JaxfaultError, match="already exists"):
        run(cfg, tmp_path / "r", log=lambda s: None)


def test_read_rows_refuses_other_files(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(JaxfaultError, match="not a jaxfault.rows/1 report"):
        read_rows(tmp_path / "x.json")
    (tmp_path / "y.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(JaxfaultError, match="not a readable JSON report"):
        read_rows(tmp_path / "y.json")


def _cli(argv, capsys):
    import eval.run as mod

    with pytest.raises(SystemExit) as e:
        run_main(mod.main, argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_cli_runs_any_registered_fault_model_and_refuses_bad_input_first(lenet_checkpoint, tmp_path, capsys):
    code, out, err = _cli(["--fault-model", "bitflip", "--rates", "1e-4", "--trials", "2", "--limit", "100",
                           "--checkpoint", str(lenet_checkpoint), "--out", str(tmp_path / "b"), "--no-compile-cache"],
                          capsys)
    assert code == 0 and "top1" in out and (tmp_path / "b" / "results.json").is_file()
    for argv, match in ([["--fault-model", "activation", "--set", "modulez=1"], "has no field 'modulez'"],
                        [["--set", "noequals"], "FIELD=VALUE"],
                        [["--rates", "1e-3,abc"], "'abc' is not a number"],
                        [["--out", "/proc/nope/x"], "cannot"]):
        code, out, err = _cli(argv + ["--trials", "1", "--no-compile-cache"], capsys)
        assert code == 2 and err.startswith("error:") and err.count("\n") == 1 and match in err, err


def test_cli_module_is_short():
    import eval.run as mod
    from pathlib import Path

    assert len(Path(mod.__file__).read_text().splitlines()) <= 60
