"""eval.swim end to end on a small untrained LeNet checkpoint, and its exit-2 paths."""
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxfault.training.checkpoints import save_checkpoint
from jaxfault.models import create_model, init_variables

import eval.swim as swim


def _exit_code(argv):
    with pytest.raises(SystemExit) as e:
        from jaxfault.cli import run_main
        run_main(swim.main, argv)
    return e.value.code


@pytest.mark.parametrize("argv", [
    ["--mask-p", "1.5"], ["--mask-p", "-0.1"], ["--dev-var", "-0.1"], ["--write-var", "-1"],
    ["--n-bits", "8", "--m-bits", "3"], ["--method", "bogus"], ["--curvature", "newton"],
    ["--noise-instances", "0"], ["--strategy", "gpu"], ["--sweep-mask-p", "0.1,2"],
    ["--methods", "SM,bogus", "--sweep-mask-p", "0.1"], ["--checkpoint", "/nonexistent/ckpt"],
    ["--threshold", "median"], ["--curvature-examples", "many"], ["--curvature-examples", "0"],
    ["--selection-batch", "0"], ["--alpha", "inf"],
])
def test_bad_input_exits_2(argv, capsys):
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1


def test_usage_error_exits_2():
    assert _exit_code(["--mask-p", "abc"]) == 2


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "lenet"
    model = create_model("lenet", 10)
    variables = init_variables(model, jax.random.key(0), (28, 28, 1))
    save_checkpoint(path, variables, {"kind": "classifier", "model": "lenet", "num_classes": 10, "quant_bits": None,
                                      "dataset": "fashion_mnist", "input_shape": [28, 28, 1],
                                      "value_range": "symmetric"})
    return path


@pytest.mark.slow
def test_sweep_end_to_end(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--checkpoint", str(tiny_checkpoint), "--test-examples", "200", "--eval-batch", "100",
            "--noise-instances", "3", "--curvature-examples", "64", "--dev-var", "0.3",
            "--sweep-mask-p", "0.1,0.5", "--methods", "SM,random", "--out", str(out)]
    assert swim.main(argv) == 0
    rep = json.loads((out / "swim.json").read_text())
    assert (out / "swim.txt").is_file() and (out / "swim_sweep.png").stat().st_size > 1000
    assert len(rep["none"]["accuracies"]) == 3 and rep["test_examples"] == 200
    assert [(r["method"], r["mask_p"]) for r in rep["selected"]] == [("SM", 0.1), ("SM", 0.5), ("random", 0.1),
                                                                     ("random", 0.5)]
    n = rep["n_kernel_weights"]
    assert rep["config"]["std_ddof"] == 0
    for r in [rep["none"], rep["all"], *rep["selected"]]:  # one std policy: ddof 0
        assert r["std"] == pytest.approx(float(np.std(r["accuracies"])), abs=1e-12)
    for r in rep["selected"]:
        assert abs(r["fraction_protected"] - r["mask_p"]) * n <= 0.5
        assert abs(r["write_verify_saved_fraction"] - (1 - r["fraction_protected"])) < 1e-12
    assert "clean accuracy" in capsys.readouterr().out


def test_train_base_rejects_negative_train_var(capsys):
    import train.base as base
    from jaxfault.cli import run_main

    with pytest.raises(SystemExit) as e:
        run_main(base.main, ["--train-var", "-0.1", "--epochs", "1"])
    assert e.value.code == 2 and "train_var" in capsys.readouterr().err


def test_cli_and_bench_import_only_the_library():
    """eval.swim is parse -> SwimConfig -> jaxfault.swim.run.run -> write; bench.swim imports no eval module."""
    code = ("import sys, bench.swim; bad = [m for m in sys.modules if m == 'eval' or m.startswith(('eval.', 'train'))];"
            " assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
    from jaxfault.swim.run import SwimConfig

    args = swim.build_parser().parse_args(["--methods", "sm,Random", "--sweep-mask-p", "0.1,0.2",
                                           "--curvature-examples", "all", "--no-gradient-term"])
    cfg = swim.config_from_args(args)
    assert isinstance(cfg, SwimConfig) and cfg.methods == ("SM", "random") and cfg.mask_ps == (0.1, 0.2)
    assert cfg.curvature_examples is None and cfg.gradient_term is False
