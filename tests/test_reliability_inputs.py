"""Inputs read from files and flags are range-checked before any work (issue 26, items 6-8):
dry runs check what runs check, checkpoint metadata is verified with the arrays, data and result
files are range-checked, and values that used to raise tracebacks (huge integers, deep nesting,
seeds past the key derivation, unbounded trials, sweeps and batch sizes) are one line and exit 2."""
import gzip
import importlib
import json
import struct

import numpy as np
import pytest

from jaxfault.core.errors import JaxfaultError
from tests._cli_run import run_cli as _run, one_error_line as _one_error_line


def _write_json(path, obj_or_text):
    path.write_text(obj_or_text if isinstance(obj_or_text, str) else json.dumps(obj_or_text))
    return str(path)


def _campaign(tmp_path, **fields):
    cfg = {"out": str(tmp_path / "out"), "trials": 2, "eval_examples": 10,
           "grid": [{"method": "bitflip", "ber": [1e-3]}], **fields}
    return _write_json(tmp_path / "c.json", cfg)


def _plan(tmp_path, **fields):
    plan = {"out": str(tmp_path / "plan-out"), "trials": 2, "eval_examples": 10,
            "hbm": {"scheme": ["none"], "refresh_interval_s": [0.064]}, **fields}
    return _write_json(tmp_path / "p.json", plan)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """An untrained 8-bit QAT LeNet saved as a classifier checkpoint (no training: fast)."""
    import jax

    from jaxfault.training.checkpoints import save_checkpoint
    from jaxfault.models import create_model, init_variables

    model = create_model("lenet", 10, 8)
    variables = init_variables(model, jax.random.key(0), (28, 28, 1))
    path = tmp_path_factory.mktemp("ck") / "lenet_qat"
    config = {"kind": "classifier", "model": "lenet", "num_classes": 10, "quant_bits": 8,
              "dataset": "fashion_mnist", "input_shape": [28, 28, 1], "value_range": "symmetric"}
    save_checkpoint(path, jax.device_get(variables), config, {"test_accuracy": 0.1})
    return path


def _copy(src, tmp_path, name="ck"):
    import shutil

    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------ 6a: campaign dry run
def test_campaign_dry_run_refuses_a_missing_checkpoint(tmp_path, capsys):
    missing = str(tmp_path / "no-such-checkpoint")
    code, out, err = _run("eval.campaign", [_campaign(tmp_path, checkpoint=missing), "--dry-run"], capsys)
    _one_error_line(code, err, missing)
    assert "not trained yet" not in out


# ------------------------------------------------------------------ 6b: checkpoint metadata digest
def _edit_meta(ck, edit):
    meta = ck / "jaxfault.json"
    data = json.loads(meta.read_text())
    edit(data)
    meta.write_text(json.dumps(data, indent=2))


def test_checkpoint_metadata_edit_is_refused(tiny_checkpoint, tmp_path):
    from jaxfault.training.checkpoints import load_checkpoint

    load_checkpoint(tiny_checkpoint)  # intact: loads
    ck = _copy(tiny_checkpoint, tmp_path)
    _edit_meta(ck, lambda d: d["config"].__setitem__("quant_bits", 4))
    with pytest.raises(JaxfaultError) as e:
        load_checkpoint(ck)
    msg = str(e.value)
    assert "jaxfault.json" in msg and str(ck) in msg and "edited" in msg and "\n" not in msg


def test_generator_metadata_edit_is_refused(tmp_path):
    from jaxfault.training.checkpoints import load_checkpoint, read_metadata, save_checkpoint

    ck = tmp_path / "gen"
    save_checkpoint(ck, {"params": {"w": np.ones(3, np.float32)}},
                    {"kind": "neuralfuse_generator", "generator": "UNetS", "bits": 8, "ber": 0.01})
    read_metadata(ck)
    for field, value in (("bits", 4), ("ber", 0.02)):
        c = _copy(ck, tmp_path, f"gen-{field}")
        _edit_meta(c, lambda d: d["config"].__setitem__(field, value))
        with pytest.raises(JaxfaultError, match="edited"):
            load_checkpoint(c, kind="neuralfuse_generator")


def test_checkpoint_without_metadata_digest_still_loads(tiny_checkpoint, tmp_path):
    """Checkpoints saved before the digest existed carry none: they load as before."""
    from jaxfault.training.checkpoints import load_checkpoint

    ck = _copy(tiny_checkpoint, tmp_path)
    _edit_meta(ck, lambda d: d.pop("metadata_sha256"))
    assert load_checkpoint(ck).config["quant_bits"] == 8


def test_eval_accuracy_refuses_edited_quant_bits(tiny_checkpoint, tmp_path, capsys):
    ck = _copy(tiny_checkpoint, tmp_path)
    _edit_meta(ck, lambda d: d["config"].__setitem__("quant_bits", 4))
    code, out, err = _run("eval.accuracy", ["--checkpoint", str(ck)], capsys)
    _one_error_line(code, err, "jaxfault.json", "edited")
    assert out == ""


# ------------------------------------------------------------------ 6c: IDX labels
def _idx(path, arr, code):
    arr = np.asarray(arr)
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(">u1" if code == 8 else ">i4").tobytes())


def _idx_dir(tmp_path, train_labels, test_labels, n_test_images=None):
    d = tmp_path / "idx"
    d.mkdir()
    rng = np.random.default_rng(0)
    n_test_images = len(test_labels) if n_test_images is None else n_test_images
    _idx(d / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (len(train_labels), 28, 28)), 8)
    _idx(d / "train-labels-idx1-ubyte.gz", train_labels, 8)
    _idx(d / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (n_test_images, 28, 28)), 8)
    _idx(d / "t10k-labels-idx1-ubyte.gz", test_labels, 8)
    return d


def test_idx_labels_out_of_range_are_refused(tmp_path):
    from jaxfault.data import load_dataset

    d = _idx_dir(tmp_path, [0, 1, 2, 9], [0, 10, 3])
    with pytest.raises(JaxfaultError) as e:
        load_dataset("fashion_mnist", data_dir=d, source="local")
    msg = str(e.value)
    assert "t10k-labels" in msg and "10" in msg and "[0, 10)" in msg and "\n" not in msg


def test_idx_image_and_label_counts_must_agree(tmp_path):
    from jaxfault.data import load_dataset

    d = _idx_dir(tmp_path, [0, 1], [0, 1, 2], n_test_images=2)
    with pytest.raises(JaxfaultError, match="do not match"):
        load_dataset("fashion_mnist", data_dir=d, source="local")


def test_idx_in_range_labels_load(tmp_path):
    from jaxfault.data import load_dataset

    ds = load_dataset("fashion_mnist", data_dir=_idx_dir(tmp_path, [0, 9], [1, 2]), source="local")
    assert ds.num_classes == 10 and ds.test_labels.tolist() == [1, 2]


def test_eval_accuracy_refuses_out_of_range_idx_labels(tiny_checkpoint, tmp_path, capsys):
    d = _idx_dir(tmp_path, [0, 1], [0, 10])
    code, out, err = _run("eval.accuracy", ["--checkpoint", str(tiny_checkpoint), "--data-dir", str(d)], capsys)
    _one_error_line(code, err, "label")
    assert out == ""


# ------------------------------------------------------------------ 6d, 7: eval.tradeoff inputs
def _hbm_row(ber, accuracy: str) -> str:
    """A row of the row schema as JSON text, its accuracy written as given (NaN included)."""
    return ('{"fault_model": "hbm", "method": "sparrow", "fault": {"scheme": "sparrow"}, "rate_name": "ber", '
            f'"rate": {ber}, "ber": {ber}, "trials": 2, "metric": "top1", "summary": {{"mean": {accuracy}}}}}')


@pytest.mark.parametrize("accuracy,shown", [("NaN", "nan"), (1.5, "1.5"), (-0.1, "-0.1")])
def test_tradeoff_refuses_impossible_accuracies(tmp_path, accuracy, shown, capsys):
    text = ('{"schema": "jaxfault.rows/1", "rows": [' + _hbm_row(1e-4, "0.9") + ", "
            + _hbm_row(1e-3, accuracy if isinstance(accuracy, str) else json.dumps(accuracy)) + "]}")
    path = _write_json(tmp_path / "r.json", text)
    code, out, err = _run("eval.tradeoff", [path], capsys)
    line = _one_error_line(code, err, path, "accuracy", shown)
    assert "2" in line  # the row
    assert out == ""


@pytest.mark.parametrize("point", [{"ber": "high"}, {"ber": True}, {"ber": 1.5}, {"voltage": "low"},
                                   {"mask_p": 2.0}, {"refresh_interval_s": -1}])
def test_tradeoff_refuses_bad_operating_points(tmp_path, point, capsys):
    from jaxfault.core.rows import make_row, report

    key, value = next(iter(point.items()))
    fault_model = {"voltage": "sram", "mask_p": "cim"}.get(key, "hbm")
    rate_name = "dev_var" if fault_model == "cim" else "ber"
    row = make_row(fault_model=fault_model, method=fault_model, fault={}, rate_name=rate_name, rate=1e-3, trials=2,
                   metric="top1", summary={"mean": 0.9})
    row.update({"rate": value} if key == "ber" else {}, **point)
    path = _write_json(tmp_path / "r.json", report([row]))
    code, out, err = _run("eval.tradeoff", [path], capsys)
    _one_error_line(code, err, path, key)


def test_tradeoff_refuses_a_binary_file(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_bytes(bytes(range(256)) * 4)
    code, _, err = _run("eval.tradeoff", [str(path)], capsys)
    _one_error_line(code, err, str(path))


def test_tradeoff_refuses_deep_nesting(tmp_path, capsys):
    path = _write_json(tmp_path / "r.json", "[" * 100000 + "]" * 100000)
    code, _, err = _run("eval.tradeoff", [path], capsys)
    _one_error_line(code, err, path, "nest")


# ------------------------------------------------------------------ 7: shared JSON loader limits
@pytest.mark.parametrize("module", ["eval.plan", "eval.campaign"])
def test_config_with_a_huge_integer_is_one_line(tmp_path, module, capsys):
    make = _plan if module == "eval.plan" else _campaign
    path = make(tmp_path)
    text = open(path).read().replace('"trials": 2', '"trials": ' + "9" * 5000)
    _write_json(tmp_path / ("p.json" if module == "eval.plan" else "c.json"), text)
    code, _, err = _run(module, [path, "--dry-run"], capsys)
    _one_error_line(code, err, path, "digits")


@pytest.mark.parametrize("module", ["eval.plan", "eval.campaign"])
def test_deeply_nested_config_is_one_line(tmp_path, module, capsys):
    path = _write_json(tmp_path / "x.json", '{"grid": ' + "[" * 100000 + "]" * 100000 + "}")
    code, _, err = _run(module, [path, "--dry-run"], capsys)
    _one_error_line(code, err, path, "nest")


def test_read_json_object_depth_limit_is_shared(tmp_path):
    from jaxfault.core.config import read_json_object

    path = _write_json(tmp_path / "x.json", '{"a": ' + "[" * 200 + "]" * 200 + "}")
    with pytest.raises(JaxfaultError, match="nest"):
        read_json_object(path, "config")
    read_json_object(_write_json(tmp_path / "y.json", '{"a": [[[1]]]}'), "config")


# ------------------------------------------------------------------ 7: seeds
@pytest.mark.parametrize("module", ["eval.plan", "eval.campaign"])
@pytest.mark.parametrize("seed", [2**64, 2**32])
def test_config_seed_beyond_the_key_derivation_is_refused(tmp_path, module, seed, capsys):
    path = (_plan if module == "eval.plan" else _campaign)(tmp_path, seed=seed)
    code, _, err = _run(module, [path, "--dry-run"], capsys)
    _one_error_line(code, err, "seed", str(seed))


SEEDED = ["eval.sparrow", "eval.vulnerability", "eval.run", "train.base", "train.lm", "train.neuralfuse"]


@pytest.mark.parametrize("module", SEEDED)
def test_every_seed_flag_is_bounded_by_the_key_derivation(module, capsys):
    base = ["--ber", "1e-3"] if module == "eval.sparrow" else []
    for seed in ("18446744073709551616", str(2**32)):
        code, out, err = _run(module, base + ["--seed", seed], capsys)
        _one_error_line(code, err, "--seed", seed)
        assert out == ""
    parser = importlib.import_module(module).build_parser()
    assert parser.parse_args(base + ["--seed", str(2**32 - 1)]).seed == 2**32 - 1


def test_swim_seed_is_bounded_before_work(capsys):
    """eval.swim's flag keeps its own type (its file belongs to other work); its config refuses."""
    code, out, err = _run("eval.swim", ["--seed", str(2**64)], capsys)
    _one_error_line(code, err, "seed", str(2**64))
    assert out == ""


def test_root_key_refuses_seeds_it_would_truncate():
    from jaxfault.core.keys import root_key

    root_key(np.int64(2**32 - 1))
    for seed in (2**32, -1, True, 1.5):
        with pytest.raises(JaxfaultError, match="seed must be an integer in"):
            root_key(seed)


# ------------------------------------------------------------------ 7: unbounded sizes
@pytest.mark.parametrize("module", ["eval.plan", "eval.campaign"])
def test_trials_are_bounded(tmp_path, module, capsys):
    path = (_plan if module == "eval.plan" else _campaign)(tmp_path, trials=10**10)
    code, _, err = _run(module, [path, "--dry-run"], capsys)
    _one_error_line(code, err, "trials", "100000")


def test_plan_configs_per_call_checked_against_memory(tmp_path, capsys):
    path = _plan(tmp_path, configs_per_call=10**9)
    code, out, err = _run("eval.plan", [path, "--dry-run"], capsys)
    _one_error_line(code, err, "configs_per_call", "memory")


def test_energy_network_must_be_a_model(capsys):
    code, out, err = _run("eval.energy", ["--network", "os:getcwd"], capsys)
    _one_error_line(code, err, "os:getcwd")
    assert out == ""


@pytest.mark.parametrize("bits", ["1..100000", "16..2", "0..4", "4,64", "x..3"])
def test_energy_sweep_bits_refused_before_the_base_report(bits, capsys):
    code, out, err = _run("eval.energy", ["--network", "lenet", "--sweep-bits", bits], capsys)
    _one_error_line(code, err, "--sweep-bits", bits)
    assert out == ""


# ------------------------------------------------------------------ 8: non-finite energies
@pytest.mark.parametrize("energy", [{"refresh_pj_per_bit": 1e308, "v_nominal": 1e308},
                                    {"refresh_pj_per_bit": 1e308}, {"v_nominal": 1e308},
                                    {"pj_per_unit": 1e-308}])
def test_plan_energy_settings_are_bounded(tmp_path, energy, capsys):
    path = _plan(tmp_path, energy=energy)
    code, out, err = _run("eval.plan", [path, "--dry-run"], capsys)
    _one_error_line(code, err, "energy", next(iter(energy)))


def test_plan_refuses_a_non_finite_energy_result():
    from jaxfault.plan.energy import check_energy

    with pytest.raises(JaxfaultError, match="scheme=none .*not finite") as e:
        check_energy({"scheme": "none", "refresh_interval_s": 0.064}, {"total": float("nan"), "refresh": float("inf")})
    assert "\n" not in str(e.value)
    assert check_energy({"scheme": "none"}, {"total": 1.0})["total"] == 1.0
