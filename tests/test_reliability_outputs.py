"""Outputs that cannot be created are refused before any work, in one line naming the flag and the
path (issue 26, item 1), and resumable runs leave no header-only results file behind (item 8)."""
import json
import os
from pathlib import Path

import pytest

from jaxfault.core.errors import JaxfaultError
from jaxfault.core.io import check_output_path
from tests._cli_run import run_cli as _run, one_error_line as _one_error_line

# /proc accepts no new entries, whoever asks (root included): os.access says writable, mkdir fails
UNCREATABLE = "/proc/jaxfault-nope"
needs_proc = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")


@needs_proc
@pytest.mark.parametrize("kind,path", [("file", f"{UNCREATABLE}/r.json"), ("file", f"{UNCREATABLE}/a/b/r.json"),
                                       ("dir", UNCREATABLE), ("dir", f"{UNCREATABLE}/sub")])
def test_check_output_path_proves_the_target_creatable(kind, path):
    with pytest.raises(JaxfaultError) as e:
        check_output_path(path, kind=kind, flag="--out")
    msg = str(e.value)
    assert msg.startswith("--out ") and path in msg and "\n" not in msg


def test_check_output_path_probe_leaves_nothing_behind(tmp_path):
    deep = tmp_path / "a" / "b" / "c"
    assert check_output_path(deep / "r.json") == deep / "r.json"
    assert check_output_path(deep, kind="dir") == deep
    assert list(tmp_path.iterdir()) == []
    existing = tmp_path / "keep"
    existing.mkdir()
    (existing / "f.txt").write_text("x")
    check_output_path(existing / "new" / "r.json")
    check_output_path(existing, kind="dir", overwrite=True)
    assert sorted(p.name for p in existing.iterdir()) == ["f.txt"]


def _result_file(tmp_path):
    p = tmp_path / "r.json"
    from jaxfault.core.rows import make_row, report

    p.write_text(json.dumps(report([make_row(fault_model="hbm", method="sparrow", fault={"scheme": "sparrow"},
                                             rate_name="ber", rate=1e-4, trials=2, metric="top1",
                                             summary={"mean": 0.9})], model="lenet")))
    return str(p)


@needs_proc
@pytest.mark.parametrize("module,argv", [
    ("eval.energy", ["--network", "lenet", "--out", f"{UNCREATABLE}/e"]),
    ("eval.energy", ["--network", "lenet", "--out", f"{UNCREATABLE}/plots", "--plots"]),
    ("eval.energy", ["--network", "lenet", "--sweep-bits", "4..8", "--out", f"{UNCREATABLE}/p"]),
    ("eval.exponents", ["--out", UNCREATABLE]),
    ("eval.vulnerability", ["--out", UNCREATABLE]),
    ("eval.run", ["--out", UNCREATABLE]),
    ("eval.neuralfuse", ["--generator-checkpoint", "/nonexistent-gen", "--out", UNCREATABLE]),
    ("train.neuralfuse", ["--out", UNCREATABLE]),
    ("train.lm", ["--out", f"{UNCREATABLE}/lm"]),
], ids=lambda v: v if isinstance(v, str) else v[-1])
def test_cli_outputs_that_cannot_be_created_one_line(module, argv, capsys):
    code, out, err = _run(module, argv, capsys)
    _one_error_line(code, err, UNCREATABLE)
    assert out == ""  # nothing computed, nothing printed


@needs_proc
def test_tradeoff_output_that_cannot_be_created(tmp_path, capsys):
    code, out, err = _run("eval.tradeoff", [_result_file(tmp_path), "--out", f"{UNCREATABLE}/t"], capsys)
    _one_error_line(code, err, "--out", UNCREATABLE)
    assert out == ""


@needs_proc
def test_sparrow_output_that_cannot_be_created_before_evaluation(monkeypatch, capsys):
    import eval.sparrow as es

    monkeypatch.setattr(es, "run", lambda *a, **k: pytest.fail("evaluation started"))
    code, _, err = _run("eval.sparrow", ["--ber", "1e-3", "--trials", "1", "--limit", "10", "--out", UNCREATABLE],
                        capsys)
    _one_error_line(code, err, "--out", UNCREATABLE)


@needs_proc
def test_train_base_output_that_cannot_be_created_before_training(monkeypatch, capsys):
    import train.base as tb

    monkeypatch.setattr(tb, "train_and_save", lambda *a, **k: pytest.fail("training started"))
    code, _, err = _run("train.base", ["--epochs", "1", "--out", f"{UNCREATABLE}/ck"], capsys)
    _one_error_line(code, err, "--out", UNCREATABLE)


def _campaign(tmp_path, **fields):
    cfg = {"out": str(tmp_path / "out"), "trials": 2, "eval_examples": 10,
           "grid": [{"method": "bitflip", "ber": [1e-3]}], **fields}
    p = tmp_path / "c.json"
    p.write_text(json.dumps(cfg))
    return str(p)


@needs_proc
@pytest.mark.parametrize("dry", [True, False])
def test_campaign_outputs_that_cannot_be_created(tmp_path, dry, capsys):
    extra = ["--dry-run"] if dry else []
    code, _, err = _run("eval.campaign", [_campaign(tmp_path, out=f"{UNCREATABLE}/r")] + extra, capsys)
    _one_error_line(code, err, UNCREATABLE)
    code, _, err = _run("eval.campaign", [_campaign(tmp_path), "--out", f"{UNCREATABLE}/p", "--plot"] + extra, capsys)
    _one_error_line(code, err, "--out", UNCREATABLE)


def _plan(tmp_path, **fields):
    plan = {"out": str(tmp_path / "plan-out"), "trials": 2, "eval_examples": 10,
            "hbm": {"scheme": ["none"], "refresh_interval_s": [0.064]}, **fields}
    p = tmp_path / "p.json"
    p.write_text(json.dumps(plan))
    return str(p)


@needs_proc
@pytest.mark.parametrize("dry", [True, False])
def test_plan_output_that_cannot_be_created(tmp_path, dry, capsys):
    code, _, err = _run("eval.plan", [_plan(tmp_path, out=UNCREATABLE)] + (["--dry-run"] if dry else []), capsys)
    _one_error_line(code, err, UNCREATABLE)


@pytest.mark.parametrize("where", ["under_a_file", "not_results"])
def test_campaign_dry_run_refuses_outputs_the_run_refuses(tmp_path, where, capsys):
    if where == "under_a_file":
        afile = tmp_path / "afile"
        out = afile / "r"
    else:                                   # a results.jsonl in the folder that is not a results file
        afile = tmp_path / "folder" / "results.jsonl"
        afile.parent.mkdir()
        out = afile.parent
    afile.write_text("keep me\n")
    code, _, err = _run("eval.campaign", [_campaign(tmp_path, out=str(out)), "--dry-run"], capsys)
    _one_error_line(code, err, str(afile))
    assert afile.read_text() == "keep me\n"


# ------------------------------------------------------------------ header-only results files
def test_results_file_holds_no_header_until_the_first_row(tmp_path):
    from jaxfault.core.resultsfile import ResultsFile

    path = tmp_path / "r.jsonl"
    with ResultsFile.open(path, {"seed": 0}):
        pass
    assert not path.exists()
    with ResultsFile.open(path, {"seed": 0}) as rf:
        rf.append("a", {"x": 1})
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and "jaxfault_results" in lines[0] and '"id": "a"' in lines[1]
    with ResultsFile.open(path, {"seed": 0}) as rf:   # reopened: rows kept, nothing removed
        assert rf.rows() == {"a": {"x": 1}}
    assert path.read_text().splitlines() == lines


def test_results_file_failed_run_leaves_no_file(tmp_path):
    from jaxfault.core.resultsfile import ResultsFile

    path = tmp_path / "sub" / "r.jsonl"
    with pytest.raises(RuntimeError):
        with ResultsFile.open(path, {"seed": 0}):
            raise RuntimeError("the run failed after validation")
    assert not path.exists()


def test_results_file_keeps_an_empty_file_it_did_not_create(tmp_path):
    from jaxfault.core.resultsfile import ResultsFile

    path = tmp_path / "r.jsonl"
    path.write_bytes(b"")
    with ResultsFile.open(path, {"seed": 0}):
        pass
    assert path.exists() and path.read_bytes() == b""
