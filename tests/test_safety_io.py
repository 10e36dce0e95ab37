"""jaxfault.core.io: output paths validated before work, atomic writes honour the umask."""
import os

import pytest

from jaxfault.core.errors import JaxfaultError
from jaxfault.core.io import atomic_write_json, atomic_write_text, check_output_path


def test_check_output_path_files(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert check_output_path(tmp_path / "new" / "deeper" / "r.json") == tmp_path / "new" / "deeper" / "r.json"
    assert not (tmp_path / "new").exists()  # validation creates nothing
    cases = [(afile / "r.json", "cannot create .*afile/r.json: .*afile is a file"),
             (afile / "a" / "b.json", "afile is a file"),
             (afile, "already exists \\(set `overwrite` to replace it\\)"),
             (tmp_path, "is a directory, expected a file path"), ("", "needs a path")]
    for path, match in cases:
        with pytest.raises(JaxfaultError, match=match) as e:
            check_output_path(path, flag="--json")
        assert str(e.value).startswith("--json ") and "\n" not in str(e.value)
    assert check_output_path(afile, overwrite=True) == afile


def test_check_output_path_dirs(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_output_path(empty, kind="dir") == empty
    full = tmp_path / "full"
    full.mkdir()
    (full / "f").write_text("x")
    with pytest.raises(JaxfaultError, match="not empty"):
        check_output_path(full, kind="dir")
    assert check_output_path(full, kind="dir", overwrite=True) == full
    with pytest.raises(JaxfaultError, match="is a file, expected a directory"):
        check_output_path(afile, kind="dir", overwrite=True)
    with pytest.raises(ValueError):
        check_output_path(afile, kind="folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_check_output_path_unwritable(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(JaxfaultError, match="is not writable"):
            check_output_path(locked / "r.json")
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_honour_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        a = atomic_write_json(tmp_path / "a.json", {"x": 1})
        b = atomic_write_text(tmp_path / "sub" / "b.txt", "y")
    finally:
        os.umask(old)
    assert a.stat().st_mode & 0o777 == mode and b.stat().st_mode & 0o777 == mode


def test_atomic_write_under_a_file_is_one_line(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(JaxfaultError, match="a parent of it is a file"):
        atomic_write_text(afile / "r.txt", "y")
