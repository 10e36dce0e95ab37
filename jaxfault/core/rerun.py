"""Re-running a command: an existing result file may be replaced by a run of the same
configuration on the same checkpoint, since that run computes the same numbers; any other
existing file is refused unless the user asks to overwrite it.

A result file written through this module records its `config` (the command and its validated
settings) and `checkpoint_digest` (a digest of the model it evaluated). Before any work, the stored
pair is compared with the new run's: equal means the documented command can simply be repeated.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from jaxfault.core.errors import JaxfaultError
from jaxfault.core.io import check_output_path, to_jsonable


def checkpoint_digest(path) -> str | None:
    """A digest that changes when the model in folder `path` changes, or None when there is no
    such folder. A jaxfault checkpoint's `jaxfault.json` holds a SHA-256 of every array, so its own
    SHA-256 identifies the model; for other folders (Hugging Face) every file's name, size and
    modification time are hashed instead of reading gigabytes of weights."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_dir():
        return None
    h = hashlib.sha256()
    meta = p / "jaxfault.json"
    if meta.is_file():
        h.update(b"jaxfault.json\0" + meta.read_bytes())
        return "sha256:" + h.hexdigest()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return "files-sha256:" + h.hexdigest()


def canonical(obj) -> object:
    """obj as it reads back from JSON (tuples become lists, numpy scalars Python numbers), so that
    a stored configuration and a new one compare equal exactly when they hold the same values."""
    return json.loads(json.dumps(to_jsonable(obj), sort_keys=True))


def check_result_path(path, config: dict, digest: str | None, *, overwrite: bool = False,
                      flag: str | None = None) -> bool:
    """Validate result file `path` before any work; True when it exists and will be replaced by a
    run of the same configuration (`config`) on the same checkpoint (`digest`).

    Anything else that exists is refused unless overwrite, with a one-line error saying what
    differs; a path that cannot be written is refused as by jaxfault.core.io.check_output_path.
    """
    p = Path(path)
    if overwrite or not p.is_file():
        check_output_path(p, overwrite=overwrite, flag=flag)
        return False
    what = f"{flag} " if flag else ""
    try:
        stored = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        stored = None
    if not isinstance(stored, dict) or "config" not in stored:
        raise JaxfaultError(f"{what}{p} already exists and records no configuration to compare with "
                            f"(set `overwrite` to replace it)")
    if canonical(stored.get("config")) != canonical(config):
        old, new = stored.get("config") or {}, canonical(config)
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)) if isinstance(old, dict) else []
        differs = f" ({', '.join(keys[:4])} differ)" if keys else ""
        raise JaxfaultError(f"{what}{p} already exists with another configuration{differs} "
                            f"(set `overwrite` to replace it, or choose another `out`)")
    if digest is None or stored.get("checkpoint_digest") != digest:
        raise JaxfaultError(f"{what}{p} already exists and came from another model (its checkpoint changed or is "
                            f"not trained yet); set `overwrite` to replace it, or choose another `out`")
    check_output_path(p, overwrite=True, flag=flag)
    return True
