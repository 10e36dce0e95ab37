"""Checkpoints: arrays written by orbax-checkpoint, a SHA-256 of every array, and a small JSON.

Layout of a checkpoint directory DIR (format 3):
    DIR/jaxfault.json      {"format": 3, "kind", "config", "metrics", "arrays_dir",
                            "arrays": [{"path": [key, ...], "name", "dtype", "shape", "sha256"}, ...]}
    DIR/orbax-<id>/        an orbax-checkpoint tree (StandardCheckpointer) holding the arrays of
                           a nested dict of arrays ({'params', maybe 'batch_stats'} or any dict
                           tree) as one flat dict, each array under its position's name

Integrity: the SHA-256 of every array (its dtype name, shape and C-order bytes) is recorded in
jaxfault.json and verified after orbax restores it, so flipped bytes (which orbax may decode into
different numbers without a word), truncation and deleted files are one-line errors. The metadata
that changes results (the configuration: quantization bits, a generator's bits and BER, the model;
the metrics and the array list too) is covered by "metadata_sha256", a SHA-256 of the canonical
JSON of everything else in jaxfault.json, verified whenever it is read: an edited jaxfault.json
is a one-line error, never a silently different model. Checkpoints saved before it existed carry
none and load as before.

Atomic replacement: orbax writes the new arrays into a temporary folder and renames it into place
when complete (its own finalize); only then is jaxfault.json replaced atomically to point at the
new folder, and only after that is the arrays folder of the replaced checkpoint removed. A kill at
any instant leaves jaxfault.json naming a complete set of arrays: the old one or the new one.
Nothing else in DIR is touched, except folders this module wrote (the arrays folders of older
saves, which carry this module's marker file, and the format-1 'variables' folder).

Formats 2 (one .npy file per array with its SHA-256) and 1 (an orbax tree in DIR/variables, no
checksums) are still read.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import io as _io
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from jaxfault.core.errors import JaxfaultError, one_line
from jaxfault.core.io import atomic_write_json, fsync_dir

META_FILE = "jaxfault.json"
FORMAT_VERSION = 3
READ_FORMATS = (1, 2, 3)
ARRAYS_PREFIX = "arrays-"           # format 2's .npy folders
ORBAX_PREFIX = "orbax-"             # format 3's orbax trees
ARRAYS_MARKER = ".jaxfault-arrays"  # marks an arrays folder as written by save_checkpoint
ORBAX_TMP = ".orbax-checkpoint-tmp"  # orbax's name for a save that has not been finalized
LEGACY_VARIABLES = "variables"


@dataclasses.dataclass
class Checkpoint:
    """A loaded checkpoint: model (None for non-classifier kinds), variables, config, metrics."""

    model: Any
    variables: dict
    config: dict
    metrics: dict
    path: Path


def _flatten(tree, prefix=()) -> list[tuple[tuple[str, ...], np.ndarray]]:
    """(key path, array) pairs of a nested dict of arrays, in sorted key order."""
    if isinstance(tree, dict):
        if not tree and prefix:
            return [(prefix, None)]  # an empty sub-dict (e.g. no batch_stats) is kept as such
        out = []
        for k in sorted(tree, key=str):
            if not isinstance(k, str):
                raise JaxfaultError(f"checkpoint keys must be strings, got {k!r} at {'/'.join(prefix) or 'the root'}")
            out.extend(_flatten(tree[k], prefix + (k,)))
        return out
    if hasattr(tree, "items") and not hasattr(tree, "shape"):  # FrozenDict and other mappings
        return _flatten(dict(tree.items()), prefix)
    if tree is None or isinstance(tree, (list, tuple)):
        raise JaxfaultError(f"checkpoint trees are nested dicts of arrays; {'/'.join(prefix)} is a {type(tree).__name__}")
    return [(prefix, np.asarray(tree))]


def _unflatten(pairs) -> dict:
    root: dict = {}
    for path, arr in pairs:
        node = root
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = {} if arr is None else arr
    return root


def array_digest(arr: np.ndarray) -> str:
    """Hex SHA-256 of an array's dtype name, shape and C-order bytes."""
    a = np.ascontiguousarray(arr)
    h = hashlib.sha256(f"{a.dtype.name}{list(a.shape)}\n".encode())
    h.update(a.tobytes())
    return h.hexdigest()


META_DIGEST = "metadata_sha256"


def metadata_digest(meta: dict) -> str:
    """Hex SHA-256 of the canonical JSON (sorted keys, no spaces, as it reads back) of a
    jaxfault.json mapping without its own META_DIGEST entry."""
    from jaxfault.core.io import to_jsonable

    body = {k: v for k, v in meta.items() if k != META_DIGEST}
    canonical = json.loads(json.dumps(to_jsonable(body)))
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _read_meta_quiet(directory: Path) -> dict | None:
    try:
        data = json.loads((directory / META_FILE).read_text())
        return data if isinstance(data, dict) else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def save_checkpoint(directory, variables, config: dict, metrics: dict | None = None) -> Path:
    """Save variables (a nested dict of arrays) and the JSON metadata into directory, atomically
    replacing a checkpoint already there (see the module docstring); return the directory."""
    directory = Path(directory).absolute()
    if "kind" not in config:
        raise JaxfaultError("checkpoint config needs a 'kind' entry")
    pairs = _flatten(jax_to_host(variables))
    if directory.exists() and not directory.is_dir():
        raise JaxfaultError(f"cannot save a checkpoint to {directory}: it is a file")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise JaxfaultError(f"cannot save a checkpoint to {directory}: a parent of it is a file") from None
    # concurrent saves into one folder take turns (flock on the folder itself), so that one save's
    # clean-up can never remove the arrays that another save's jaxfault.json is about to name
    lock_fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        _save_locked(directory, pairs, config, metrics)
    finally:
        os.close(lock_fd)
    return directory


def _save_locked(directory: Path, pairs, config: dict, metrics: dict | None) -> None:
    import orbax.checkpoint as ocp

    old = _read_meta_quiet(directory)
    arrays_dir = f"{ORBAX_PREFIX}{uuid.uuid4().hex[:12]}"
    entries, empty, flat = [], [list(path) for path, arr in pairs if arr is None], {}
    for i, (path, arr) in enumerate((path, arr) for path, arr in pairs if arr is not None):
        name = f"a{i:05d}"
        flat[name] = arr
        entries.append({"path": list(path), "name": name, "dtype": arr.dtype.name, "shape": list(arr.shape),
                        "sha256": array_digest(arr)})
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory / arrays_dir, flat)
        ckptr.wait_until_finished()
    (directory / arrays_dir / ARRAYS_MARKER).write_bytes(b"")
    fsync_dir(directory / arrays_dir)
    fsync_dir(directory)
    meta = {"format": FORMAT_VERSION, "kind": config["kind"], "config": config, "metrics": metrics or {},
            "arrays_dir": arrays_dir, "arrays": entries, "empty_dicts": empty}
    atomic_write_json(directory / META_FILE, {**meta, META_DIGEST: metadata_digest(meta)})
    # the new checkpoint is complete and in force: remove what the replaced one (or killed saves) left
    for child in directory.iterdir():
        ours = (child / ARRAYS_MARKER).exists() or (child.name.startswith(ORBAX_PREFIX) and ORBAX_TMP in child.name)
        if child.name.startswith((ARRAYS_PREFIX, ORBAX_PREFIX)) and child.name != arrays_dir and ours:
            shutil.rmtree(child, ignore_errors=True)
    if old is not None and old.get("format") == 1 and (directory / LEGACY_VARIABLES).is_dir():
        shutil.rmtree(directory / LEGACY_VARIABLES, ignore_errors=True)


def jax_to_host(tree):
    """A nested dict of device arrays as numpy arrays (dict structure kept)."""
    if isinstance(tree, dict) or (hasattr(tree, "items") and not hasattr(tree, "shape")):
        return {k: jax_to_host(v) for k, v in tree.items()}
    return tree if tree is None or isinstance(tree, (list, tuple)) else np.asarray(tree)


def read_metadata(directory) -> dict:
    """Read and validate DIR/jaxfault.json, with one-line errors for missing or corrupt files."""
    directory = Path(directory)
    if not directory.exists():
        raise JaxfaultError(f"checkpoint {directory} does not exist")
    if not directory.is_dir():
        raise JaxfaultError(f"checkpoint {directory} is a file, not a checkpoint directory")
    meta = directory / META_FILE
    if not meta.is_file():
        raise JaxfaultError(f"{directory} is not a complete jaxfault checkpoint (no {META_FILE})")
    try:
        data = json.loads(meta.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise JaxfaultError(f"checkpoint metadata {meta} is corrupt: {one_line(e)}") from None
    if not isinstance(data, dict) or "kind" not in data or not isinstance(data.get("config"), dict):
        raise JaxfaultError(f"checkpoint metadata {meta} is corrupt: missing 'kind' or 'config'")
    if META_DIGEST in data and data[META_DIGEST] != metadata_digest(data):
        raise JaxfaultError(f"checkpoint metadata {meta} was edited after saving (its {META_DIGEST} does not match "
                            f"its contents): its configuration may no longer describe the arrays; restore the "
                            f"saved file or save the checkpoint again")
    fmt = data.get("format", 1)
    if fmt not in READ_FORMATS:
        raise JaxfaultError(f"checkpoint {directory} has format {fmt!r}; this jaxfault reads formats 1, 2 and 3")
    if fmt in (2, 3) and not isinstance(data.get("arrays"), list):
        raise JaxfaultError(f"checkpoint metadata {meta} is corrupt: no 'arrays' list")
    return data


def _orbax_restore(target: Path):
    """The tree orbax restores from target, with a one-line error for a damaged one."""
    import orbax.checkpoint as ocp

    try:
        with ocp.StandardCheckpointer() as ckptr:
            return ckptr.restore(target)
    except Exception as e:  # orbax and tensorstore raise many kinds of errors for damaged trees
        raise JaxfaultError(f"checkpoint arrays in {target} cannot be read "
                            f"({type(e).__name__}: {one_line(e)[:160]})") from None


def _load_arrays_v3(directory: Path, meta: dict) -> dict:
    rel = meta.get("arrays_dir")
    if not isinstance(rel, str) or not rel.startswith(ORBAX_PREFIX) or "/" in rel or rel in (".", ".."):
        raise JaxfaultError(f"checkpoint metadata {directory / META_FILE} is corrupt: arrays folder {rel!r}")
    target = directory / rel
    if not target.is_dir():
        raise JaxfaultError(f"checkpoint arrays folder {target} is missing")
    flat = _orbax_restore(target)
    pairs = []
    for entry in meta["arrays"]:
        try:
            name, path, digest = entry["name"], tuple(entry["path"]), entry["sha256"]
            dtype, shape = str(entry["dtype"]), tuple(entry["shape"])
        except (KeyError, TypeError, ValueError):
            raise JaxfaultError(f"checkpoint metadata {directory / META_FILE} is corrupt: bad array entry") from None
        if not isinstance(flat, dict) or name not in flat:
            raise JaxfaultError(f"checkpoint arrays in {target} lack array {name!r} ({'/'.join(map(str, path))})")
        arr = np.asarray(flat[name])
        if arr.dtype.name != dtype or arr.shape != shape:
            raise JaxfaultError(f"checkpoint array {'/'.join(map(str, path))} in {target} holds {arr.dtype.name}"
                                f"{list(arr.shape)}, {META_FILE} says {dtype}{list(shape)}")
        if array_digest(arr) != digest:
            raise JaxfaultError(f"checkpoint array {'/'.join(map(str, path))} in {target} is damaged (its SHA-256 "
                                f"differs from the one recorded in {META_FILE})")
        pairs.append((path, arr))
    for path in meta.get("empty_dicts", []):
        pairs.append((tuple(path), None))
    return _unflatten(pairs)


def _load_arrays_v2(directory: Path, meta: dict) -> dict:
    pairs = []
    for entry in meta["arrays"]:
        try:
            rel, path, digest = entry["file"], tuple(entry["path"]), entry["sha256"]
            dtype, shape = np.dtype(entry["dtype"]), tuple(entry["shape"])
        except (KeyError, TypeError, ValueError):
            raise JaxfaultError(f"checkpoint metadata {directory / META_FILE} is corrupt: bad array entry") from None
        f = directory / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise JaxfaultError(f"checkpoint metadata {directory / META_FILE} is corrupt: array file {rel!r}")
        try:
            data = f.read_bytes()
        except FileNotFoundError:
            raise JaxfaultError(f"checkpoint array file {f} is missing") from None
        except OSError as e:
            raise JaxfaultError(f"checkpoint array file {f} cannot be read: {one_line(e)}") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise JaxfaultError(f"checkpoint array file {f} is damaged (its SHA-256 differs from the one "
                                f"recorded in {META_FILE})")
        try:
            arr = np.load(_io.BytesIO(data), allow_pickle=False)
        except Exception as e:  # a file whose checksum matches but is not an array: written by hand
            raise JaxfaultError(f"checkpoint array file {f} is not a numpy array: {one_line(e)}") from None
        if arr.dtype != dtype or arr.shape != shape:
            raise JaxfaultError(f"checkpoint array file {f} holds {arr.dtype}{list(arr.shape)}, "
                                f"{META_FILE} says {dtype}{list(shape)}")
        pairs.append((path, arr))
    for path in meta.get("empty_dicts", []):
        pairs.append((tuple(path), None))
    return _unflatten(pairs)


def _load_arrays_v1(directory: Path) -> dict:
    """Format 1: an orbax StandardCheckpointer tree in DIR/variables (no checksums)."""

    target = directory / LEGACY_VARIABLES
    if not target.is_dir():
        raise JaxfaultError(f"checkpoint arrays in {target} cannot be read (the folder is missing)")
    return jax_to_host(_orbax_restore(target))


def load_checkpoint(directory, kind: str = "classifier") -> Checkpoint:
    """Load a checkpoint of the given kind, verifying every array's checksum; for 'classifier' also
    rebuild the model and check that the arrays fit it."""
    import jax

    directory = Path(directory).absolute()
    meta = read_metadata(directory)
    if meta["kind"] != kind:
        raise JaxfaultError(f"checkpoint {directory} holds a {meta['kind']!r}, expected a {kind!r}")
    config = meta["config"]
    fmt = meta.get("format", 1)
    if fmt == 3:
        variables = _load_arrays_v3(directory, meta)
    elif fmt == 2:
        variables = _load_arrays_v2(directory, meta)
    else:
        variables = _load_arrays_v1(directory)
    model = None
    if kind == "classifier":
        from jaxfault.models import create_model, init_variables

        for field in ("model", "num_classes", "input_shape"):
            if field not in config:
                raise JaxfaultError(f"checkpoint metadata in {directory} lacks {field!r}")
        model = create_model(config["model"], int(config["num_classes"]), config.get("quant_bits"))
        expected = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), tuple(config["input_shape"])))
        got_struct = jax.tree_util.tree_structure(variables)
        if got_struct != jax.tree_util.tree_structure(expected) or any(
                a.shape != b.shape for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(expected))):
            raise JaxfaultError(f"checkpoint {directory} does not match model {config['model']!r} "
                                f"with input {tuple(config['input_shape'])} (parameters differ)")
    return Checkpoint(model=model, variables=dict(variables), config=config, metrics=meta.get("metrics", {}),
                      path=directory)


def is_checkpoint(directory) -> bool:
    """Whether directory holds a jaxfault checkpoint (its jaxfault.json exists)."""
    return (Path(directory) / META_FILE).is_file()


def check_checkpoint_output(directory, *, overwrite: bool = False, flag: str = "`out`") -> Path:
    """Validate, before any work, a directory that a checkpoint will be saved into.

    Refused with a one-line JaxfaultError: a path that is a file or lies under one, an unwritable
    location, an existing checkpoint (unless overwrite: it is then replaced atomically at save
    time), and an existing non-empty folder that is not a checkpoint (unless overwrite: the save
    then adds its files and touches nothing else there).
    """
    from jaxfault.core.io import check_output_path

    p = Path(directory)
    if is_checkpoint(p) and not overwrite:
        raise JaxfaultError(f"{flag} {p} already holds a checkpoint (set `overwrite` to replace it)")
    if p.is_dir() and not overwrite and any(p.iterdir()):
        raise JaxfaultError(f"{flag} {p} is a non-empty folder that is not a checkpoint "
                            f"(set `overwrite` to save into it anyway)")
    return check_output_path(p, overwrite=True, kind="dir", flag=flag)


def checkpoint_digest(directory) -> str:
    """A SHA-256 identifying a checkpoint's contents: of its arrays' checksums (formats 2 and 3) or
    of its jaxfault.json (format 1), for recording which checkpoint produced a result."""
    meta = read_metadata(directory)
    h = hashlib.sha256()
    if meta.get("format", 1) in (2, 3):
        for e in meta["arrays"]:
            h.update(("/".join(e["path"]) + ":" + e["sha256"] + "\n").encode())
    else:
        h.update((Path(directory) / META_FILE).read_bytes())
    return h.hexdigest()
