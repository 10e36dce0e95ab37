"""Output files: validated before any work (proven creatable by a probe), written atomically (temporary sibling, fsync, rename),
created with the permissions the umask allows."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from jaxfault.core.errors import JaxfaultError


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (else set and restored)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _first_existing_ancestor(path: Path) -> Path:
    for parent in path.parents:
        if parent.exists() or parent == parent.parent:
            return parent
    return Path(path.anchor or ".")


def _probe_creatable(folder: Path, target: Path | None) -> None:
    """Create folder (with its missing parents) and a probe file in it, then remove the probe and
    exactly the folders created here: the proof that the write at the end can happen. target, when
    given, is the file itself (absent): probed under its own name, so a name the file system refuses
    is found too. An OSError propagates."""
    missing = []
    d = folder
    while not (d.exists() or d.is_symlink()) and d != d.parent:
        missing.append(d)
        d = d.parent
    created: list[Path] = []
    try:
        for d in reversed(missing):
            try:
                os.mkdir(d)
            except FileExistsError:
                if not d.is_dir():
                    raise
                continue  # made meanwhile by someone else: not ours to remove
            created.append(d)
        if target is not None:
            try:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # appeared meanwhile: the final write replaces it atomically
                fd, probe = tempfile.mkstemp(prefix=".jaxfault-probe-", dir=folder)
            else:
                probe = str(target)
        else:
            fd, probe = tempfile.mkstemp(prefix=".jaxfault-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    finally:
        for d in reversed(created):
            try:
                os.rmdir(d)
            except OSError:
                pass


def check_output_folder(out, names, *, overwrite: bool = False, flag: str | None = None) -> list[Path]:
    """The folder `out` and the files `names` a run writes into it, checked before any work
    (check_output_path: the folder not a file and creatable, each file not a folder, and an
    existing file refused unless overwrite; other files in the folder are never looked at).
    Returns the files' paths."""
    folder = check_output_path(out, overwrite=True, kind="dir", flag=flag)
    return [check_output_path(folder / name, overwrite=overwrite, flag=flag) for name in names]


def check_output_path(path, *, overwrite: bool = False, kind: str = "file", flag: str | None = None) -> Path:
    """Validate an output path before any work is done and return it as a Path; leave nothing behind.

    kind "file": the target must not be a directory; an existing file is refused unless overwrite.
    kind "dir": the target must not be a file; an existing non-empty directory is refused unless
    overwrite. In both cases the target is proven creatable: the missing folders are created and a
    probe file is written where the output will go, then the probe and exactly the folders created
    are removed, so that the write at the end cannot fail for a reason knowable at the start (a
    path under a file, an unwritable folder, a file system that takes no new entries).
    flag (e.g. "--json") prefixes the one-line JaxfaultError.
    """
    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir', got {kind!r}")
    what = f"{flag} " if flag else ""
    if path is None or str(path) == "":
        raise JaxfaultError(f"{what}needs a path, got an empty one")
    p = Path(path)
    target = None
    try:
        exists = p.exists() or p.is_symlink()
    except OSError as e:  # e.g. a name too long to look up
        raise JaxfaultError(f"{what}cannot create {p}: {e.strerror or e}") from None
    if exists:
        if kind == "file" and p.is_dir():
            raise JaxfaultError(f"{what}{p} is a directory, expected a file path")
        if kind == "dir" and not p.is_dir():
            raise JaxfaultError(f"{what}{p} is a file, expected a directory")
        if not overwrite:
            if kind == "file":
                raise JaxfaultError(f"{what}{p} already exists (set `overwrite` to replace it)")
            if any(p.iterdir()):
                raise JaxfaultError(f"{what}{p} already exists and is not empty (set `overwrite` to replace it)")
        writable_dir = p if kind == "dir" else p.parent
        folder = writable_dir
    else:
        writable_dir = _first_existing_ancestor(p.absolute())
        if not writable_dir.is_dir():
            raise JaxfaultError(f"{what}cannot create {p}: {writable_dir} is a file, not a directory")
        folder = p.absolute() if kind == "dir" else p.absolute().parent
        target = None if kind == "dir" else p.absolute()
    if not os.access(writable_dir, os.W_OK | os.X_OK):
        raise JaxfaultError(f"{what}cannot write {p}: {writable_dir} is not writable")
    try:
        _probe_creatable(folder, target)
    except OSError as e:
        where = f" ({e.filename})" if e.filename and str(e.filename) != str(p) else ""
        raise JaxfaultError(f"{what}cannot create {p}: {e.strerror or e}{where}") from None
    return p


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write data to path so that readers see either the old file or the complete new one.

    The file gets mode 0666 minus the umask, as an ordinary open() would create it.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise JaxfaultError(f"cannot write {path}: a parent of it is a file") from None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(directory) -> None:
    """fsync a directory so that renames inside it survive a crash (ignored where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write a UTF-8 text file."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """Convert numpy/JAX scalars and arrays inside obj to plain Python for json.dumps."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "__array__") and not isinstance(obj, (str, bytes)):
        arr = np.asarray(obj)
        return arr.item() if arr.ndim == 0 else arr.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write obj as indented JSON (numpy/JAX values converted)."""
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def atomic_savefig(fig, path: str | os.PathLike, **kwargs) -> Path:
    """Atomically save a matplotlib figure (format taken from the path's suffix)."""
    import io as _io

    path = Path(path)
    buf = _io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", **kwargs)
    return atomic_write_bytes(path, buf.getvalue())
