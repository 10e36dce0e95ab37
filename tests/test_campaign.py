"""Campaign runner: grids, sharding over simulated devices, resume after a kill, bad configs."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxfault import campaign as cp
from jaxfault.errors import JaxfaultError

ROOT = Path(__file__).resolve().parents[1]


def test_expand_grid_and_stable_keys():
    pts = cp.expand_grid([{"method": "bitflip", "ber": [1e-4, 1e-3], "x": 1},
                          {"method": "sparrow", "scheme": ["sparrow", "none"], "ber": 1e-3}])
    assert [p.params for p in pts][:2] == [{"ber": 1e-4, "method": "bitflip", "x": 1},
                                           {"ber": 1e-3, "method": "bitflip", "x": 1}]
    assert len(pts) == 4 and len({p.point_id for p in pts}) == 4
    again = cp.expand_grid([{"method": "sparrow", "ber": 1e-3, "scheme": ["none"]}])
    assert again[0].point_id == pts[3].point_id  # key depends on the point, not its position
    assert np.array_equal(jax.random.key_data(again[0].key(0)), jax.random.key_data(pts[3].key(0)))
    assert not np.array_equal(jax.random.key_data(pts[3].key(0)), jax.random.key_data(pts[3].key(1)))
    with pytest.raises(JaxfaultError, match="empty"):
        cp.expand_grid([])
    with pytest.raises(JaxfaultError, match="empty list"):
        cp.expand_grid([{"method": "bitflip", "ber": []}])
    with pytest.raises(JaxfaultError, match="repeats"):
        cp.expand_grid([{"method": "bitflip", "ber": [1e-3, 1e-3]}])


def test_torn_last_line_is_cut_and_redone(tmp_path):
    path = tmp_path / "r.jsonl"
    cp.append_record(path, {"point_id": "a", "v": 1})
    cp.append_record(path, {"point_id": "b", "v": 2})
    with open(path, "ab") as f:
        f.write(b'{"point_id": "c", "v"')  # a kill in the middle of a write
    done = cp.read_results(path)
    assert set(done) == {"a", "b"}
    assert path.read_bytes().endswith(b"\n") and path.read_bytes().count(b"\n") == 2


def test_run_trials_equals_loop_and_pads(lenet_checkpoint, small_dataset):
    from eval.campaign import build_context
    from jaxfault.campaign_methods import make_trial_fn

    ctx = build_context({"checkpoint": str(lenet_checkpoint), "eval_examples": 300}, log=lambda s: None)
    spec = make_trial_fn(ctx, {"method": "bitflip", "ber": 3e-5})
    keys = jax.random.split(jax.random.key(3), 3)
    out = cp.run_trials(spec, keys, cp.trial_mesh())
    loop = [jax.jit(spec.fn)(k, spec.args) for k in keys]
    np.testing.assert_allclose(out["accuracy"], [float(o["accuracy"]) for o in loop], rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["fault_rate"], [float(o["fault_rate"]) for o in loop], rtol=1e-6)
    assert float(np.mean(out["fault_rate"])) == pytest.approx(3e-5, rel=0.5)


SHARD_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from eval.campaign import build_context
    from jaxfault import campaign as cp
    from jaxfault.campaign_methods import make_trial_fn
    ctx = build_context({"checkpoint": sys.argv[1], "eval_examples": 200}, log=lambda s: None)
    spec = make_trial_fn(ctx, {"method": "bitflip", "ber": 1e-4})
    keys = jax.random.split(jax.random.key(7), 16)
    out = cp.run_trials(spec, keys, cp.trial_mesh())
    print(json.dumps({"devices": jax.device_count(),
                      "sharding_devices": len(out["accuracy"].sharding.device_set),
                      "spec": str(out["accuracy"].sharding.spec),
                      "accuracy": np.asarray(out["accuracy"]).tolist(),
                      "fault_rate": np.asarray(out["fault_rate"]).tolist()}))
""")


def _run_script(script, args, n_devices):
    env = dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices}")
    res = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_eight_simulated_devices_equal_one(lenet_checkpoint):
    eight = _run_script(SHARD_SCRIPT, [str(lenet_checkpoint)], 8)
    one = _run_script(SHARD_SCRIPT, [str(lenet_checkpoint)], 1)
    assert eight["devices"] == 8 and eight["sharding_devices"] == 8 and "trials" in eight["spec"]
    assert one["devices"] == 1
    np.testing.assert_allclose(eight["fault_rate"], one["fault_rate"], rtol=0, atol=0)
    np.testing.assert_allclose(eight["accuracy"], one["accuracy"], rtol=0, atol=1e-6)


def _config(tmp_path, ckpt, name, bers=(1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4)):
    cfg = {"output": str(tmp_path / f"{name}.jsonl"), "checkpoint": str(ckpt), "trials": 4,
           "eval_examples": 200, "grid": [{"method": "bitflip", "ber": list(bers)}]}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path, Path(cfg["output"])


def _strip(records):
    return [{k: v for k, v in r.items() if k not in ("seconds",)} for r in records]


def test_killed_campaign_resumes_to_identical_results(tmp_path, lenet_checkpoint):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    full_cfg, full_out = _config(tmp_path, lenet_checkpoint, "full")
    subprocess.run([sys.executable, "-m", "eval.campaign", str(full_cfg)], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=300)
    cfg, out = _config(tmp_path, lenet_checkpoint, "killed")
    proc = subprocess.Popen([sys.executable, "-m", "eval.campaign", str(cfg)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = out.read_bytes().count(b"\n")
    assert 2 <= n_before < 6, "the kill must land part-way through the grid"
    with open(out, "ab") as f:  # and simulate a torn write on top of the kill
        f.write(b'{"point_id": "torn"')
    subprocess.run([sys.executable, "-m", "eval.campaign", str(cfg)], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=300)
    resumed = [json.loads(line) for line in out.read_text().splitlines()]
    full = [json.loads(line) for line in full_out.read_text().splitlines()]
    assert len(resumed) == 6 and len({r["point_id"] for r in resumed}) == 6
    key = lambda r: r["point_id"]  # noqa: E731
    assert _strip(sorted(resumed, key=key)) == _strip(sorted(full, key=key))


@pytest.mark.parametrize("cfg,needle", [
    ({"grid": [{"method": "warp"}]}, "unknown campaign method 'warp'"),
    ({"grid": []}, "grid is empty"),
    ({"grid": [{"method": "bitflip", "ber": [1e-3, 1.5]}]}, "ber must be in [0, 1], got 1.5"),
    ({"grid": [{"method": "bitflip", "ber": 1e-3}], "output": "/proc/nope/r.jsonl"}, "cannot write results file"),
    ({"grid": [{"method": "bitflip", "ber": 1e-3}], "trials": 0}, "trials must be a positive integer"),
    ({"grid": [{"method": "neuralfuse", "ber": 0.01, "bits": 3}]}, "precision bits must be 4, 8 or 16, got 3"),
    ({"grid": [{"method": "swim", "dev_var": -0.1}]}, "dev_var must be a non-negative number, got -0.1"),
    ({"grid": [{"method": "sparrow", "ber": 1e-3, "scheme": "hamming"}]}, "unknown ECC scheme 'hamming'"),
])
def test_bad_configs_exit_2_before_work(tmp_path, capsys, cfg, needle):
    import eval.campaign as mod
    from jaxfault.cli import run_main

    cfg = dict({"output": str(tmp_path / "r.jsonl")}, **cfg)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(SystemExit) as e:
        run_main(mod.main, [str(path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and needle in err and err.count("\n") == 1


@pytest.mark.slow  # ~70 s of compilations (one per method and selection); run with -m slow
def test_neuralfuse_and_swim_points_match_the_libraries(qat_lenet_checkpoint):
    from eval.campaign import build_context
    from jaxfault.campaign_methods import make_trial_fn
    from jaxfault.neuralfuse.faults import perturb_params
    from jaxfault.swim.variation import apply_variation

    ctx = build_context({"checkpoint": str(qat_lenet_checkpoint), "eval_examples": 200}, log=lambda s: None)
    key = jax.random.key(11)
    spec = make_trial_fn(ctx, {"method": "neuralfuse", "ber": 0.02})
    out = jax.jit(spec.fn)(key, spec.args)
    direct = perturb_params(ctx.variables["params"], key, 0.02, 0.5, 8, "independent", straight_through=False)
    acc = ctx.accuracy_fn(dict(ctx.variables, params=direct), ctx.images, ctx.labels)["top1"]
    assert float(out["accuracy"]) == pytest.approx(float(acc), abs=1e-6)
    n_cells = 8 * 61470
    assert abs(float(out["fault_rate"]) - 0.02) < 5 * np.sqrt(0.02 * 0.98 / n_cells)  # 5-sigma binomial
    rates = {}
    for sel in ("none", "magnitude", "all"):
        spec = make_trial_fn(ctx, {"method": "swim", "dev_var": 0.3, "mask_p": 0.05, "selection": sel})
        rates[sel] = float(cp.run_trials(spec, jax.random.split(key, 2), cp.trial_mesh())["fault_rate"][0])
    assert rates == pytest.approx({"none": 1.0, "magnitude": 0.95, "all": 0.0}, abs=1e-4)
    spec = make_trial_fn(ctx, {"method": "swim", "dev_var": 0.3, "selection": "none"})
    noisy = apply_variation(ctx.variables["params"], None, key, 0.3, 0.03)
    acc = ctx.accuracy_fn(dict(ctx.variables, params=noisy), ctx.images, ctx.labels)["top1"]
    assert float(jax.jit(spec.fn)(key, spec.args)["accuracy"]) == pytest.approx(float(acc), abs=1e-6)
