"""Training, bit-identical checkpoint reload, and the base CLIs' error handling."""
import json
import shutil

import jax
import numpy as np
import pytest

from jaxfault.training.checkpoints import load_checkpoint, save_checkpoint
from jaxfault.core.errors import JaxfaultError
from jaxfault.training import evaluate


def test_tiny_training_learns(lenet_checkpoint, small_dataset):
    ckpt = load_checkpoint(lenet_checkpoint)
    acc = evaluate(ckpt.model, ckpt.variables, small_dataset.test_images, small_dataset.test_labels)["top1"]
    assert acc > 0.5  # 2 epochs on 2000 images: far above the 0.1 of chance
    assert acc == pytest.approx(ckpt.metrics["test_accuracy"], abs=1e-9)


def test_reload_is_bit_identical(lenet_checkpoint, tmp_path):
    a = load_checkpoint(lenet_checkpoint)
    save_checkpoint(tmp_path / "copy", a.variables, a.config, a.metrics)
    b = load_checkpoint(tmp_path / "copy")
    for x, y in zip(jax.tree_util.tree_leaves(a.variables), jax.tree_util.tree_leaves(b.variables)):
        assert x.dtype == y.dtype and np.array_equal(x, y)
    assert a.config == b.config


def test_accuracy_fn_handles_partial_batches_and_topk(lenet_checkpoint, small_dataset):
    ckpt = load_checkpoint(lenet_checkpoint)
    x, y = small_dataset.test_images[:333], small_dataset.test_labels[:333]
    big = evaluate(ckpt.model, ckpt.variables, x, y, batch_size=1000, topk=(1, 5))
    small = evaluate(ckpt.model, ckpt.variables, x, y, batch_size=100, topk=(1, 5))
    logits = np.asarray(ckpt.model.apply(ckpt.variables, x, train=False))
    assert big["top1"] == pytest.approx(np.mean(logits.argmax(-1) == y))
    top5 = np.argsort(-logits, axis=1)[:, :5]
    assert big["top5"] == pytest.approx(np.mean((top5 == y[:, None]).any(1)))
    assert big == small


def test_missing_wrong_kind_and_corrupt_checkpoints(lenet_checkpoint, tmp_path):
    with pytest.raises(JaxfaultError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(JaxfaultError, match="expected a 'neuralfuse_generator'"):
        load_checkpoint(lenet_checkpoint, kind="neuralfuse_generator")
    other = tmp_path / "other"
    shutil.copytree(lenet_checkpoint, other)
    meta = json.loads((other / "jaxfault.json").read_text())
    meta["config"]["model"] = "convnet"
    meta.pop("metadata_sha256")  # as in a checkpoint saved before the metadata digest (else: "edited")
    (other / "jaxfault.json").write_text(json.dumps(meta))
    with pytest.raises(JaxfaultError, match="does not match model 'convnet'"):
        load_checkpoint(other)
    (other / "jaxfault.json").write_text("{not json")
    with pytest.raises(JaxfaultError, match="corrupt"):
        load_checkpoint(other)
    broken = tmp_path / "broken"
    shutil.copytree(lenet_checkpoint, broken)
    for f in broken.glob("orbax-*"):
        shutil.rmtree(f)
    with pytest.raises(JaxfaultError, match="is missing"):
        load_checkpoint(broken)
    incomplete = tmp_path / "incomplete"
    shutil.copytree(lenet_checkpoint, incomplete)
    (incomplete / "jaxfault.json").unlink()
    with pytest.raises(JaxfaultError, match="not a complete jaxfault checkpoint"):
        load_checkpoint(incomplete)


def run_cli(module, argv, capsys):
    with pytest.raises(SystemExit) as e:
        from jaxfault.cli import run_main

        run_main(module.main, argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_eval_accuracy_cli(lenet_checkpoint, capsys):
    import eval.accuracy as mod

    ckpt = load_checkpoint(lenet_checkpoint)
    code, out, err = run_cli(mod, ["--checkpoint", str(lenet_checkpoint)], capsys)
    assert code == 0 and "top1" in out and "top5" in out
    code, out, err = run_cli(mod, ["--checkpoint", "/nonexistent/ckpt"], capsys)
    assert code == 2 and err.startswith("error:") and "/nonexistent/ckpt" in err and err.count("\n") == 1


def test_train_base_cli_bad_input(capsys):
    import train.base as mod

    code, _, err = run_cli(mod, ["--model", "lenet7"], capsys)
    assert code == 2 and "lenet7" in err and err.count("\n") == 1
    code, _, err = run_cli(mod, ["--epochs", "0", "--data-dir", "/nonexistent"], capsys)
    assert code == 2 and err.count("\n") == 1
    code, _, err = run_cli(mod, ["--epochs", "x"], capsys)
    assert code == 2 and "--epochs: must be an integer, got 'x'" in err


def test_default_classifier_uses_cache(default_cache):
    from jaxfault.training.zoo import default_classifier

    path = default_classifier("lenet", log=lambda s: pytest.fail("must not train"))
    assert path.parent == default_cache and load_checkpoint(path).config["model"] == "lenet"


def test_atomic_json(tmp_path):
    from jaxfault.core.io import atomic_write_json

    p = atomic_write_json(tmp_path / "a" / "r.json", {"x": np.float32(0.5), "y": np.arange(3)})
    assert json.loads(p.read_text()) == {"x": 0.5, "y": [0, 1, 2]}
    assert [f.name for f in p.parent.iterdir()] == ["r.json"]
