"""Results files of resumable runs (campaigns): JSON lines with a header, rows keyed by id, a lock.

Layout:
    line 1     {"jaxfault_results": 1, "identity": {...}}
    line 2...  {"id": "<row id>", ...the row's fields...}

The identity is what the caller says determines every row's numbers apart from the row's own id
(model, checkpoint digest, eval examples, data, seed, trials, precision, ...). A run whose identity
differs from the file's is refused with a message listing the differing fields, so rows computed
under other settings are never reused or mixed.

Safety rules:
- a file that is not a jaxfault results file (no header line) is never modified: opening it is an
  error. A 0-byte file, or a lone header torn by a kill before its newline, counts as new;
- while open for appending, an exclusive lock (fcntl.flock on the file) is held, so a second run
  on the same file errors at once (or waits, with wait=True) instead of computing the same rows;
- every row is one os.write of one line, then fsync: a kill leaves at most a torn last line (no
  newline), which the next open for appending cuts off;
- the header is written with the first row (in the same write), so a run that fails before its
  first row leaves no header-only file: a file (and its folders) that the open created and that
  holds no row is removed again on close;
- any other unreadable line, or a row id that appears twice, is an error naming the line: rows
  after it are never dropped;
- dry_run=True validates the file (if any) and reads its rows, and neither creates nor modifies it.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
from pathlib import Path
from typing import Any, Mapping

from jaxfault.core.errors import JaxfaultError, one_line, plain
from jaxfault.core.io import to_jsonable

HEADER_KEY = "jaxfault_results"
RESULTS_VERSION = 1


def _canonical(obj: Any) -> Any:
    """obj as it reads back from JSON (tuples -> lists, numpy -> Python), for comparisons."""
    return json.loads(json.dumps(to_jsonable(obj), sort_keys=True))


def row_id(params: Mapping) -> str:
    """A stable id for a row from the parameters that distinguish it within one identity (e.g. a
    grid point): the first 16 hex digits of the SHA-256 of their canonical JSON."""
    import hashlib

    return hashlib.sha256(json.dumps(_canonical(dict(params)), sort_keys=True).encode()).hexdigest()[:16]


def identity_differences(stored: Mapping, wanted: Mapping) -> list[str]:
    """'field: file has X, this run has Y' for every field where two identities differ."""
    out = []
    for key in sorted(set(stored) | set(wanted)):
        a = stored.get(key, "<absent>")
        b = wanted.get(key, "<absent>")
        if a != b:
            out.append(f"{key}: file has {json.dumps(a)}, this run has {json.dumps(b)}")
    return out


class ResultsFile:
    """An open results file: rows() read at open, append() adds a row. Use ResultsFile.open()."""

    def __init__(self, path: Path, identity: dict, rows: dict[str, dict], fd: int | None, dry_run: bool,
                 pending_header: bytes | None = None, created: list[Path] | None = None):
        self.path = path
        self.identity = identity
        self._rows = rows
        self._fd = fd
        self.dry_run = dry_run
        self._pending_header = pending_header  # written with the first row
        self._created = created or []          # the file and folders this open made, removed if no row comes

    # ---------------------------------------------------------------------------------- opening
    @classmethod
    def open(cls, path, identity: Mapping, *, create: bool = True, dry_run: bool = False,
             wait: bool = False) -> "ResultsFile":
        """Open (or, with create, start) the results file at path for a run with this identity.

        Raises a one-line JaxfaultError if path is not a jaxfault results file, if its identity
        differs (naming the fields), if a line other than a torn last one is corrupt (naming the
        line), if another process holds the file (unless wait), or if it is missing and not create.
        """
        path = Path(path)
        identity = _canonical(dict(identity))
        if path.exists() and not path.is_file():
            raise JaxfaultError(f"results file {path} is not a regular file")
        if dry_run or not path.exists():
            if not path.exists():
                if dry_run or not create:
                    if not create and not dry_run:
                        raise JaxfaultError(f"results file {path} does not exist")
                    return cls(path, identity, {}, None, dry_run)
            else:
                data = path.read_bytes()
                rows = cls._parse(path, data, identity, fix_torn=False)[0]
                return cls(path, identity, rows, None, True)
        fd, created = cls._open_locked(path, wait)
        pending = None
        try:
            data = _read_all(fd)
            rows, good_end, need_header = cls._parse(path, data, identity, fix_torn=True)
            if need_header:
                if data:  # a header torn by a kill
                    os.ftruncate(fd, 0)
                    os.fsync(fd)
                pending = (json.dumps({HEADER_KEY: RESULTS_VERSION, "identity": identity}) + "\n").encode()
            elif good_end != len(data):
                os.ftruncate(fd, good_end)
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            _remove_created(created)
            raise
        return cls(path, identity, rows, fd, False, pending, created)

    @classmethod
    def check(cls, path) -> None:
        """Refuse, before any work and whatever the run's identity, a path that a run could not
        use as its results file: not a regular file, or a file that is not a jaxfault results file
        (or is corrupt). A missing path passes; nothing is created or modified."""
        path = Path(path)
        if not path.exists():
            return
        if not path.is_file():
            raise JaxfaultError(f"results file {path} is not a regular file")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise JaxfaultError(f"cannot read results file {path}: {e.strerror}") from None
        cls._parse(path, data, None, fix_torn=False)

    @staticmethod
    def _open_locked(path: Path, wait: bool) -> tuple[int, list[Path]]:
        """(fd holding the file's lock, the paths created to open it: missing folders, then the file)."""
        missing = [d for d in path.parents if not d.exists()]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise JaxfaultError(f"cannot open results file {path}: {e.strerror}") from None
        while True:
            created = list(reversed(missing))
            try:
                try:
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o666)
                    created.append(path)
                except FileExistsError:
                    fd = os.open(path, os.O_RDWR | os.O_APPEND)
            except OSError as e:
                _remove_created(created)
                raise JaxfaultError(f"cannot open results file {path}: {e.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except OSError as e:
                os.close(fd)
                _remove_created(created)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise JaxfaultError(f"results file {path} is in use by another run (it holds the file's lock); "
                                        f"wait for it to finish or choose another output") from None
                raise JaxfaultError(f"cannot lock results file {path}: {e.strerror}") from None
            try:  # the run that held the lock may have removed its empty file meanwhile: open again
                st, now = os.fstat(fd), os.stat(path)
                same = (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)
            except FileNotFoundError:
                same = False
            if same:
                return fd, created
            os.close(fd)
            missing = [d for d in path.parents if not d.exists()]
            path.parent.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _parse(path: Path, data: bytes, identity: dict | None, fix_torn: bool) -> tuple[dict, int, bool]:
        """(rows, length of the intact prefix, whether the header must be (re)written); identity
        None checks the file's form only."""
        if not data:
            return {}, 0, True
        first_nl = data.find(b"\n")
        if first_nl < 0:  # one line without newline: a header torn by a kill, or not ours at all
            if data.startswith(b'{"' + HEADER_KEY.encode() + b'"'):
                return {}, 0, True
            raise JaxfaultError(f"{path} is not a jaxfault results file (no header line); "
                                f"refusing to touch it: choose another output")
        try:
            header = json.loads(data[:first_nl])
        except (json.JSONDecodeError, UnicodeDecodeError):
            header = None
        if not isinstance(header, dict) or HEADER_KEY not in header:
            old = isinstance(header, dict) and "point_id" in header
            raise JaxfaultError(f"{path} is not a jaxfault results file (no header line"
                                f"{'; it looks like a results file of an older jaxfault' if old else ''}); "
                                f"refusing to touch it: move it away or choose another output")
        if header[HEADER_KEY] != RESULTS_VERSION:
            raise JaxfaultError(f"results file {path} has version {plain(header[HEADER_KEY])!r}; "
                                f"this jaxfault writes version {RESULTS_VERSION}")
        stored = header.get("identity")
        if not isinstance(stored, dict):
            raise JaxfaultError(f"results file {path}: line 1 (header) has no identity object")
        diffs = [] if identity is None else identity_differences(stored, identity)
        if diffs:
            raise JaxfaultError(f"results file {path} was written by a run with other settings ("
                                + "; ".join(diffs) + "); its rows do not apply: choose another output")
        rows: dict[str, dict] = {}
        where = {}
        offset = first_nl + 1
        line_no = 1
        good_end = offset
        while offset < len(data):
            line_no += 1
            nl = data.find(b"\n", offset)
            if nl < 0:  # torn last line: a kill during the append
                break
            raw = data[offset:nl]
            try:
                rec = json.loads(raw)
                if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
                    raise ValueError("not an object with a string 'id'")
            except (ValueError, UnicodeDecodeError) as e:
                raise JaxfaultError(f"results file {path}: line {line_no} is corrupt ({one_line(e)[:80]}); "
                                    f"repair or remove that line (no row was dropped)") from None
            rid = rec.pop("id")
            if rid in rows:
                raise JaxfaultError(f"results file {path}: line {line_no} repeats the row id {rid!r} "
                                    f"of line {where[rid]}")
            rows[rid], where[rid] = rec, line_no
            offset = nl + 1
            good_end = offset
        return rows, good_end, False

    # ---------------------------------------------------------------------------------- use
    def rows(self) -> dict[str, dict]:
        """The rows in the file (and those appended since), by id, in file order."""
        return dict(self._rows)

    def __contains__(self, row_id: str) -> bool:
        return row_id in self._rows

    def append(self, row_id: str, row: Mapping) -> None:
        """Append one row (one write of one line, then fsync)."""
        if self._fd is None:
            raise JaxfaultError(f"results file {self.path} is open for a dry run; nothing is written")
        if not isinstance(row_id, str):
            raise TypeError(f"row id must be a string, got {type(row_id).__name__}")
        if row_id in self._rows:
            raise JaxfaultError(f"results file {self.path} already holds row {row_id!r}")
        if "id" in row:
            raise ValueError("a row may not have its own 'id' field (the row id is stored there)")
        record = to_jsonable(dict(row))
        line = json.dumps({"id": row_id, **record}, sort_keys=True, allow_nan=True) + "\n"
        _write_line(self._fd, (self._pending_header or b"") + line.encode())
        self._pending_header = None
        self._created = []
        self._rows[row_id] = _canonical(record)

    def close(self) -> None:
        """Release the lock and close the file; a file this open created that holds no row is
        removed (with the folders created for it), so a failed run leaves nothing behind."""
        if self._fd is not None:
            try:
                if self._created and os.fstat(self._fd).st_size == 0:
                    _remove_created(self._created)   # still under the lock
                self._created = []
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> "ResultsFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _remove_created(created: list[Path]) -> None:
    """Remove what an open created (folders first made, then the file), newest first; a folder
    that others have filled meanwhile stays."""
    for p in reversed(created):
        try:
            if p.is_dir():
                os.rmdir(p)
            else:
                os.unlink(p)
        except OSError:
            pass


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _write_line(fd: int, line: bytes) -> None:
    view = memoryview(line)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    os.fsync(fd)
