"""Trained classifiers on demand: train-and-save with the base defaults, and a file-locked cache
so that CLIs run on a fresh machine without a --checkpoint."""
from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import jax

from jaxfault.checkpoints import META_FILE, save_checkpoint
from jaxfault.data import DEFAULT_DATASET, load_dataset
from jaxfault.errors import JaxfaultError
from jaxfault.models import create_model
from jaxfault.training import train_classifier

# Defaults of `python -m train.base`: LeNet on Fashion-MNIST reaches >= 88 % with these.
DEFAULTS = {"model": "lenet", "dataset": DEFAULT_DATASET, "epochs": 10, "batch_size": 128,
            "learning_rate": 1e-3, "seed": 0, "quant_bits": 8}


def train_and_save(out, *, model: str = DEFAULTS["model"], dataset: str = DEFAULTS["dataset"],
                   epochs: int = DEFAULTS["epochs"], batch_size: int = DEFAULTS["batch_size"],
                   learning_rate: float = DEFAULTS["learning_rate"], seed: int = DEFAULTS["seed"],
                   qat: bool = False, quant_bits: int = DEFAULTS["quant_bits"], data_dir=None,
                   weight_noise_fn=None, extra_config: dict | None = None, precision: str = "default",
                   log: Callable[[str], None] = print) -> dict:
    """Train a classifier and save it as a checkpoint in `out`; return the saved metrics."""
    data = load_dataset(dataset, data_dir=data_dir)
    qbits = quant_bits if qat else None
    net = create_model(model, data.num_classes, qbits)
    log(f"training {model}{' (QAT %d-bit)' % qbits if qat else ''} on {data.name} "
        f"({len(data.train_images)} train / {len(data.test_images)} test, from {data.source})")
    variables, history = train_classifier(net, data, epochs=epochs, batch_size=batch_size,
                                          learning_rate=learning_rate, key=jax.random.key(seed),
                                          weight_noise_fn=weight_noise_fn, log=log, precision=precision)
    config = {"kind": "classifier", "model": model, "num_classes": data.num_classes, "quant_bits": qbits,
              "dataset": data.name, "input_shape": list(data.input_shape), "value_range": data.value_range,
              "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate, "seed": seed,
              **(extra_config or {})}
    metrics = {"test_accuracy": history[-1]["test_accuracy"], "history": history,
               "seconds_per_epoch": sum(h["seconds"] for h in history) / len(history)}
    save_checkpoint(out, variables, config, metrics)
    return metrics


def cache_dir(override=None) -> Path:
    """The model cache: override, else $JAXFAULT_CACHE, else ~/.cache/jaxfault."""
    return Path(override or os.environ.get("JAXFAULT_CACHE") or Path.home() / ".cache" / "jaxfault")


def cache_entry_name(model: str, dataset: str = DEFAULT_DATASET, qat: bool = False,
                     epochs: int | None = None) -> str:
    """Folder name of a cached default classifier inside the cache directory."""
    return f"{model}-{dataset}-{'qat8' if qat else 'fp32'}-e{epochs or DEFAULTS['epochs']}-s{DEFAULTS['seed']}"


def remove_stale_temporaries(root: Path, name: str) -> list[Path]:
    """Remove the temporary training folders `.NAME.*` that killed runs left in the cache.

    Call only while holding NAME's lock: every cache training of NAME happens under that lock, so
    no live process can be writing into one of these folders. Returns the folders removed.
    """
    removed = []
    for child in root.glob(f".{name}.*"):
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


def default_classifier(model: str = "lenet", dataset: str = DEFAULT_DATASET, qat: bool = False,
                       cache_dir_override=None, data_dir=None, epochs: int | None = None,
                       log: Callable[[str], None] = print) -> Path:
    """Path of a cached checkpoint trained with the base defaults, training it first if needed.

    A file lock serialises concurrent callers; training happens in a temporary folder renamed into
    place only when complete, so a killed run never leaves a cache entry that looks finished.
    """
    root = cache_dir(cache_dir_override)
    epochs = epochs or DEFAULTS["epochs"]
    name = cache_entry_name(model, dataset, qat, epochs)
    target = root / name
    if (target / META_FILE).is_file():
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise JaxfaultError(f"cannot create model cache {root}: {e}") from None
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / META_FILE).is_file():
            return target
        remove_stale_temporaries(root, name)
        log(f"no cached {name} in {root}: training it once (later runs reuse it)")
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
        try:
            train_and_save(tmp, model=model, dataset=dataset, epochs=epochs, qat=qat, data_dir=data_dir, log=log)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target
