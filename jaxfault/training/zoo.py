"""Trained models on demand: train-and-save with the base defaults (the LeNet classifier, the
small byte-level language model), and a file-locked cache so that CLIs run on a fresh machine
without a --checkpoint."""
from __future__ import annotations

import dataclasses
import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import jax

from jaxfault.training.checkpoints import META_FILE, save_checkpoint
from jaxfault.data import DEFAULT_DATASET, load_dataset, load_test_split
from jaxfault.core.config import setting
from jaxfault.core.errors import JaxfaultError, check, nearest_hint
from jaxfault.training.lm import LM_FAMILIES
from jaxfault.models import create_model
from jaxfault.core.precision import PRECISIONS
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
    epochs = epochs or DEFAULTS["epochs"]
    return cached(cache_entry_name(model, dataset, qat, epochs), lambda tmp: train_and_save(
        tmp, model=model, dataset=dataset, epochs=epochs, qat=qat, data_dir=data_dir, log=log),
        cache_dir_override, log)


def cached(name: str, train: Callable[[Path], object], cache_dir_override=None,
           log: Callable[[str], None] = print) -> Path:
    """Path of cache entry `name`, calling train(folder) first to write it if it is missing.

    A file lock serialises concurrent callers; training happens in a temporary folder renamed into
    place only when complete, so a killed run never leaves a cache entry that looks finished.
    """
    root = cache_dir(cache_dir_override)
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
        log(f"no cached {name} in {root}: training it once, which later runs reuse (the progress lines below give the time left)")
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
        try:
            train(tmp)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


# ------------------------------------------------------------------------------------ language model
# Defaults of `python -m train.lm`: a 2-layer GPT-2 of width 128 on the King James Version's bytes,
# trained within 10 minutes on a 2-core CPU.
LM_DEFAULTS = {"family": "gpt2", "corpus": "kjv", "layers": 2, "width": 128, "heads": 4, "seq_len": 128,
               "steps": 600, "batch_size": 16, "learning_rate": 3e-3, "seed": 0, "val_windows": 256}



@dataclasses.dataclass(frozen=True)
class LMTraining:
    """The settings of one byte-level language-model training run (``python -m train.lm``); the
    defaults are the default language model's (LM_DEFAULTS)."""

    family: str = setting(LM_DEFAULTS["family"], f"model family: {', '.join(LM_FAMILIES)}")
    corpus: str = setting(LM_DEFAULTS["corpus"], "text corpus: kjv (Debian's bible-kjv), a TFDS text dataset, or NAME "
                                                 "for NAME.txt in `data_dir`")
    data_dir: str | None = setting(None, "folder with NAME.txt corpora or the TFDS data_dir")
    layers: int = setting(LM_DEFAULTS["layers"], "decoder layers", kind="positive_int")
    width: int = setting(LM_DEFAULTS["width"], "model width (embedding size)", kind="positive_int")
    heads: int = setting(LM_DEFAULTS["heads"], "attention heads (must divide `width`)", kind="positive_int")
    seq_len: int = setting(LM_DEFAULTS["seq_len"], "tokens per training window", kind="positive_int")
    steps: int = setting(LM_DEFAULTS["steps"], "optimisation steps", kind="positive_int")
    batch_size: int = setting(LM_DEFAULTS["batch_size"], "windows per step", kind="positive_int")
    lr: float = setting(LM_DEFAULTS["learning_rate"], "peak AdamW learning rate (linear warm-up, cosine decay)",
                        kind="positive_float")
    seed: int = setting(LM_DEFAULTS["seed"], "seed of the initialisation and the batches", kind="seed")
    val_windows: int = setting(LM_DEFAULTS["val_windows"], "validation windows of `seq_len` tokens", kind="positive_int")
    precision: str = setting("default", "float32 matmul precision of the training steps ('default': the backend's "
                                        "fast mode)", choices=PRECISIONS)

    def __post_init__(self):
        if self.family not in LM_FAMILIES:
            raise JaxfaultError(f"unknown model family {self.family!r}{nearest_hint(self.family, LM_FAMILIES)}; "
                                f"choose one of {', '.join(LM_FAMILIES)}")
        check(self.width % self.heads == 0, f"`width` {self.width} is not a multiple of `heads` {self.heads}")

    def train(self, out=None, *, overwrite: bool = False) -> tuple[Path, dict]:
        """Train into checkpoint folder `out` (checked before a single step), or, when None, into
        the model cache as the default language model of these settings; (folder, metrics)."""
        settings = dict(family=self.family, corpus=self.corpus, layers=self.layers, width=self.width,
                        heads=self.heads, seq_len=self.seq_len, steps=self.steps, batch_size=self.batch_size,
                        learning_rate=self.lr, seed=self.seed, val_windows=self.val_windows)
        if out is None:
            from jaxfault.training.checkpoints import read_metadata

            path = default_language_model(data_dir=self.data_dir, **settings)
            return path, read_metadata(path)["metrics"]
        from jaxfault.training.checkpoints import check_checkpoint_output

        check_checkpoint_output(out, overwrite=overwrite)
        return Path(out), train_and_save_lm(out, data_dir=self.data_dir, precision=self.precision, **settings)

def train_and_save_lm(out, *, family: str = LM_DEFAULTS["family"], corpus: str = LM_DEFAULTS["corpus"],
                      layers: int = LM_DEFAULTS["layers"], width: int = LM_DEFAULTS["width"],
                      heads: int = LM_DEFAULTS["heads"], seq_len: int = LM_DEFAULTS["seq_len"],
                      steps: int = LM_DEFAULTS["steps"], batch_size: int = LM_DEFAULTS["batch_size"],
                      learning_rate: float = LM_DEFAULTS["learning_rate"], seed: int = LM_DEFAULTS["seed"],
                      val_windows: int = LM_DEFAULTS["val_windows"], data_dir=None, precision: str = "default",
                      log: Callable[[str], None] = print) -> dict:
    """Train a byte-level decoder language model on a text corpus and save it as a checkpoint.

    Args:
      out: checkpoint folder.
      family, layers, width, heads, seq_len: the model ('gpt2' or 'llama') and its size.
      corpus, data_dir: the text (jaxfault.data.text.load_text).
      steps, batch_size, learning_rate, seed: the optimisation (jaxfault.training.lm.train_language_model).
      val_windows: validation windows of seq_len tokens evaluated during and after training.
      precision: float32 matmul precision of the training steps.
      log: where progress lines go.
    Returns:
      the saved metrics: validation nll/perplexity, the unigram baseline's perplexity on the same
      tokens, the training history and seconds.
    """
    from jaxfault.training.lm import build_language_model, lm_model_config, train_language_model
    from jaxfault.data.text import inputs_targets, load_text, unigram_perplexity, windows

    text = load_text(corpus, data_dir=data_dir)
    cfg = lm_model_config(family, vocab_size=text.vocab_size, layers=layers, width=width, heads=heads,
                          seq_len=seq_len)
    model = build_language_model(family, cfg)
    vi, vt = inputs_targets(windows(text.validation_tokens, seq_len, val_windows))
    log(f"training a {family} language model on {text.name} ({text.train_tokens.size:,} train / "
        f"{text.validation_tokens.size:,} validation byte tokens, from {text.source})")
    variables, history = train_language_model(model, text.train_tokens, vi, vt, steps=steps, batch_size=batch_size,
                                              seq_len=seq_len, learning_rate=learning_rate,
                                              key=jax.random.key(seed), precision=precision, log=log)
    unigram = unigram_perplexity(text.train_tokens, vt, text.vocab_size)
    config = {"kind": "language_model", "family": family, "model_config": cfg, "corpus": text.name,
              "tokenizer": text.tokenizer, "vocab_size": text.vocab_size, "seq_len": seq_len, "layers": layers,
              "width": width, "heads": heads, "steps": steps, "batch_size": batch_size,
              "learning_rate": learning_rate, "seed": seed, "val_windows": val_windows,
              "weights_dtype": "float32"}
    metrics = {"val_nll": history[-1]["val_nll"], "val_perplexity": history[-1]["val_perplexity"],
               "unigram_perplexity": unigram, "val_tokens": int(vt.size), "history": history,
               "seconds": history[-1]["seconds"]}
    save_checkpoint(out, variables, config, metrics)
    return metrics


def lm_cache_entry_name(**settings) -> str:
    """Folder name of a cached language model inside the cache directory (LM_DEFAULTS overridden
    by settings)."""
    s = {**LM_DEFAULTS, **settings}
    return (f"lm-{s['family']}-{s['corpus']}-l{s['layers']}-w{s['width']}-h{s['heads']}-t{s['seq_len']}"
            f"-n{s['steps']}-b{s['batch_size']}-s{s['seed']}")


def default_language_model(cache_dir_override=None, data_dir=None, log: Callable[[str], None] = print,
                           **settings) -> Path:
    """Path of the cached default language model (LM_DEFAULTS, or settings overriding them),
    training it first if needed (see cached).

    Args:
      cache_dir_override: the cache folder (else $JAXFAULT_CACHE or ~/.cache/jaxfault).
      data_dir: folder searched for the corpus.
      log: where progress lines go.
      settings: any LM_DEFAULTS field.
    Returns:
      the checkpoint folder (load it with jaxfault.training.lm.load_language_model).
    """
    unknown = sorted(set(settings) - set(LM_DEFAULTS))
    if unknown:
        raise JaxfaultError(f"unknown language-model setting(s) {', '.join(unknown)}; known: {', '.join(LM_DEFAULTS)}")
    return cached(lm_cache_entry_name(**settings), lambda tmp: train_and_save_lm(
        tmp, data_dir=data_dir, log=log, **{**LM_DEFAULTS, **settings}), cache_dir_override, log)


def load_classifier_and_data(checkpoint=None, limit: int | None = None, log: Callable[[str], None] = print):
    """(checkpoint path, model, variables, test images, test labels, topk) of a classifier
    checkpoint (the cached default LeNet when None) and the first `limit` test images of the
    dataset it was trained on; topk is (1, 5) with more than 5 classes, else (1,)."""
    from jaxfault.training.checkpoints import load_checkpoint

    if checkpoint is None:
        checkpoint = default_classifier(log=log)
    ck = load_checkpoint(checkpoint, kind="classifier")
    cfg = ck.config
    images, labels, num_classes = load_test_split(cfg.get("dataset", "fashion_mnist"),
                                                  value_range=cfg.get("value_range", "symmetric"))
    if limit:
        images, labels = images[:limit], labels[:limit]
    topk = (1, 5) if num_classes > 5 else (1,)
    return str(checkpoint), ck.model, ck.variables, images, labels, topk


def load_lm_and_data(checkpoint=None, limit: int | None = None, log: Callable[[str], None] = print):
    """(path, model, variables, inputs, targets, task) of a language model and its evaluation
    windows: the first `limit` (default DEFAULT_EVAL_WINDOWS) validation windows of the corpus it
    was trained on, seq_len tokens each; the cached default language model when checkpoint is None.
    A Hugging Face folder is read with jaxfault.models.from_hf and evaluated on the default corpus's
    validation text in windows of min(128, its positions) tokens: as bytes when its vocabulary has
    256 tokens, else through its tokenizer.json."""
    from pathlib import Path

    import numpy as np

    from jaxfault.core import tasks
    from jaxfault.training.lm import DEFAULT_EVAL_WINDOWS, load_language_model
    from jaxfault.data.text import inputs_targets, load_text, windows

    if checkpoint is None:
        checkpoint = default_language_model(log=log)
    tokenizer = None
    if (Path(checkpoint) / "config.json").is_file():
        from jaxfault.models import from_hf, load_tokenizer

        model, variables = from_hf(checkpoint)
        vocab = int(getattr(model, "vocab_size", 0))
        if vocab != 256:
            tokenizer = load_tokenizer(checkpoint)
            check(tokenizer is not None, f"{checkpoint}: a vocabulary of {vocab} tokens needs its tokenizer.json "
                                         f"to tokenize the evaluation text")
        corpus = "kjv"
        seq = min(128, int(getattr(model, "n_positions", 0) or getattr(model, "max_position_embeddings", 128)))
    else:
        model, variables, config = load_language_model(checkpoint)
        corpus, seq = config.get("corpus", "kjv"), int(config["seq_len"])
    text = load_text(corpus)
    tokens = text.validation_tokens
    if tokenizer is not None:
        from jaxfault.data.text import decode_bytes

        tokens = np.asarray(tokenizer.encode(decode_bytes(tokens)).ids, np.int32)
    x, y = inputs_targets(windows(tokens, seq, limit or DEFAULT_EVAL_WINDOWS))
    return str(checkpoint), model, variables, x, y, tasks.language_model()
