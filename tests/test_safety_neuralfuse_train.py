"""train.neuralfuse safety (issue 15): resume restores the running epoch metrics (gap 13), state saves
killed at random instants leave a state that --resume accepts, existing outputs are not replaced
without --overwrite, numeric flags give one-line errors."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import jaxfault.neuralfuse.train as nftrain
from jaxfault.training.checkpoints import read_metadata, save_checkpoint
from jaxfault.cli import run_main

REPO = Path(__file__).resolve().parents[1]
SETTINGS = dict(generator="ConvS", n_models=2, lam=1.0, train_subset=96, batch_size=16, epochs=2,
                save_every=2, log=lambda s: None)


@pytest.fixture
def one_compile(monkeypatch):
    """Every run in a test has the same settings, so the first compiled EOPM step serves them all."""
    real, built = nftrain.make_eopm_step, {}

    def shared(*a, **k):
        if "step" not in built:
            built["step"] = real(*a, **k)
        return built["step"]

    monkeypatch.setattr(nftrain, "make_eopm_step", shared)
    return built


def _interrupt_at(monkeypatch, built, n_calls):
    calls = {"n": 0}
    step = built["step"]

    def dying(*a):
        calls["n"] += 1
        if calls["n"] == n_calls:
            raise KeyboardInterrupt
        return step(*a)

    monkeypatch.setitem(built, "step", dying)
    return lambda: monkeypatch.setitem(built, "step", step)


@pytest.mark.slow
def test_resume_history_equals_an_uninterrupted_run(qat_lenet_checkpoint, tmp_path, one_compile, monkeypatch):
    """6 steps per epoch, 2 epochs; killed after step 9 (state saved at step 8, mid epoch 2): the resumed
    run's history equals the uninterrupted one's in every metric (not just the steps after the resume)."""
    full = nftrain.train_neuralfuse(qat_lenet_checkpoint, tmp_path / "full", **SETTINGS)
    restore = _interrupt_at(monkeypatch, one_compile, 10)
    with pytest.raises(KeyboardInterrupt):
        nftrain.train_neuralfuse(qat_lenet_checkpoint, tmp_path / "cut", **SETTINGS)
    restore()
    assert read_metadata(tmp_path / "cut" / "state")["config"]["global_step"] == 8
    resumed = nftrain.train_neuralfuse(qat_lenet_checkpoint, tmp_path / "cut", resume=True, **SETTINGS)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in full["history"]]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in resumed["history"]] == strip
    assert len(strip) == 2 and strip[1]["loss"] > 0


STATE_SAVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np
    import jaxfault.neuralfuse.train as t
    out = Path(sys.argv[1])
    state = {"params": {"w": np.zeros(50000, np.float32)}, "opt": {"mu": np.zeros(50000, np.float32)}}
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        state = {k: {n: v + 1 for n, v in d.items()} for k, d in state.items()}
        t._save_state(out, state, {"seed": 0, "ber": 0.01}, {"global_step": i, "history": []})
        print("saved", flush=True)
""")


@pytest.mark.slow
def test_state_saves_killed_at_random_instants_stay_resumable(tmp_path):
    """A process saving training state in a loop is SIGKILLed at random instants (after 0, 1 or 2
    completed saves, then a random fraction of a save's time, so the kills land at different points
    however fast the machine is); after every kill _load_state (what --resume runs) accepts the
    state, and its arrays belong to its step."""
    out = tmp_path / "state"
    template = {"params": {"w": np.zeros(50000, np.float32)}, "opt": {"mu": np.zeros(50000, np.float32)}}
    nftrain._save_state(out, template, {"seed": 0, "ber": 0.01}, {"global_step": 0, "history": []})
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    rng = np.random.default_rng(0)
    steps = set()
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", STATE_SAVER, str(out)], stdout=subprocess.PIPE, env=env,
                                cwd=REPO)
        assert proc.stdout.readline().strip() == b"ready"
        for _ in range(int(rng.integers(0, 3))):
            assert proc.stdout.readline().strip() == b"saved"
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        state, meta = nftrain._load_state(out, template, {"seed": 0, "ber": 0.01})
        step = meta["global_step"]
        steps.add(step)
        assert all(np.all(np.asarray(v) == step) for d in state.values() for v in d.values())
    assert len(steps) > 1


def _code(argv, capsys):
    from train.neuralfuse import main

    with pytest.raises(SystemExit) as e:
        run_main(main, argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.mark.parametrize("flag,value,match", [
    ("--ber", "-1e-3", "must be in [0, 1], got '-1e-3'"), ("--ber", "nan", "must be a finite number"),
    ("--ber0", "1.5", "must be in [0, 1]"), ("--lam", "inf", "must be a finite number"), ("--lam", "-1", "must be >= 0"),
    ("--lr", "0", "must be > 0"), ("--decay-rate", "nan", "must be a finite number"), ("--decay-every", "0", "must be >= 1"),
    ("--n-models", "0", "must be >= 1"), ("--epochs", "-2", "must be >= 1"), ("--batch-size", "0", "must be >= 1"),
    ("--train-subset", "0", "must be >= 1"), ("--save-every", "0", "must be >= 1"), ("--seed", "-1", "must be >= 0"),
    ("--bits", "x", "must be an integer")])
def test_numeric_flags_one_line(flag, value, match, capsys):
    code, out, err = _code([flag, value, "--checkpoint", "/nonexistent"], capsys)
    assert code == 2 and err.count("\n") == 1 and f"argument {flag}: {match}" in err


def test_existing_outputs_refused_without_overwrite_or_resume(tmp_path, capsys):
    out = tmp_path / "run"
    save_checkpoint(out / "state", {"leaves": {"00000": np.zeros(2, np.float32)}}, {"kind": "neuralfuse_train_state"})
    before = (out / "state" / "jaxfault.json").read_bytes()
    code, _, err = _code(["--checkpoint", "/nonexistent", "--out", str(out)], capsys)
    assert code == 2 and "--resume" in err and "--overwrite" in err and str(out / "state") in err
    assert (out / "state" / "jaxfault.json").read_bytes() == before
    afile = tmp_path / "afile"
    afile.write_text("x")
    for bad in (afile, afile / "sub"):
        code, _, err = _code(["--checkpoint", "/nonexistent", "--out", str(bad)], capsys)
        assert code == 2 and str(afile) in err and err.count("\n") == 1
    only_generator = tmp_path / "done"
    save_checkpoint(only_generator / "generator", {"params": {"w": np.zeros(2, np.float32)}},
                    {"kind": "neuralfuse_generator"})
    code, _, err = _code(["--checkpoint", "/nonexistent", "--out", str(only_generator), "--resume"], capsys)
    assert code == 2 and "generator" in err and "--overwrite" in err


def test_checkpoint_paths_checked_before_any_work(tmp_path, capsys):
    clf = save_checkpoint(tmp_path / "clf", {"params": {"w": np.zeros(2, np.float32)}}, {"kind": "classifier"})
    code, out, err = _code(["--checkpoint", str(clf), "--init-generator", str(tmp_path / "nogen"),
                            "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "nogen does not exist" in err and err.count("\n") == 1 and out == ""
    code, out, err = _code(["--checkpoint", str(clf), "--init-generator", str(clf), "--out", str(tmp_path / "o")],
                           capsys)
    assert code == 2 and "--init-generator" in err and "expected a 'neuralfuse_generator'" in err
