"""Text corpora for language models: byte-level tokens, a deterministic train/validation split,
and (N, L + 1) token windows that split into next-token inputs and targets.

Sources, in the order ``source="auto"`` tries them:
1. a local UTF-8 text file ``<name>.txt`` in ``data_dir`` or ``$JAXFAULT_DATA`` (any corpus name);
2. for the default corpus ``"kjv"``, the King James Version of the Bible from Debian's
   ``bible-kjv`` package (``apt-get install bible-kjv``: public domain text, 31,102 verses,
   4.1 MB of ASCII once the verse references are removed), read through its ``bible`` program;
3. TensorFlow Datasets text datasets by name (``tiny_shakespeare``, ``lm1b``, ...) through
   ``tfds.data_source`` (honours ``data_dir``; downloads when the network allows).

Tokens are bytes of the UTF-8 text (vocabulary 256): no trained tokenizer, so a corpus maps to the
same tokens on every machine. The local corpora are split by blocks of lines: block ``b`` (of
``SPLIT_BLOCK`` consecutive lines) is validation when ``b % SPLIT_EVERY == SPLIT_EVERY - 1``, so the
validation text is spread over the whole corpus rather than being its last book. TFDS datasets keep
their own splits (``validation``, else ``test``).
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from jaxfault.core.errors import JaxfaultError, check

DEFAULT_CORPUS = "kjv"
VOCAB_SIZE = 256                 # byte-level tokens
SOURCES = ("auto", "local", "tfds")
KNOWN_TFDS_TEXT = ("tiny_shakespeare", "lm1b", "ptb")
SPLIT_BLOCK = 100                # lines per block of the train/validation split
SPLIT_EVERY = 10                 # one block in ten is validation
KJV_VERSES = 31102               # verses of the King James Version (the check that the dump is whole)
KJV_COMMAND = "bible"            # Debian's bible-kjv program
_KJV_LINE = re.compile(r"^[1-3]?[A-Za-z]+\d+:\d+ (.*)$")


@dataclasses.dataclass(frozen=True)
class TextCorpus:
    """A tokenized corpus held in memory: int32 byte tokens of the train and validation text."""

    name: str
    train_tokens: np.ndarray
    validation_tokens: np.ndarray
    source: str
    vocab_size: int = VOCAB_SIZE
    tokenizer: str = "bytes"


def encode_bytes(text: str) -> np.ndarray:
    """int32 byte tokens (0..255) of the UTF-8 encoding of text."""
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)


def decode_bytes(tokens) -> str:
    """Text of byte tokens (invalid UTF-8 sequences replaced), the inverse of encode_bytes."""
    t = np.asarray(tokens)
    check(t.ndim == 1 and (t.size == 0 or (t.min() >= 0 and t.max() < VOCAB_SIZE)),
          f"byte tokens must be a 1-D array of values in [0, {VOCAB_SIZE}), got shape {t.shape}")
    return t.astype(np.uint8).tobytes().decode("utf-8", errors="replace")


def split_lines(lines: list[str], block: int = SPLIT_BLOCK, every: int = SPLIT_EVERY) -> tuple[str, str]:
    """(train text, validation text) of a list of lines: block b of `block` lines goes to
    validation when b % every == every - 1; each side joins its lines with newlines."""
    check(block >= 1 and every >= 2, f"split needs block >= 1 and every >= 2, got {block}, {every}")
    train, val = [], []
    for b in range(0, len(lines), block):
        (val if (b // block) % every == every - 1 else train).extend(lines[b:b + block])
    return "\n".join(train) + "\n", "\n".join(val) + "\n"


def kjv_lines(command: str = KJV_COMMAND) -> list[str]:
    """The 31,102 verses of the King James Version as lines of text (references removed), read
    through Debian's bible-kjv program; a JaxfaultError when it is missing or its output is not
    the whole text."""
    exe = shutil.which(command)
    if exe is None:
        raise JaxfaultError(f"the King James Version needs Debian's bible-kjv package ({command!r} not found)")
    try:
        out = subprocess.run([exe, "-f", "Gen1:1-Rev22:21"], capture_output=True, check=True, timeout=120,
                             env={**os.environ, "COLUMNS": "80"}).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise JaxfaultError(f"{exe} failed: {type(e).__name__}") from None
    verses = []
    for line in out.decode("ascii", errors="strict").splitlines():
        m = _KJV_LINE.match(line)
        if m is None:
            raise JaxfaultError(f"{exe} printed an unexpected line {line[:60]!r}")
        verses.append(m.group(1))
    if len(verses) != KJV_VERSES:
        raise JaxfaultError(f"{exe} printed {len(verses)} verses, the King James Version has {KJV_VERSES}")
    return verses


def local_text_files(name: str, data_dir) -> list[Path]:
    """Files that may hold corpus `name` as plain text, in search order."""
    out = []
    for base in (data_dir, os.environ.get("JAXFAULT_DATA")):
        if base:
            out += [Path(base) / f"{name}.txt", Path(base) / name / f"{name}.txt"]
    return out


def load_tfds_text(name: str, data_dir=None, download: bool = True) -> tuple[str, str]:
    """(train text, validation text) of a TFDS text dataset: every record's 'text' joined by
    newlines; validation is the 'validation' split, else 'test'."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=None if data_dir is None else str(data_dir))
    splits = builder.info.splits
    val_split = "validation" if "validation" in splits else "test"

    def text_of(split):
        source = tfds.data_source(name, split=split, data_dir=None if data_dir is None else str(data_dir),
                                  download=download)
        parts = []
        for i in range(len(source)):
            t = source[i]["text"]
            parts.append(t.decode("utf-8", errors="replace") if isinstance(t, bytes) else str(t))
        return "\n".join(parts) + "\n"

    return text_of("train"), text_of(val_split)


def load_text(name: str = DEFAULT_CORPUS, data_dir=None, source: str = "auto", download: bool = True) -> TextCorpus:
    """Load a text corpus as byte tokens with its train/validation split (module docstring).

    Args:
      name: 'kjv' (the default, offline from Debian), a TFDS text dataset name, or the stem of a
        local '<name>.txt' file in data_dir / $JAXFAULT_DATA.
      data_dir: folder searched for local text files and used by TFDS.
      source: 'local' (text files, the Debian package), 'tfds', or 'auto' (local first).
      download: whether TFDS may download.
    Returns:
      A TextCorpus; a JaxfaultError listing every place tried when nothing is found.
    """
    check(isinstance(name, str) and bool(name), f"corpus name must be a non-empty string, got {name!r}")
    check(source in SOURCES, f"source must be one of {SOURCES}, got {source!r}")
    tried: list[str] = []
    if source in ("auto", "local"):
        for f in local_text_files(name, data_dir):
            if f.is_file():
                try:
                    text = f.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as e:
                    raise JaxfaultError(f"cannot read text corpus {f}: {type(e).__name__}") from None
                train, val = split_lines(text.splitlines())
                return _corpus(name, train, val, f"text:{f}")
            tried.append(f"text file {f}")
        if name == DEFAULT_CORPUS:
            try:
                train, val = split_lines(kjv_lines())
                return _corpus(name, train, val, "debian:bible-kjv")
            except JaxfaultError as e:
                tried.append(str(e))
    if source in ("auto", "tfds") and name != DEFAULT_CORPUS:
        try:
            train, val = load_tfds_text(name, data_dir, download=download)
            return _corpus(name, train, val, "tfds")
        except Exception as e:  # TFDS raises many kinds: network, unknown name, missing TF...
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            tried.append(f"TFDS {name!r} ({type(e).__name__}: {msg[:160]})")
    hint = ("install it with 'apt-get install bible-kjv'" if name == DEFAULT_CORPUS
            else f"put it in a UTF-8 file {name}.txt in the data folder")
    raise JaxfaultError(f"text corpus {name!r} not found; tried: {'; '.join(tried) or 'nothing'}. To get it: {hint}")


def _corpus(name, train: str, val: str, source: str) -> TextCorpus:
    tr, va = encode_bytes(train), encode_bytes(val)
    if tr.size < 2 or va.size < 2:
        raise JaxfaultError(f"text corpus {name!r} ({source}) is too small: {tr.size} train / {va.size} "
                            f"validation tokens")
    return TextCorpus(name=name, train_tokens=tr, validation_tokens=va, source=source)


def windows(tokens, length: int, max_windows: int | None = None) -> np.ndarray:
    """Token windows of shape (N, length + 1) from a 1-D token stream: window i starts at
    i * length, so consecutive windows share one token and every token after the first is a
    prediction target exactly once. At most max_windows (the first ones) when given."""
    t = np.asarray(tokens)
    check(t.ndim == 1, f"tokens must be 1-D, got shape {t.shape}")
    check(isinstance(length, (int, np.integer)) and length >= 1, f"window length must be >= 1, got {length!r}")
    n = (t.size - 1) // length
    check(n >= 1, f"{t.size} tokens hold no window of {length + 1}")
    if max_windows is not None:
        check(max_windows >= 1, f"max_windows must be >= 1, got {max_windows!r}")
        n = min(n, int(max_windows))
    idx = np.arange(n)[:, None] * length + np.arange(length + 1)[None, :]
    return t[idx].astype(np.int32)


def inputs_targets(seqs) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) = (seqs[:, :-1], seqs[:, 1:]) of (N, L + 1) token windows."""
    s = np.asarray(seqs)
    check(s.ndim == 2 and s.shape[1] >= 2, f"token windows must have shape (N, L + 1) with L >= 1, got {s.shape}")
    return s[:, :-1], s[:, 1:]


def unigram_perplexity(train_tokens, eval_tokens, vocab_size: int = VOCAB_SIZE) -> float:
    """Perplexity on eval_tokens of the unigram model fitted to train_tokens with add-one
    smoothing: exp(-mean log p(t)), p(t) = (count(t) + 1) / (n + vocab_size). The baseline a
    language model must beat."""
    tr, ev = np.asarray(train_tokens), np.asarray(eval_tokens)
    check(ev.size >= 1, "the evaluation text is empty")
    counts = np.bincount(tr.ravel(), minlength=vocab_size).astype(np.float64)
    logp = np.log(counts + 1.0) - np.log(counts.sum() + vocab_size)
    return float(np.exp(-logp[ev.ravel()].mean()))
