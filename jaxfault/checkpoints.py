"""Checkpoints: orbax for the arrays plus a small JSON (kind, config, metrics).

Layout of a checkpoint directory DIR:
    DIR/variables/     orbax StandardCheckpointer tree ({'params', maybe 'batch_stats'} or any pytree)
    DIR/jaxfault.json  {"format": 1, "kind": ..., "config": {...}, "metrics": {...}}
The JSON is written last and atomically, so a directory without it is an incomplete checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxfault.errors import JaxfaultError
from jaxfault.io import atomic_write_json

META_FILE = "jaxfault.json"
FORMAT_VERSION = 1


@dataclasses.dataclass
class Checkpoint:
    """A loaded checkpoint: model (None for non-classifier kinds), variables, config, metrics."""

    model: Any
    variables: dict
    config: dict
    metrics: dict
    path: Path


def save_checkpoint(directory, variables, config: dict, metrics: dict | None = None) -> Path:
    """Save variables (any pytree of arrays) and the JSON metadata into directory (replaced if present)."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    if "kind" not in config:
        raise JaxfaultError("checkpoint config needs a 'kind' entry")
    directory.mkdir(parents=True, exist_ok=True)
    meta = directory / META_FILE
    if meta.exists():
        meta.unlink()  # the directory is incomplete until the new JSON lands
    target = directory / "variables"
    if target.exists():
        shutil.rmtree(target)
    host = jax.tree_util.tree_map(np.asarray, variables)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(target, host)
    ckptr.wait_until_finished()
    atomic_write_json(meta, {"format": FORMAT_VERSION, "kind": config["kind"], "config": config,
                             "metrics": metrics or {}})
    return directory


def read_metadata(directory) -> dict:
    """Read and validate DIR/jaxfault.json, with one-line errors for missing or corrupt files."""
    directory = Path(directory)
    if not directory.exists():
        raise JaxfaultError(f"checkpoint {directory} does not exist")
    meta = directory / META_FILE
    if not meta.is_file():
        raise JaxfaultError(f"{directory} is not a complete jaxfault checkpoint (no {META_FILE})")
    try:
        data = json.loads(meta.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise JaxfaultError(f"checkpoint metadata {meta} is corrupt: {e}") from None
    if not isinstance(data, dict) or "kind" not in data or "config" not in data:
        raise JaxfaultError(f"checkpoint metadata {meta} is corrupt: missing 'kind' or 'config'")
    return data


def load_checkpoint(directory, kind: str = "classifier") -> Checkpoint:
    """Load a checkpoint of the given kind; for 'classifier' also rebuild and verify the model."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    meta = read_metadata(directory)
    if meta["kind"] != kind:
        raise JaxfaultError(f"checkpoint {directory} holds a {meta['kind']!r}, expected a {kind!r}")
    config = meta["config"]
    try:
        variables = ocp.StandardCheckpointer().restore(directory / "variables")
    except Exception as e:  # orbax raises a variety of errors for damaged trees
        raise JaxfaultError(f"checkpoint arrays in {directory / 'variables'} cannot be read "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})") from None
    variables = jax.tree_util.tree_map(np.asarray, variables)
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
