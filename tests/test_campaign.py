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
from jaxfault.core.errors import JaxfaultError

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


def test_point_equals_engine_evaluate_and_bitflip_rate(lenet_checkpoint):
    """A campaign point's trials are the engine's evaluation with the point's keys."""
    from jaxfault import engine
    from jaxfault.campaign.methods import build_point
    from jaxfault.core.keys import trial_keys

    config = cp.validate_config({"checkpoint": str(lenet_checkpoint), "eval_examples": 300, "trials": 3,
                                 "grid": [{"method": "bitflip", "ber": 3e-5}]})
    data, _ = cp.load_eval_data(config, log=lambda s: None)
    point = cp.expand_grid(config["grid"])[0]
    campaign = cp.Campaign(points=[point], trials=3, seed=0)
    records, compiled = cp.run_campaign(campaign, data)
    fm, rate, _ = build_point(point.params, 3e-5)
    ref = engine.evaluate(data.model, data.variables, data.images, data.labels, fm, [rate],
                          trial_keys(point.key(0), 3), strategy="loop")
    np.testing.assert_allclose(records[0]["accuracy"], ref.accuracy[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(records[0]["fault_rate"], ref.stats["realised_ber"][0], rtol=1e-6)
    assert compiled == 1
    assert float(np.mean(records[0]["fault_rate"])) == pytest.approx(3e-5, rel=0.5)


SHARD_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from jaxfault import campaign as cp
    config = cp.validate_config({"checkpoint": sys.argv[1], "eval_examples": 200, "trials": 16,
                                 "grid": [{"method": "bitflip", "ber": 1e-4}]})
    data, _ = cp.load_eval_data(config, log=lambda s: None)
    campaign = cp.Campaign(points=cp.expand_grid(config["grid"]), trials=16, seed=7)
    records, _ = cp.run_campaign(campaign, data, mesh=cp.trial_mesh())
    print(json.dumps({"devices": jax.device_count(), "record_devices": records[0]["devices"],
                      "accuracy": records[0]["accuracy"], "fault_rate": records[0]["fault_rate"]}))
""")


def _run_script(script, args, n_devices):
    # simulated host devices exist on the CPU backend only: select it explicitly (also on a GPU machine)
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices}")
    res = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_eight_simulated_devices_equal_one(lenet_checkpoint):
    eight = _run_script(SHARD_SCRIPT, [str(lenet_checkpoint)], 8)
    one = _run_script(SHARD_SCRIPT, [str(lenet_checkpoint)], 1)
    assert eight["devices"] == 8 and eight["record_devices"] == 8
    assert one["devices"] == 1
    np.testing.assert_allclose(eight["fault_rate"], one["fault_rate"], rtol=0, atol=0)
    np.testing.assert_allclose(eight["accuracy"], one["accuracy"], rtol=0, atol=1e-6)


def _config(tmp_path, ckpt, name, bers=(1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4)):
    cfg = {"out": str(tmp_path / name), "checkpoint": str(ckpt), "trials": 4,
           "eval_examples": 200, "grid": [{"method": "bitflip", "ber": list(bers)}]}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path, Path(cfg["out"]) / "results.jsonl"


def _strip(records):
    return [{k: v for k, v in r.items() if k not in ("seconds",)} for r in records]


@pytest.mark.slow
def test_killed_campaign_resumes_to_identical_results(tmp_path, lenet_checkpoint):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    full_cfg, full_out = _config(tmp_path, lenet_checkpoint, "full")
    subprocess.run([sys.executable, "-m", "eval.campaign", str(full_cfg)], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=300)
    cfg, out = _config(tmp_path, lenet_checkpoint, "killed")
    proc = subprocess.Popen([sys.executable, "-m", "eval.campaign", str(cfg)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = out.read_bytes().count(b"\n") - 1          # the first line is the file's header
    assert 2 <= n_before < 6, "the kill must land part-way through the grid"
    with open(out, "ab") as f:  # and simulate a torn write on top of the kill
        f.write(b'{"id": "torn"')
    subprocess.run([sys.executable, "-m", "eval.campaign", str(cfg)], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=300)
    resumed = [json.loads(line) for line in out.read_text().splitlines()[1:]]
    full = [json.loads(line) for line in full_out.read_text().splitlines()[1:]]
    assert len(resumed) == 6 and len({r["id"] for r in resumed}) == 6
    key = lambda r: r["id"]  # noqa: E731
    assert _strip(sorted(resumed, key=key)) == _strip(sorted(full, key=key))


@pytest.mark.parametrize("cfg,needle", [
    ({"grid": [{"method": "warp"}]}, "unknown fault model 'warp'"),
    ({"grid": []}, "grid is empty"),
    ({"grid": [{"method": "bitflip", "ber": [1e-3, 1.5]}]}, "ber must be in [0, 1], got 1.5"),
    ({"grid": [{"method": "bitflip", "ber": 1e-3}], "out": "/proc/nope/r"}, "/proc/nope"),
    ({"grid": [{"method": "bitflip", "ber": 1e-3}], "trials": 0}, "trials must be a positive integer"),
    ({"grid": [{"method": "bitflip", "ber": 1e-3}], "trials": True}, "trials must be a positive integer, got true"),
    ({"grid": [{"method": "bitflip", "ber": 1e-3}], "seed": "zero"}, 'seed must be a non-negative integer, got "zero"'),
    ({"grid": [{"method": "bitflip", "ber": 1e-3}], "out": 123}, "out must be a folder path string, got 123"),
    ({"grid": [{"method": "bitflip", "ber": 1e-3}], "output": "r.jsonl"}, 'the field "output" (a results file) is now "out", a folder'),
    ({"grid": [{"method": "bitflip", "ber": 1e-3}], "checkpoint": 5}, "checkpoint must be a string path or null, got 5"),
    ({"grid": [{"method": "bitflip", "ber": 1e-3}], "data_dir": 7}, "data_dir must be a string path or null, got 7"),
    ({"grid": [{"method": "bitflip", "ber": 1e-3}], "seeed": 1}, "unknown campaign config key 'seeed' (did you mean 'seed'?)"),
    ({"grid": [{"method": "sparrow", "ber": 1e-3, "shceme": "none"}]}, "unknown field 'shceme' for method 'sparrow' (did you mean 'scheme'?)"),
    ({"grid": [{"method": "neuralfuse", "ber": 0.01, "bits": 3}]}, "got 3"),
    ({"grid": [{"method": "swim", "dev_var": -0.1}]}, "dev_var must be a finite number >= 0, got -0.1"),
    ({"grid": [{"method": "swim", "dev_var": float("inf")}]}, "dev_var must be a finite number >= 0, got inf"),
    ({"grid": [{"method": "sparrow", "ber": 1e-3, "scheme": "hamming"}]}, "unknown ECC scheme 'hamming'"),
])
def test_bad_configs_exit_2_before_work(tmp_path, capsys, cfg, needle):
    """Every bad value is one line and exit 2, before any model is loaded or file touched."""
    import eval.campaign as mod
    from jaxfault.cli import run_main

    cfg = dict({"out": str(tmp_path / "r")}, **cfg)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(SystemExit) as e:
        run_main(mod.main, [str(path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and needle in err and err.count("\n") == 1


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path, lenet_checkpoint):
    """2 CPU processes x 4 simulated devices, coordinated on 127.0.0.1 by jax.distributed, write
    (from process 0 only) the same results file as one process with 8 devices, timings aside."""
    grid = [{"method": "bitflip", "ber": [1e-5, 1e-4]}, {"method": "sparrow", "scheme": "none", "ber": 1e-3}]

    def cfg(name):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"out": str(tmp_path / name), "checkpoint": str(lenet_checkpoint),
                                    "trials": 6, "eval_examples": 100, "grid": grid}))
        return path

    def env(n):
        return dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
                    XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")

    single = subprocess.run([sys.executable, "-m", "eval.campaign", str(cfg("single"))], cwd=ROOT, env=env(8),
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    port = _free_port()
    multi = cfg("multi")
    procs = [subprocess.Popen([sys.executable, "-m", "eval.campaign", str(multi), "--coordinator", f"127.0.0.1:{port}",
                               "--num-processes", "2", "--process-id", str(i)], cwd=ROOT, env=env(4),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    assert "2 process(es)" in outs[0][0]
    assert "campaign:" not in outs[1][0] and "done in" not in outs[1][0]   # only process 0 reports
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    a = [json.loads(line) for line in (tmp_path / "single" / "results.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (tmp_path / "multi" / "results.jsonl").read_text().splitlines()]
    assert a[0] == b[0]                                                # same identity header
    assert [strip(r) for r in a[1:]] == [strip(r) for r in b[1:]] and len(b) == 4
    assert all(r["devices"] == 8 for r in b[1:])


def _run_cli(argv):
    import eval.campaign as mod
    from jaxfault.cli import run_main

    with pytest.raises(SystemExit) as e:
        run_main(mod.main, argv)
    return e.value.code


def test_results_file_safety(tmp_path, lenet_checkpoint, capsys):
    """Issue gaps: a file that is not a results file is never touched (--dry-run included), dry runs
    create nothing, a corrupt middle row is an error naming its line, and rows computed under
    another seed or trial count are refused, not reused."""
    cfg_path, out = _config(tmp_path, lenet_checkpoint, "safe", bers=(1e-5, 1e-4))
    readme = (ROOT / "README.md").read_bytes()
    foreign = tmp_path / "foreign" / "results.jsonl"
    foreign.parent.mkdir()
    foreign.write_bytes(readme)
    for extra in (["--dry-run"], []):
        assert _run_cli([str(cfg_path), "--out", str(foreign.parent), *extra]) == 2
        assert "not a jaxfault results file" in capsys.readouterr().err
        assert foreign.read_bytes() == readme
    assert _run_cli([str(cfg_path), "--dry-run"]) == 0 and not out.exists()      # a dry run writes nothing
    assert _run_cli([str(cfg_path)]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 3
    # another trial count (or seed) is another identity: refused with what differs
    assert _run_cli([str(cfg_path), "--trials", "2"]) == 2
    err = capsys.readouterr().err
    assert "trials: file has 4, this run has 2" in err and err.count("\n") == 1
    # a corrupt middle row: an error naming the line, and nothing after it is dropped
    lines[1] = lines[1][:20] + "#" + lines[1][21:]
    out.write_text("\n".join(lines) + "\n")
    assert _run_cli([str(cfg_path)]) == 2
    assert "line 2" in capsys.readouterr().err
    assert out.read_text().splitlines() == lines


def test_ci_width_stops_each_point_and_a_killed_run_resumes_to_the_same_rows(tmp_path, lenet_checkpoint,
                                                                             monkeypatch):
    """Trials until a target width: every point runs chunks of `trials` until its accuracy's
    interval half-width is <= ci_width or max_trials ran, records both, and a run killed after
    its first point resumes to exactly the rows of an uninterrupted run."""
    import eval.campaign as mod
    from jaxfault.campaign import runner
    from jaxfault.core.stats import mean_ci

    bers = (1e-5, 1e-1)
    # a cap that is no multiple of the chunk: the last chunk (2 trials) is padded to the compiled shape
    width = ["--ci-width", "0.15", "--max-trials", "18"]
    full_cfg, full_out = _config(tmp_path, lenet_checkpoint, "wfull", bers=bers)
    assert _run_cli([str(full_cfg), *width]) == 0
    full = [json.loads(line) for line in full_out.read_text().splitlines()[1:]]
    for r in full:
        lo, hi = mean_ci(r["accuracy"], horizon=18)
        assert r["trials"] == len(r["accuracy"]) and r["trials"] in (4, 8, 12, 16, 18)
        assert (r["accuracy_ci_lo"], r["accuracy_ci_hi"]) == (pytest.approx(lo), pytest.approx(hi))
        assert r["stop"] == ("width" if (hi - lo) / 2 <= 0.15 else "max_trials")
        assert r["stop"] == "width" or r["trials"] == 18
        # a point stops at the first chunk that reaches the width
        for n in range(4, r["trials"], 4):
            lo_n, hi_n = mean_ci(r["accuracy"][:n], horizon=18)
            assert (hi_n - lo_n) / 2 > 0.15
    print("ci_width rows:", [(r["config"]["ber"], r["trials"], r["stop"]) for r in full])

    cfg, out = _config(tmp_path, lenet_checkpoint, "wkilled", bers=bers)
    real, calls = runner.run_point, []

    def killed_after_one(point, cache):
        calls.append(point.point_id)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(point, cache)

    monkeypatch.setattr(runner, "run_point", killed_after_one)
    with pytest.raises(RuntimeError, match="killed"):
        mod.main([str(cfg), *width])
    monkeypatch.setattr(runner, "run_point", real)
    assert out.read_bytes().count(b"\n") == 2          # header + the first point
    assert _run_cli([str(cfg), *width]) == 0
    resumed = [json.loads(line) for line in out.read_text().splitlines()[1:]]
    key = lambda r: r["id"]  # noqa: E731
    assert _strip(sorted(resumed, key=key)) == _strip(sorted(full, key=key))
