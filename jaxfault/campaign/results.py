"""Campaign results file: append-only JSON lines, one record per grid point."""
from __future__ import annotations

import json
import os
from pathlib import Path

from jaxfault.errors import JaxfaultError


def read_results(path: Path) -> dict[str, dict]:
    """Completed records by point id; a torn (unterminated or unparsable) last line is cut off."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    done: dict[str, dict] = {}
    good_end = 0
    offset = 0
    for line in data.split(b"\n")[:-1]:  # the piece after the last newline is never complete
        end = offset + len(line) + 1
        try:
            rec = json.loads(line)
            done[rec["point_id"]] = rec
            good_end = end
        except (json.JSONDecodeError, KeyError, TypeError):
            break  # everything from the first bad line on is redone
        offset = end
    if good_end != len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
    return done


def append_record(path: Path, record: dict) -> None:
    """Append one JSON line with a single write and fsync (a kill leaves at most a torn last line)."""
    from jaxfault.io import to_jsonable

    line = (json.dumps(to_jsonable(record), sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def check_writable(path: Path) -> None:
    """Fail before any work if the results file cannot be created or appended to."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab"):
            pass
    except OSError as e:
        raise JaxfaultError(f"cannot write results file {str(path)!r}: {e.strerror}") from None
