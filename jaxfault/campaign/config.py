"""Campaign configs: read, validate strictly before any work, and load the model and data.

    {"out": "runs/campaign",                    # the folder: results.jsonl (one row per grid point), campaign.png
     "checkpoint": null,                        # classifier dir; null = the cached default LeNet
     "seed": 0, "trials": 20, "eval_examples": 10000, "strategy": "auto", "precision": "highest",
     "data_dir": null,
     "ci_width": null, "max_trials": null,    # or: chunks of `trials` until the accuracy's half-width <= ci_width
     "task": null,                            # null: the checkpoint's kind; or classification / language_model
     "eval_windows": 32,                      # language models: validation windows of seq_len tokens evaluated
     "grid": [{"method": "sparrow", "scheme": ["sparrow", "secded", "none"], "ber": [1e-4, 1e-3]},
              {"method": "bitflip", "ber": [1e-5, 1e-4]}]}

List-valued fields of a grid entry are crossed (jaxfault.campaign.grid). A language model (an LM
checkpoint or Hugging Face folder, or "task": "language_model" for the cached default one) is
scored by perplexity on its first `eval_windows` validation windows; its points run a fixed number
of trials (no ci_width: the sequential rule stops on a bounded mean, and a perplexity is neither).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxfault.core import batching
from jaxfault.campaign import methods
from jaxfault.campaign.grid import expand_grid
from jaxfault.campaign.runner import EvalData
from jaxfault.training.checkpoints import checkpoint_digest
from jaxfault.core.config import read_json_object
from jaxfault.core.errors import JaxfaultError, nearest_hint
from jaxfault.core.keys import MAX_SEED, MAX_TRIALS
from jaxfault.core.precision import check_precision
from jaxfault.core.stats import check_sequential

RESULTS_FILE, PLOT_FILE = "results.jsonl", "campaign.png"     # what a campaign writes into its folder
DEFAULTS = {"out": "runs/campaign", "checkpoint": None, "seed": 0, "trials": 20,
            "eval_examples": 10000, "strategy": "auto", "precision": "highest", "data_dir": None,
            "ci_width": None, "max_trials": None, "task": None, "eval_windows": 32}
TASKS = ("classification", "language_model")
KNOWN_KEYS = set(DEFAULTS) | {"grid"}


def _positive_int(config, name, high: int | None = None):
    v = config[name]
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0 or (high is not None and v > high):
        bound = "" if high is None else f" (at most {high})"
        raise JaxfaultError(f"{name} must be a positive integer, got {json.dumps(v)}{bound}")


def _optional_str(config, name):
    v = config[name]
    if v is not None and not isinstance(v, str):
        raise JaxfaultError(f"{name} must be a string path or null, got {json.dumps(v)}")


def validate_config(config: dict) -> dict:
    """The config with defaults filled in; every field and grid point checked (one-line errors)."""
    if not isinstance(config, dict):
        raise JaxfaultError("campaign config must be a JSON object")
    if "output" in config:
        raise JaxfaultError('campaign config: the field "output" (a results file) is now "out", a folder: the '
                            f"results are OUT/{RESULTS_FILE}")
    for k in config:
        if k not in KNOWN_KEYS:
            raise JaxfaultError(f"unknown campaign config key {k!r}{nearest_hint(k, sorted(KNOWN_KEYS))}; "
                                f"known keys: {', '.join(sorted(KNOWN_KEYS))}")
    if "grid" not in config:
        raise JaxfaultError("campaign config needs a 'grid' list")
    config = {**DEFAULTS, **config}
    _positive_int(config, "trials", MAX_TRIALS)
    _positive_int(config, "eval_examples")
    if config["max_trials"] is not None:
        _positive_int(config, "max_trials", MAX_TRIALS)
    seed = config["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise JaxfaultError(f"seed must be a non-negative integer, got {json.dumps(seed)} (at most {MAX_SEED}: "
                            f"the key derivation takes 32 bits)")
    for name in ("checkpoint", "data_dir"):
        _optional_str(config, name)
    if not isinstance(config["out"], str) or not config["out"]:
        raise JaxfaultError(f"out must be a folder path string, got {json.dumps(config['out'])}")
    for name in ("strategy", "precision"):
        if not isinstance(config[name], str):
            raise JaxfaultError(f"{name} must be a string, got {json.dumps(config[name])}")
    batching.resolve_strategy(config["strategy"])
    check_precision(config["precision"])
    check_sequential(config["trials"], config["ci_width"], config["max_trials"])
    _positive_int(config, "eval_windows")
    if config["task"] is not None and config["task"] not in TASKS:
        raise JaxfaultError(f"task must be null or one of {', '.join(TASKS)}, got {json.dumps(config['task'])}")
    if is_lm(config):
        _check_lm(config)
    for point in expand_grid(config["grid"]):
        methods.validate_point(point.params)
        for k, v in point.params.items():
            if isinstance(v, float) and not math.isfinite(v):
                raise JaxfaultError(f"grid field {k!r} must be finite, got {v!r}")
    return config


def is_lm(config: dict) -> bool:
    """True when the campaign evaluates a language model: task language_model, or no task and a
    checkpoint that holds one."""
    from jaxfault.training.lm import scores_language_model

    return scores_language_model(config.get("task"), config.get("checkpoint"))


def _check_lm(config: dict) -> None:
    if config.get("ci_width") is not None:
        raise JaxfaultError("ci_width stops a point on the interval of a mean accuracy; a language-model campaign "
                            "runs a fixed number of trials (set ci_width to null)")


def load_config(path: str, overrides: dict | None = None) -> dict:
    """Read a campaign config file, apply non-None overrides, validate."""
    config = read_json_object(path, "campaign config")
    config.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return validate_config(config)


def load_eval_data(config: dict, log=print) -> tuple[EvalData, dict]:
    """(EvalData, identity) for a validated config: the checkpoint (the cached default LeNet, or
    the default language model, when null) and its evaluation data: the first eval_examples test
    images, or the first eval_windows validation windows of a language model. identity describes
    what the numbers depend on."""
    from jaxfault.training.checkpoints import load_checkpoint

    if is_lm(config):
        from jaxfault.training.zoo import load_lm_and_data

        _check_lm(config)
        path, model, variables, x, y, task = load_lm_and_data(config.get("checkpoint"), config["eval_windows"], log)
        ev = EvalData(model=model, variables=jax.tree_util.tree_map(jnp.asarray, variables), images=jnp.asarray(x),
                      labels=jnp.asarray(y), task=task)
        return ev, identity_of(config, _lm_checkpoint(path, verify=False))
    from jaxfault.data import load_dataset
    from jaxfault.training.zoo import default_classifier

    ckpt_dir = config.get("checkpoint") or default_classifier(log=log)
    ckpt = load_checkpoint(ckpt_dir)
    data = load_dataset(ckpt.config["dataset"], data_dir=config.get("data_dir"),
                        value_range=ckpt.config.get("value_range", "symmetric"))
    n = min(config["eval_examples"], len(data.test_images))
    ev = EvalData(model=ckpt.model, variables=jax.tree_util.tree_map(jnp.asarray, ckpt.variables),
                  images=jnp.asarray(data.test_images[:n]), labels=jnp.asarray(data.test_labels[:n]))
    return ev, identity_of(config, ckpt)


def _lm_checkpoint(path, verify: bool = True):
    """What identity_of needs of a language model's folder (its path and metadata). A jaxfault
    checkpoint is loaded and verified when ``verify`` (the dry run, which loads nothing else);
    after load_lm_and_data, which has verified its arrays, only its metadata is read. A Hugging
    Face folder is identified by its path (its safetensors were read by from_hf)."""
    from types import SimpleNamespace

    from jaxfault.training.checkpoints import META_FILE, load_checkpoint, read_metadata

    if (Path(path) / META_FILE).is_file():
        if verify:
            return load_checkpoint(path, kind="language_model")
        return SimpleNamespace(path=Path(path).absolute(), config=read_metadata(path)["config"])
    return SimpleNamespace(path=path, hf=True)


def dry_run_identity(config: dict) -> dict | None:
    """The identity a run of this config would have, without training or loading data; None only
    when the config names no checkpoint and the default model is not trained yet (a run would
    train it first). A checkpoint the config names is loaded and verified as the run does, so a
    missing or damaged one is the same one-line error as in the run."""
    from jaxfault.training.checkpoints import load_checkpoint
    from jaxfault.training.zoo import cache_dir, cache_entry_name

    if is_lm(config):
        from jaxfault.training.zoo import lm_cache_entry_name

        path = config.get("checkpoint") or cache_dir() / lm_cache_entry_name()
        if config.get("checkpoint") is None and not (Path(path) / "jaxfault.json").is_file():
            return None
        return identity_of(config, _lm_checkpoint(path))
    if config.get("checkpoint") is not None:
        return identity_of(config, load_checkpoint(config["checkpoint"]))
    path = cache_dir() / cache_entry_name("lenet")
    if not (path / "jaxfault.json").is_file():
        return None
    return identity_of(config, load_checkpoint(path))


def identity_of(config: dict, ckpt=None) -> dict:
    """What every number of a campaign depends on besides its grid point: the checkpoint (its path
    and array checksums), data, evaluation examples, seed, trials and precision. A results file
    written under another identity is refused rather than mixed (jaxfault.core.resultsfile)."""
    ident = {"checkpoint": config.get("checkpoint"), "data_dir": config.get("data_dir"),
             "eval_examples": config["eval_examples"],
             "seed": config["seed"], "trials": config["trials"], "precision": config["precision"]}
    if config.get("ci_width") is not None:   # trials until a target width: part of every row's numbers
        ident["ci_width"] = config["ci_width"]
        ident["max_trials"] = check_sequential(config["trials"], config["ci_width"], config.get("max_trials"))
    if is_lm(config):
        ident.pop("eval_examples")
        ident.update(task="language_model", eval_windows=config["eval_windows"])
    if ckpt is None:
        return ident
    ident["checkpoint"] = str(Path(ckpt.path).resolve())
    if getattr(ckpt, "hf", False):                # a Hugging Face folder: its config and tensor files
        from jaxfault.training.lm import hf_folder_digest

        ident["checkpoint_digest"] = hf_folder_digest(ckpt.path)
        ident["dataset"] = "kjv"
        return ident
    ident["checkpoint_digest"] = checkpoint_digest(ckpt.path)[:16]
    ident["dataset"] = ckpt.config.get("corpus") if is_lm(config) else ckpt.config["dataset"]
    return ident
