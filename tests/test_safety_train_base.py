"""train.base and the model cache (issue 15): outputs checked before training, no checkpoint replaced
without --overwrite, a save over an existing checkpoint killed at random instants never loses it,
numeric flags with one-line errors, stale cache temporaries removed."""
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxfault.training.checkpoints import load_checkpoint, read_metadata, save_checkpoint
from jaxfault.cli import run_main

REPO = Path(__file__).resolve().parents[1]


def _run(argv, capsys):
    import train.base as mod

    with pytest.raises(SystemExit) as e:
        run_main(mod.main, argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.mark.parametrize("flag,value,match", [
    ("--lr", "nan", "must be a finite number, got 'nan'"), ("--lr", "-1e-3", "must be > 0, got '-1e-3'"),
    ("--lr", "0", "must be > 0, got '0'"), ("--epochs", "0", "must be >= 1, got '0'"),
    ("--batch-size", "-1", "must be >= 1, got '-1'"), ("--seed", "-1", "must be >= 0, got '-1'"),
    ("--quant-bits", "x", "must be an integer, got 'x'")])
def test_numeric_flags_one_line(flag, value, match, capsys):
    code, out, err = _run([flag, value], capsys)
    assert code == 2 and err.count("\n") == 1 and f"argument {flag}: {match}" in err and out == ""


@pytest.mark.parametrize("value", ["-1e-3", "inf", "nan"])
def test_train_var_checked_before_any_work(value, capsys):
    code, out, err = _run(["--train-var", value], capsys)
    assert code == 2 and err.count("\n") == 1 and f"train_var must be a finite number >= 0, got {float(value)!r}" in err


def test_bad_names_and_quant_bits_before_any_work(tmp_path, capsys):
    code, out, err = _run(["--model", "lenett", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "did you mean 'lenet'" in err
    code, out, err = _run(["--qat", "--quant-bits", "5", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "precision" in err and out == ""


def test_output_paths_checked_before_training(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    for out, match in [(afile, "is a file, expected a directory"),
                       (afile / "x", "is a file, not a directory")]:
        code, stdout, err = _run(["--out", str(out)], capsys)
        assert code == 2 and match in err and err.count("\n") == 1 and "training" not in stdout
    assert afile.read_text() == "keep me"
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "other.txt").write_text("x")
    code, _, err = _run(["--out", str(busy)], capsys)
    assert code == 2 and "not a checkpoint" in err


def test_existing_checkpoint_refused_without_overwrite(tmp_path, capsys):
    ck = save_checkpoint(tmp_path / "ck", {"params": {"w": np.zeros(2, np.float32)}}, {"kind": "classifier"})
    before = (ck / "jaxfault.json").read_bytes()
    code, out, err = _run(["--out", str(ck)], capsys)
    assert code == 2 and "already holds a checkpoint (set --overwrite" in err and "training" not in out
    assert (ck / "jaxfault.json").read_bytes() == before


def _write_idx(directory: Path, ds):
    directory.mkdir(parents=True)

    def images(path, x):
        u8 = np.round((np.asarray(x)[..., 0] + 1) * 127.5).clip(0, 255).astype(np.uint8)
        path.write_bytes(struct.pack(">BBBB", 0, 0, 8, 3) + struct.pack(">III", *u8.shape) + u8.tobytes())

    def labels(path, y):
        y = np.asarray(y, np.uint8)
        path.write_bytes(struct.pack(">BBBB", 0, 0, 8, 1) + struct.pack(">I", len(y)) + y.tobytes())

    images(directory / "train-images-idx3-ubyte", ds.train_images[:512])
    labels(directory / "train-labels-idx1-ubyte", ds.train_labels[:512])
    images(directory / "t10k-images-idx3-ubyte", ds.test_images[:256])
    labels(directory / "t10k-labels-idx1-ubyte", ds.test_labels[:256])


@pytest.mark.slow
def test_train_base_killed_at_random_instants_over_a_checkpoint(tmp_path, small_dataset):
    """train.base --overwrite over an existing checkpoint, SIGKILLed at random instants around its
    save: after every kill the checkpoint loads (the old one or the new one), and nothing else in
    the folder is lost."""
    data = tmp_path / "data"
    _write_idx(data, small_dataset)
    out = tmp_path / "ck"
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "train.base", "--data-dir", str(data), "--epochs", "1", "--batch-size", "64",
           "--out", str(out)]
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, env=env, cwd=REPO, capture_output=True)
    full = time.monotonic() - t0
    (out / "notes.txt").write_text("mine")
    first = read_metadata(out)["arrays"]
    rng = np.random.default_rng(1)
    for i in range(4):
        proc = subprocess.Popen(cmd + ["--overwrite", "--seed", str(i + 1)], env=env, cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.6, 1.05) * full)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ck = load_checkpoint(out)
        assert ck.config["model"] == "lenet" and (out / "notes.txt").read_text() == "mine"
    assert read_metadata(out)["format"] == 2 and first  # still a complete, verified checkpoint


def test_stale_cache_temporaries_are_removed(tmp_path, monkeypatch):
    """A killed cache training leaves .NAME.xxxx folders; the next training of NAME removes them."""
    import jaxfault.training.zoo as zoo

    root = tmp_path / "cache"
    name = zoo.cache_entry_name("lenet")
    killer = ("import sys, time, jaxfault.training.zoo as z\n"
              "def slow(out, **k):\n"
              "    (out / 'partial.npy').write_bytes(b'x' * 100); print('training', flush=True); time.sleep(60)\n"
              "z.train_and_save = slow\n"
              "z.default_classifier('lenet', cache_dir_override=sys.argv[1], log=lambda s: None)\n")
    proc = subprocess.Popen([sys.executable, "-c", killer, str(root)], stdout=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO)
    assert proc.stdout.readline().strip() == b"training"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    stale = [p for p in root.glob(f".{name}.*") if p.is_dir()]
    assert len(stale) == 1 and (stale[0] / "partial.npy").exists()
    other = root / ".another-entry.abc"  # another entry's temporary: not ours to remove
    other.mkdir()

    def quick(out, **kw):
        save_checkpoint(out, {"params": {"w": np.zeros(2, np.float32)}}, {"kind": "classifier"})

    monkeypatch.setattr(zoo, "train_and_save", quick)
    path = zoo.default_classifier("lenet", cache_dir_override=root, log=lambda s: None)
    assert (path / "jaxfault.json").is_file() and other.is_dir()
    assert [p for p in root.glob(f".{name}.*") if p.is_dir()] == []
