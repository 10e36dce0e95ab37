"""train.neuralfuse / eval.neuralfuse: bad input -> exit 2 (fast), and end to end on a tiny QAT LeNet
with a killed-and-resumed run (slow: three compilations of the EOPM step; run with -m slow)."""
import json

import numpy as np
import pytest

import jaxfault.neuralfuse.train as nftrain
from jaxfault.training.checkpoints import load_checkpoint, read_metadata
from jaxfault.cli import run_main
from jaxfault.neuralfuse.eopm import EVAL_SEED_BASE


def _exit_code(main, argv):
    with pytest.raises(SystemExit) as e:
        run_main(main, argv)
    return e.value.code


@pytest.fixture(scope="module")
def trained(tmp_path_factory, qat_lenet_checkpoint):
    """Run 1: interrupted after 3 of 4 steps (state saved at step 2); run 2: --resume finishes it."""
    from train.neuralfuse import main

    out = tmp_path_factory.mktemp("nf") / "run"
    argv = ["--checkpoint", str(qat_lenet_checkpoint), "--generator", "UNetS", "--n-models", "2", "--lam", "1",
            "--train-subset", "64", "--batch-size", "16", "--epochs", "1", "--save-every", "2", "--out", str(out)]
    real = nftrain.make_eopm_step
    calls = {"n": 0}

    def dying_step(*a, **k):
        step = real(*a, **k)

        def wrapped(*args):
            calls["n"] += 1
            if calls["n"] == 4:
                raise KeyboardInterrupt
            return step(*args)
        return wrapped

    nftrain.make_eopm_step = dying_step
    try:
        assert _exit_code(main, argv) == 130
    finally:
        nftrain.make_eopm_step = real
    assert read_metadata(out / "state")["config"]["global_step"] == 2
    assert not (out / "generator").exists()
    assert _exit_code(main, argv + ["--resume", "--eval-models", "2"]) == 0
    return out


@pytest.mark.slow
def test_resume_finishes_killed_run_and_writes_generator(trained):
    meta = read_metadata(trained / "state")["config"]
    assert meta["global_step"] == 4
    ck = load_checkpoint(trained / "generator", kind="neuralfuse_generator")
    assert ck.config["generator"] == "UNetS" and ck.config["ber"] == 0.01 and ck.config["bits"] == 8
    assert ck.metrics["history"][-1]["epoch"] == 1
    assert set(ck.variables) == {"params", "batch_stats"}
    # the run ends with the evaluation on unseen perturbed models, as eval.neuralfuse reports it
    rep = json.loads((trained / "neuralfuse_eval.json").read_text())
    assert rep["seeds"] == [EVAL_SEED_BASE, EVAL_SEED_BASE + 1] and rep["results"][0]["ber"] == 0.01


@pytest.mark.slow
def test_resume_with_changed_settings_is_refused(trained, qat_lenet_checkpoint, capsys):
    from train.neuralfuse import main

    argv = ["--checkpoint", str(qat_lenet_checkpoint), "--generator", "UNetS", "--n-models", "3", "--lam", "1",
            "--train-subset", "64", "--batch-size", "16", "--epochs", "1", "--out", str(trained), "--resume"]
    assert _exit_code(main, argv) == 2
    assert "n_models" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_reports_unseen_models_and_recovery(trained, tmp_path, capsys):
    from eval.neuralfuse import main

    out = tmp_path / "ev"
    code = _exit_code(main, ["--generator-checkpoint", str(trained), "--models", "3",  # the run folder
                             "--test-subset", "200", "--sweep", "0.01,0.05", "--out", str(out)])
    assert code == 0
    rep = json.loads((out / "neuralfuse_eval.json").read_text())
    assert rep["seeds"] == [EVAL_SEED_BASE, EVAL_SEED_BASE + 1, EVAL_SEED_BASE + 2]
    assert [r["ber"] for r in rep["results"]] == [0.01, 0.05]
    for r in rep["results"]:
        w0, w1 = r["perturbed_without"], r["perturbed_with"]
        assert len(w0["per_model"]) == 3 and np.isclose(w0["mean"], np.mean(w0["per_model"]))
        assert np.isclose(r["recovery"], w1["mean"] - w0["mean"])
        assert 0.0 <= w0["mean"] <= 1.0
    # perturbed models differ from each other and from the clean model at 5 % BER
    hi = rep["results"][1]["perturbed_without"]
    assert len(set(hi["per_model"])) > 1 and hi["mean"] < rep["clean"]["without"]
    assert (out / "neuralfuse_sweep.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "recovery" in printed and f"wrote {out / 'neuralfuse_eval.json'}" in printed
    assert f"next: accuracy vs SRAM energy of these BERs: python -m eval.tradeoff {out / 'neuralfuse_eval.json'}" in printed
    assert rep["generator_checkpoint"] == str((trained / "generator").absolute())
    # its rows (row schema): without and with the generator at each BER, read by eval.tradeoff
    from eval.tradeoff import main as tradeoff_main

    assert [(r["fault_model"], r["ber"], r["generator"]) for r in rep["rows"]] == \
        [("sram", b, g) for b in (0.01, 0.05) for g in (None, rep["generator"])]
    assert _exit_code(tradeoff_main, [str(out / "neuralfuse_eval.json"), "--out", str(tmp_path / "t")]) == 0
    points = json.loads((tmp_path / "t" / "tradeoff.json").read_text())["points"]
    assert {p["label"] for p in points} == {"neuralfuse none", f"neuralfuse {rep['generator']}"}
    with_g = {p["operating_point"]["ber"]: p for p in points if p["label"] != "neuralfuse none"}
    assert with_g[0.05]["accuracy_mean"] == rep["results"][1]["perturbed_with"]["mean"]


@pytest.mark.slow
def test_init_generator_fine_tunes_from_an_earlier_generator(trained, qat_lenet_checkpoint, tmp_path):
    """A warm start at a tiny learning rate ends next to the generator it started from, far from a random init."""
    import jax

    from train.neuralfuse import main

    argv = ["--checkpoint", str(qat_lenet_checkpoint), "--generator", "UNetS", "--n-models", "2", "--lam", "1",
            "--train-subset", "16", "--batch-size", "16", "--lr", "1e-9", "--seed", "7",
            "--init-generator", str(trained / "generator"), "--out", str(tmp_path / "ft")]
    assert _exit_code(main, argv) == 0
    start = load_checkpoint(trained / "generator", kind="neuralfuse_generator")
    tuned = load_checkpoint(tmp_path / "ft" / "generator", kind="neuralfuse_generator")
    assert tuned.config["init_generator"] == str((trained / "generator").absolute())
    diffs = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(a - b))), start.variables["params"],
                                   tuned.variables["params"])
    assert max(jax.tree_util.tree_leaves(diffs)) < 1e-6


def test_warm_start_loads_matching_generator_and_refuses_others(tmp_path):
    import jax

    from jaxfault.training.checkpoints import save_checkpoint
    from jaxfault.core.errors import JaxfaultError
    from jaxfault.models.generators import create_generator, init_generator

    gen = create_generator("ConvS")
    earlier = init_generator(gen, jax.random.key(3), (28, 28, 1))
    fresh = init_generator(gen, jax.random.key(0), (28, 28, 1))
    save_checkpoint(tmp_path / "g", earlier, {"kind": "neuralfuse_generator", "generator": "ConvS",
                                              "input_shape": [28, 28, 1]})
    got = nftrain._warm_start(tmp_path / "g", "ConvS", (28, 28, 1), fresh)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(earlier)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(JaxfaultError, match="its generator is 'ConvS', this run's is 'UNetS'"):
        nftrain._warm_start(tmp_path / "g", "UNetS", (28, 28, 1), fresh)
    with pytest.raises(JaxfaultError, match="input_shape"):
        nftrain._warm_start(tmp_path / "g", "ConvS", (32, 32, 3), fresh)


@pytest.mark.parametrize("argv,match", [
    (["--ber", "1.5"], "ber"), (["--ber", "-0.01"], "ber"), (["--bits", "5"], "precision"),
    (["--generator", "ConvXL"], "unknown generator"), (["--placement", "diag"], "placement"),
    (["--n-models", "0"], "n-models")])
def test_train_bad_input_exit_2(argv, match, capsys):
    from train.neuralfuse import main

    assert _exit_code(main, argv + ["--checkpoint", "/nonexistent"]) == 2
    assert match in capsys.readouterr().err


def _fake_checkpoint(path, kind):
    """A checkpoint folder whose metadata names `kind` (kinds are checked before any array is read)."""
    from jaxfault.training.checkpoints import save_checkpoint

    return save_checkpoint(path, {"params": {"w": np.zeros(2, np.float32)}}, {"kind": kind, "generator": "UNetS"})


def test_wrong_checkpoint_kinds_exit_2(tmp_path, capsys):
    from eval.neuralfuse import main as eval_main
    from train.neuralfuse import main as train_main

    classifier = _fake_checkpoint(tmp_path / "clf", "classifier")
    generator = _fake_checkpoint(tmp_path / "gen", "neuralfuse_generator")
    assert _exit_code(eval_main, ["--generator-checkpoint", str(classifier), "--out", str(tmp_path)]) == 2
    assert "expected a 'neuralfuse_generator'" in capsys.readouterr().err
    assert _exit_code(train_main, ["--checkpoint", str(generator), "--out", str(tmp_path / "x")]) == 2
    assert "expected a 'classifier'" in capsys.readouterr().err
    assert _exit_code(eval_main, ["--generator-checkpoint", str(generator), "--sweep", "0.01,2",
                                  "--out", str(tmp_path)]) == 2
    assert "--sweep values must be in [0, 1], got '2'" in capsys.readouterr().err
    assert _exit_code(eval_main, ["--generator-checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_eval_refuses_a_folder_without_a_generator(tmp_path, capsys):
    """Neither a generator checkpoint nor a run folder holding one: one error line, exit 2."""
    from eval.neuralfuse import main

    (tmp_path / "run" / "state").mkdir(parents=True)
    assert _exit_code(main, ["--generator-checkpoint", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no NeuralFuse generator checkpoint in") and "--resume" in err



def test_evaluation_uses_the_generators_weight_order(tmp_path, qat_lenet_checkpoint, monkeypatch):
    """evaluate_generator faults the weights in the order the generator was trained with (its
    config's layout; a checkpoint written before the layout was recorded was trained in Flax's
    order); an explicit layout overrides it. (That the two orders fault other weights is tested in
    test_neuralfuse_faults.py.)"""
    import jax

    import jaxfault.neuralfuse.evaluate as nfeval
    from jaxfault.training.checkpoints import read_metadata, save_checkpoint
    from jaxfault.models.generators import create_generator

    # a generator of the right structure, all zeros (x' = x; running variances 1), without compiling its init
    gen = create_generator("UNetS")
    shapes = jax.eval_shape(lambda k: gen.init(k, jax.numpy.zeros((1, 28, 28, 1)), train=False), jax.random.key(0))
    gv = jax.tree_util.tree_map_with_path(
        lambda path, s: (np.ones if str(path[-1]) == "['var']" else np.zeros)(s.shape, s.dtype), dict(shapes))
    common = {"kind": "neuralfuse_generator", "generator": "UNetS", "input_shape": [28, 28, 1], "ber": 0.05,
              "ber0": 0.5, "placement": "memory_array", "base_checkpoint": str(qat_lenet_checkpoint)}
    save_checkpoint(tmp_path / "torch", gv, {**common, "layout": "torch"})
    save_checkpoint(tmp_path / "legacy", gv, common)
    built = []

    class Recorded(nfeval.SRAMBitErrors):
        def __post_init__(self):
            super().__post_init__()
            built.append((self.placement, self.layout))

    monkeypatch.setattr(nfeval, "SRAMBitErrors", Recorded)
    rep = nfeval.evaluate_generator(tmp_path / "torch", models=2, test_subset=300)
    assert rep["layout"] == "torch" and ("memory_array", "torch") in built
    assert "in torch order" in nfeval.format_table(rep).splitlines()[0]
    # its rows in the row schema, as eval.tradeoff reads them: without and with the generator
    import json

    from jaxfault.energy.tradeoff import load_records

    (tmp_path / "rep.json").write_text(json.dumps(rep))
    recs = load_records([str(tmp_path / "rep.json")])
    assert [(r["family"], r["generator"]) for r in recs] == [("sram", None), ("sram", "UNetS")] * len(rep["results"])
    assert [r["accuracy_mean"] for r in recs[:2]] == [rep["results"][0][k]["mean"]
                                                      for k in ("perturbed_without", "perturbed_with")]
    # the resolution evaluate_generator applies to a checkpoint's config and the caller's overrides
    legacy = read_metadata(tmp_path / "legacy")["config"]
    assert nfeval.trained_fault_settings(legacy) == (0.5, "memory_array", "flax")
    assert nfeval.trained_fault_settings(legacy, layout="torch", placement="independent") == (0.5, "independent", "torch")
    assert nfeval.trained_fault_settings(read_metadata(tmp_path / "torch")["config"])[2] == "torch"


def test_resume_of_a_run_from_before_the_layout_was_recorded(tmp_path):
    """A state saved without a layout was trained in Flax's order: --resume continues it with
    layout flax and refuses to switch it to torch."""
    from jaxfault.core.errors import JaxfaultError

    template = {"w": np.zeros(3, np.float32)}
    nftrain._save_state(tmp_path / "state", template, {"ber": 0.01}, {"global_step": 1})
    state, meta = nftrain._load_state(tmp_path / "state", template, {"ber": 0.01, "layout": "flax"})
    assert meta["global_step"] == 1
    with pytest.raises(JaxfaultError, match="layout was 'flax', now 'torch'"):
        nftrain._load_state(tmp_path / "state", template, {"ber": 0.01, "layout": "torch"})
