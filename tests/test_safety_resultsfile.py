"""Results files (issue 15, gaps 1-4): never touch foreign files, identity checked, corrupt rows named,
torn last line cut, exclusive lock, dry runs create and modify nothing."""
import json
import multiprocessing
import os
import time

import pytest

from jaxfault.core.errors import JaxfaultError
from jaxfault.core.resultsfile import ResultsFile, row_id

IDENTITY = {"model": "lenet", "checkpoint": "ab12", "eval_examples": 1000, "seed": 0, "trials": 4,
            "precision": "bf16"}


def _fill(path, n=4, identity=IDENTITY):
    with ResultsFile.open(path, identity) as rf:
        for i in range(n):
            rf.append(f"p{i}", {"accuracy": [0.5 + i / 100], "ber": 10.0 ** -(i + 2)})
    return path.read_bytes()


def test_rows_round_trip_and_resume(tmp_path):
    path = tmp_path / "r.jsonl"
    _fill(path, 3)
    with ResultsFile.open(path, dict(IDENTITY)) as rf:
        rows = rf.rows()
        assert list(rows) == ["p0", "p1", "p2"] and rows["p1"] == {"accuracy": [0.51], "ber": 1e-3}
        rf.append("p3", {"accuracy": [0.9], "ber": 1e-5})
        with pytest.raises(JaxfaultError, match="already holds row 'p3'"):
            rf.append("p3", {"accuracy": [0.9]})
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"jaxfault_results": 1, "identity": IDENTITY}
    assert [json.loads(x)["id"] for x in lines[1:]] == ["p0", "p1", "p2", "p3"]


def test_gap1_foreign_file_is_never_touched_even_by_a_dry_run(tmp_path):
    readme = tmp_path / "v.md"
    readme.write_text("# not results\nsome text\n")
    before = readme.read_bytes()
    for dry in (False, True):
        with pytest.raises(JaxfaultError, match="not a jaxfault results file") as e:
            ResultsFile.open(readme, IDENTITY, dry_run=dry)
        assert "\n" not in str(e.value) and str(readme) in str(e.value)
        assert readme.read_bytes() == before
    one_line = tmp_path / "one.txt"
    one_line.write_bytes(b"no newline at all")
    with pytest.raises(JaxfaultError, match="not a jaxfault results file"):
        ResultsFile.open(one_line, IDENTITY)
    assert one_line.read_bytes() == b"no newline at all"
    old = tmp_path / "old.jsonl"  # a headerless file of the earlier campaign runner
    old.write_text(json.dumps({"point_id": "abc", "accuracy": [0.5]}) + "\n")
    with pytest.raises(JaxfaultError, match="older jaxfault"):
        ResultsFile.open(old, IDENTITY)


def test_gap1_dry_run_creates_nothing_and_changes_nothing(tmp_path):
    path = tmp_path / "sub" / "r.jsonl"
    with ResultsFile.open(path, IDENTITY, dry_run=True) as rf:
        assert rf.rows() == {}
        with pytest.raises(JaxfaultError, match="dry run"):
            rf.append("p0", {"a": 1})
    assert not path.exists() and not path.parent.exists()
    data = _fill(path, 2) + b'{"id": "p2", "accu'  # plus a torn last line
    path.write_bytes(data)
    with ResultsFile.open(path, IDENTITY, dry_run=True) as rf:
        assert list(rf.rows()) == ["p0", "p1"]
    assert path.read_bytes() == data


def test_gap2_corrupt_middle_row_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "r.jsonl"
    lines = _fill(path, 4).split(b"\n")
    lines[2] = b'{"id": "p1", "accuracy": [0.5'  # row 2 of 4 = line 3 of the file
    damaged = b"\n".join(lines)
    path.write_bytes(damaged)
    for dry in (False, True):
        with pytest.raises(JaxfaultError, match="line 3 is corrupt") as e:
            ResultsFile.open(path, IDENTITY, dry_run=dry)
        assert "\n" not in str(e.value)
        assert path.read_bytes() == damaged  # nothing truncated


def test_torn_last_line_is_cut_and_the_row_redone(tmp_path):
    path = tmp_path / "r.jsonl"
    intact = _fill(path, 2)
    path.write_bytes(intact + b'{"id": "p2", "accuracy": [0.')
    with ResultsFile.open(path, IDENTITY) as rf:
        assert list(rf.rows()) == ["p0", "p1"]
        assert path.read_bytes() == intact
        rf.append("p2", {"accuracy": [0.7]})
    assert path.read_bytes().count(b"\n") == 4


def test_duplicate_row_ids_are_an_error(tmp_path):
    path = tmp_path / "r.jsonl"
    data = _fill(path, 2)
    path.write_bytes(data + data.split(b"\n")[1] + b"\n")
    with pytest.raises(JaxfaultError, match="line 4 repeats the row id 'p0' of line 2"):
        ResultsFile.open(path, IDENTITY)


def test_gap3_identity_mismatch_names_the_fields(tmp_path):
    path = tmp_path / "r.jsonl"
    data = _fill(path, 2)
    with pytest.raises(JaxfaultError) as e:
        ResultsFile.open(path, {**IDENTITY, "trials": 2, "seed": 1})
    msg = str(e.value)
    assert "trials: file has 4, this run has 2" in msg and "seed: file has 0, this run has 1" in msg
    assert "model" not in msg and "\n" not in msg
    with pytest.raises(JaxfaultError, match="extra: file has \"<absent>\""):
        ResultsFile.open(path, {**IDENTITY, "extra": True}, dry_run=True)
    assert path.read_bytes() == data


def _hold(path, ready, release):
    with ResultsFile.open(path, IDENTITY) as rf:
        rf.append("from-child", {"x": 1})
        ready.set()
        release.wait(20)


def _release_later(release):
    time.sleep(0.5)
    release.set()


def test_gap4_a_second_run_is_refused_while_the_first_holds_the_file(tmp_path):
    path = tmp_path / "r.jsonl"
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may run JAX threads
    ready, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold, args=(path, ready, release))
    child.start()
    try:
        assert ready.wait(20)
        with pytest.raises(JaxfaultError, match="in use by another run"):
            ResultsFile.open(path, IDENTITY)
        # a dry run only reads: it is allowed and sees the committed row
        assert list(ResultsFile.open(path, IDENTITY, dry_run=True).rows()) == ["from-child"]
    finally:
        release.set()
        child.join(20)
    with ResultsFile.open(path, IDENTITY, wait=True) as rf:  # released: opens, sees the row
        assert list(rf.rows()) == ["from-child"]


def test_wait_blocks_until_the_lock_is_released(tmp_path):
    path = tmp_path / "r.jsonl"
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may run JAX threads
    ready, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold, args=(path, ready, release))
    child.start()
    assert ready.wait(20)
    t0 = time.monotonic()
    ctx.Process(target=_release_later, args=(release,)).start()
    with ResultsFile.open(path, IDENTITY, wait=True) as rf:
        assert time.monotonic() - t0 >= 0.4 and "from-child" in rf
        rf.append("after", {"x": 2})
    child.join(20)
    assert path.read_text().count("\n") == 3


def test_new_file_honours_umask_and_torn_header_is_restarted(tmp_path):
    old = os.umask(0o027)
    try:
        path = tmp_path / "r.jsonl"
        _fill(path, 1)
        assert path.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
    torn = tmp_path / "t.jsonl"
    torn.write_bytes(b'{"jaxfault_results": 1, "identity": {"mod')
    with ResultsFile.open(torn, IDENTITY) as rf:
        assert rf.rows() == {}
    assert torn.read_bytes() == b""  # the torn header is cut; the new one comes with the first row
    with ResultsFile.open(torn, IDENTITY) as rf:
        rf.append("a", {"x": 1})
    assert json.loads(torn.read_text().splitlines()[0])["identity"] == IDENTITY


def test_missing_file_without_create_and_non_regular_paths(tmp_path):
    with pytest.raises(JaxfaultError, match="does not exist"):
        ResultsFile.open(tmp_path / "none.jsonl", IDENTITY, create=False)
    with pytest.raises(JaxfaultError, match="not a regular file"):
        ResultsFile.open(tmp_path, IDENTITY)


def test_row_id_is_canonical():
    import numpy as np

    a = row_id({"ber": 1e-3, "scheme": "sparrow"})
    assert a == row_id({"scheme": "sparrow", "ber": np.float64(1e-3)}) and len(a) == 16
    assert a != row_id({"ber": 1e-3, "scheme": "secded"})
