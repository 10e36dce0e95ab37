"""Checkpoint integrity and atomic replacement: orbax-checkpoint writes the arrays; flipped bytes,
truncation and deleted files are one-line errors naming the arrays; a save killed at any instant
leaves the previous checkpoint loadable; format-2 (.npy) and format-1 (orbax tree without
checksums) checkpoints still load, and damaged ones print one line."""
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from jaxfault.training.checkpoints import (META_FILE, checkpoint_digest, load_checkpoint, read_metadata,
                                  save_checkpoint)
from jaxfault.cli import run_main
from jaxfault.core.errors import JaxfaultError

REPO = Path(__file__).resolve().parents[1]


def _largest_array_file(ckpt: Path) -> Path:
    return max((f for f in ckpt.glob("orbax-*/**/*") if f.is_file() and "/d/" in str(f)),
               key=lambda f: f.stat().st_size)


def _write_format2(d: Path, variables: dict, config: dict) -> None:
    """A format-2 checkpoint as earlier versions wrote it: one .npy per array, SHA-256 of its bytes."""
    d.mkdir(parents=True)
    (d / "arrays-old").mkdir()
    (d / "arrays-old" / ".jaxfault-arrays").write_bytes(b"")   # the marker format-2 saves wrote
    entries = []
    leaves = [(("params", k), v) for k, v in sorted(variables["params"].items())]
    for i, (path, arr) in enumerate(leaves):
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        (d / "arrays-old" / f"{i:05d}.npy").write_bytes(buf.getvalue())
        entries.append({"path": list(path), "file": f"arrays-old/{i:05d}.npy", "dtype": arr.dtype.str,
                        "shape": list(arr.shape), "sha256": hashlib.sha256(buf.getvalue()).hexdigest()})
    (d / META_FILE).write_text(json.dumps({"format": 2, "kind": config["kind"], "config": config, "metrics": {},
                                           "arrays_dir": "arrays-old", "arrays": entries, "empty_dicts": []}))


def test_format2_checkpoints_load_and_damaged_ones_are_one_line_errors(tmp_path):
    w = {"w": np.arange(6, dtype=np.float32), "v": np.ones((2, 3), np.float32)}
    d = tmp_path / "f2"
    _write_format2(d, {"params": w}, {"kind": "k"})
    ck = load_checkpoint(d, kind="k")
    assert all(np.array_equal(ck.variables["params"][k], w[k]) for k in w)
    f = d / "arrays-old" / "00000.npy"
    data = bytearray(f.read_bytes())
    data[-4] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(JaxfaultError, match="damaged") as e:
        load_checkpoint(d, kind="k")
    assert str(f) in str(e.value)
    # saving over it writes format 3 and removes the old .npy folder
    save_checkpoint(d, {"params": w}, {"kind": "k"})
    assert read_metadata(d)["format"] == 3 and not (d / "arrays-old").exists()


def _accuracy_cli(ckpt, capsys):
    import eval.accuracy as mod

    with pytest.raises(SystemExit) as e:
        run_main(mod.main, ["--checkpoint", str(ckpt)])
    err = capsys.readouterr().err
    return e.value.code, err


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_array_file_is_one_line_error_naming_it(lenet_checkpoint, tmp_path, damage, capsys):
    ckpt = tmp_path / "c"
    shutil.copytree(lenet_checkpoint, ckpt)
    victim = _largest_array_file(ckpt)
    data = bytearray(victim.read_bytes())
    if damage == "flip":  # 8 bytes in the middle of the data, as in the reproduction
        mid = len(data) // 2
        data[mid:mid + 8] = bytes(b ^ 0xFF for b in data[mid:mid + 8])
        victim.write_bytes(bytes(data))
    elif damage == "truncate":
        victim.write_bytes(bytes(data[: len(data) // 3]))
    else:
        victim.unlink()
    # orbax itself refuses truncated and missing data; flipped bytes it may decode into other
    # numbers, which the recorded SHA-256 catches
    with pytest.raises(JaxfaultError, match="damaged|cannot be read") as e:
        load_checkpoint(ckpt)
    arrays = victim.relative_to(ckpt).parts[0]
    assert str(ckpt / arrays) in str(e.value)
    code, err = _accuracy_cli(ckpt, capsys)
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1 and str(ckpt / arrays) in err


def test_checksums_recorded_and_digest_tracks_contents(lenet_checkpoint, tmp_path):
    meta = read_metadata(lenet_checkpoint)
    assert meta["format"] == 3 and all(len(e["sha256"]) == 64 for e in meta["arrays"])
    assert (lenet_checkpoint / meta["arrays_dir"] / "_CHECKPOINT_METADATA").is_file()   # written by orbax
    a = load_checkpoint(lenet_checkpoint)
    save_checkpoint(tmp_path / "same", a.variables, a.config, a.metrics)
    assert checkpoint_digest(tmp_path / "same") == checkpoint_digest(lenet_checkpoint)
    changed = dict(a.variables, params={**a.variables["params"]})
    first = sorted(changed["params"])[0]
    changed["params"][first] = {k: v + 1 for k, v in changed["params"][first].items()}
    save_checkpoint(tmp_path / "other", changed, a.config, a.metrics)
    assert checkpoint_digest(tmp_path / "other") != checkpoint_digest(lenet_checkpoint)


def test_replacement_keeps_foreign_files_and_cleans_its_own(tmp_path):
    d = tmp_path / "ck"
    save_checkpoint(d, {"params": {"w": np.zeros(3, np.float32)}}, {"kind": "k"})
    (d / "notes.txt").write_text("mine")
    (d / "variables").mkdir()
    (d / "variables" / "user.bin").write_bytes(b"x")  # not a format-1 checkpoint's folder: kept
    save_checkpoint(d, {"params": {"w": np.ones(3, np.float32)}, "batch_stats": {}}, {"kind": "k"})
    ck = load_checkpoint(d, kind="k")
    assert np.array_equal(ck.variables["params"]["w"], np.ones(3)) and ck.variables["batch_stats"] == {}
    assert sorted(p.name for p in d.iterdir() if not p.name.startswith("orbax-")) == \
        ["jaxfault.json", "notes.txt", "variables"]
    assert len(list(d.glob("orbax-*"))) == 1 and (d / "variables" / "user.bin").exists()


def test_save_interrupted_before_the_metadata_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    import jaxfault.training.checkpoints as C

    d = tmp_path / "ck"
    save_checkpoint(d, {"params": {"w": np.zeros(3, np.float32)}}, {"kind": "k", "n": 1})

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(C, "atomic_write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(d, {"params": {"w": np.ones(3, np.float32)}}, {"kind": "k", "n": 2})
    monkeypatch.undo()
    ck = load_checkpoint(d, kind="k")
    assert ck.config["n"] == 1 and np.array_equal(ck.variables["params"]["w"], np.zeros(3))
    assert len(list(d.glob("orbax-*"))) == 2  # the orphan of the killed save ...
    save_checkpoint(d, {"params": {"w": np.ones(3, np.float32)}}, {"kind": "k", "n": 3})
    assert len(list(d.glob("orbax-*"))) == 1  # ... is removed by the next complete save


def test_files_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        d = save_checkpoint(tmp_path / "ck", {"params": {"w": np.zeros(3, np.float32)}}, {"kind": "k"})
    finally:
        os.umask(old)
    assert (d / META_FILE).stat().st_mode & 0o777 == 0o644
    assert all(f.stat().st_mode & 0o777 == 0o644 for f in d.glob("orbax-*/**/*") if f.is_file())


SAVER = textwrap.dedent("""
    import sys
    import numpy as np
    from jaxfault.training.checkpoints import save_checkpoint
    d = sys.argv[1]
    i = 0
    print("ready", flush=True)
    while True:
        i += 1
        save_checkpoint(d, {"params": {f"w{j}": np.full(20000, i, np.float32) for j in range(8)}},
                        {"kind": "k", "i": i})
        print("saved", flush=True)
""")


@pytest.mark.slow
def test_saves_killed_at_random_instants_leave_a_loadable_checkpoint(tmp_path):
    """A process saving over one checkpoint in a loop is SIGKILLed at random instants (after 0, 1 or
    2 completed saves, then a random fraction of a save's time, so the kills land at different
    points however fast the machine is); after every kill the checkpoint loads, and its arrays
    are those of the save its metadata names."""
    d = tmp_path / "ck"
    save_checkpoint(d, {"params": {f"w{j}": np.zeros(20000, np.float32) for j in range(8)}}, {"kind": "k", "i": 0})
    rng = np.random.default_rng(0)
    seen = set()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(d)], stdout=subprocess.PIPE, env=env, cwd=REPO)
        assert proc.stdout.readline().strip() == b"ready"
        for _ in range(int(rng.integers(0, 3))):
            assert proc.stdout.readline().strip() == b"saved"
        time.sleep(rng.uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        ck = load_checkpoint(d, kind="k")
        i = ck.config["i"]
        seen.add(i)
        assert all(np.array_equal(v, np.full(20000, i, np.float32)) for v in ck.variables["params"].values())
    assert len(seen) > 1  # the kills did land at different points of the save loop


LEGACY = textwrap.dedent("""
    import json, sys, pathlib, numpy as np, jax, orbax.checkpoint as ocp
    from jaxfault.models import create_model, init_variables
    m = create_model("lenet", 10, None)
    v = jax.tree_util.tree_map(np.asarray, init_variables(m, jax.random.key(0), (28, 28, 1)))
    d = pathlib.Path(sys.argv[1]).absolute(); d.mkdir()
    c = ocp.StandardCheckpointer(); c.save(d / "variables", v); c.wait_until_finished()
    (d / "jaxfault.json").write_text(json.dumps({"format": 1, "kind": "classifier", "config": {
        "kind": "classifier", "model": "lenet", "num_classes": 10, "quant_bits": None,
        "dataset": "fashion_mnist", "input_shape": [28, 28, 1]}, "metrics": {}}))
""")
LOAD = ("from jaxfault.training.checkpoints import load_checkpoint\nfrom jaxfault.cli import run_main\nimport sys\n"
        "run_main(lambda a: load_checkpoint(sys.argv[1]) and 0)")


@pytest.mark.slow
def test_format1_orbax_checkpoints_load_and_damaged_ones_print_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    legacy = tmp_path / "legacy"
    subprocess.run([sys.executable, "-c", LEGACY, str(legacy)], check=True, env=env, cwd=REPO)
    assert load_checkpoint(legacy).config["model"] == "lenet"
    victim = max((p for p in (legacy / "variables").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:1000])
    for _ in range(6):  # the trailing report came in about half of the runs before
        r = subprocess.run([sys.executable, "-c", LOAD, str(legacy)], capture_output=True, text=True, env=env,
                           cwd=REPO)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cannot be read" in r.stderr, r.stderr
    # replacing a format-1 checkpoint removes its orbax folder once the new one is in force
    save_checkpoint(legacy, {"params": {"w": np.zeros(2, np.float32)}}, {"kind": "other"})
    assert not (legacy / "variables").exists() and json.loads((legacy / META_FILE).read_text())["format"] == 3



def test_concurrent_saves_into_one_folder_leave_a_complete_checkpoint(tmp_path, monkeypatch):
    """Save B starts while save A has written its arrays but not yet its jaxfault.json (the worst
    instant: B's clean-up would remove A's arrays). Saves take turns, so the result is complete."""
    import threading

    import jaxfault.training.checkpoints as C

    d = tmp_path / "ck"
    save_checkpoint(d, {"params": {"w": np.zeros(4, np.float32)}}, {"kind": "k", "v": 0})
    real = C.atomic_write_json
    b_done = threading.Event()

    def b_save():
        save_checkpoint(d, {"params": {"w": np.full(4, 2, np.float32)}}, {"kind": "k", "v": 2})
        b_done.set()

    def a_json_after_b_started(*args, **kw):
        if threading.current_thread() is threading.main_thread() and not hasattr(b_save, "thread"):
            b_save.thread = threading.Thread(target=b_save)
            b_save.thread.start()
            b_done.wait(1.0)  # without turn-taking B finishes here, deleting A's arrays
        return real(*args, **kw)

    monkeypatch.setattr(C, "atomic_write_json", a_json_after_b_started)
    save_checkpoint(d, {"params": {"w": np.ones(4, np.float32)}}, {"kind": "k", "v": 1})
    b_save.thread.join(10)
    ck = load_checkpoint(d, kind="k")
    assert ck.config["v"] == 2 and np.all(ck.variables["params"]["w"] == 2)
    assert len(list(d.glob("orbax-*"))) == 1
