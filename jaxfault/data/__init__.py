"""Input pipeline: one loader for TFDS datasets and local IDX files, returning numpy NHWC batches.

Sources, in the order ``source="auto"`` tries them:
1. local IDX files (MNIST / Fashion-MNIST format, gzip or not) in ``data_dir``, ``$JAXFAULT_DATA``,
   or the Debian packages' folders (``/usr/share/datasets/fashion-mnist`` from
   ``apt-get install dataset-fashion-mnist``);
2. TensorFlow Datasets by name through ``tfds.data_source`` (honours ``data_dir``; downloads when
   the network allows).
"""
from __future__ import annotations

import dataclasses
import gzip
import os
import struct
from pathlib import Path
from typing import Iterator

import numpy as np

from jaxfault.core.errors import JaxfaultError

DEFAULT_DATASET = "fashion_mnist"
VALUE_RANGES = ("symmetric", "unit")
SOURCES = ("auto", "local", "tfds")
# Datasets the methods' papers use (MNIST, Fashion-MNIST, CIFAR-10/100; GTSRB isn't in TFDS core).
# Debian's dataset packages install IDX files here.
SYSTEM_DIRS = {"fashion_mnist": ("/usr/share/datasets/fashion-mnist",),
               "mnist": ("/usr/share/datasets/mnist",)}
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
# class counts of the datasets the loader knows by name: IDX labels are checked against them
NUM_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A classification dataset held in memory: images float32 NHWC, labels int32."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    value_range: str
    source: str

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])


# ---------------------------------------------------------------------------------------------
# IDX files
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed), checking the header against the size."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise JaxfaultError(f"cannot read IDX file {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise JaxfaultError(f"{path} is not an IDX file (bad magic {data[:4].hex() or 'empty'})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise JaxfaultError(f"{path}: truncated IDX header")
    dims = struct.unpack(">" + "I" * ndim, data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - header != expected:
        raise JaxfaultError(f"{path}: IDX header says {dims} ({expected} bytes of data) "
                            f"but the file holds {len(data) - header} bytes (truncated or corrupt)")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def local_idx_dirs(name: str, data_dir: str | os.PathLike | None) -> list[Path]:
    """Folders that may hold the IDX files of dataset `name`, in search order."""
    dirs: list[Path] = []
    for base in (data_dir, os.environ.get("JAXFAULT_DATA")):
        if base:
            base = Path(base)
            dirs += [base, base / name, base / name.replace("_", "-")]
    dirs += [Path(d) for d in SYSTEM_DIRS.get(name, ())]
    return dirs


def check_labels(labels: np.ndarray, num_classes: int | None, where) -> None:
    """Refuse labels that are not integers, negative, or (when num_classes is known) >= num_classes,
    in one line naming `where` (the file), the first bad label and its index."""
    if not np.issubdtype(labels.dtype, np.integer):
        raise JaxfaultError(f"{where}: labels must be integers, the file holds {labels.dtype}")
    high = num_classes
    bad = (labels < 0) | ((labels >= high) if high is not None else False)
    if np.any(bad):
        i = int(np.argmax(bad))
        span = f"[0, {high})" if high is not None else ">= 0"
        raise JaxfaultError(f"{where}: label {int(labels[i])} at index {i} is outside {span}"
                            + (f" ({high} classes)" if high is not None else ""))


def load_idx_dir(directory: str | os.PathLike, num_classes: int | None = None,
                 splits: tuple[str, ...] = ("train", "test")) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """Load train/test (images, labels) from an IDX folder; None if its files are not all there.
    Image and label counts must agree, and labels must lie in [0, num_classes) (>= 0 when
    num_classes is None). ``splits``: the splits to read (the others are not opened)."""
    directory = Path(directory)
    paths = {split: tuple(_find_idx(directory, s) for s in IDX_FILES[split]) for split in splits}
    if any(p is None for pair in paths.values() for p in pair):
        return None
    out = {}
    for split, (img_path, lbl_path) in paths.items():
        images, labels = read_idx(img_path), read_idx(lbl_path)
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise JaxfaultError(f"{directory}: {split} images {images.shape} and labels {labels.shape} do not match")
        check_labels(labels, num_classes, lbl_path)
        out[split] = (images, labels)
    return out


# ---------------------------------------------------------------------------------------------
# TFDS
def load_tfds(name: str, data_dir: str | os.PathLike | None = None, download: bool = True,
              splits: tuple[str, ...] = ("train", "test")):
    """Load train/test (images, labels) and num_classes through TFDS's own API (tfds.data_source);
    ``splits``: the splits to read."""
    import tensorflow_datasets as tfds

    out = {}
    for split in splits:
        source = tfds.data_source(name, split=split, data_dir=None if data_dir is None else str(data_dir),
                                  download=download)
        n = len(source)
        records = [source[i] for i in range(n)]
        images = np.stack([np.asarray(r["image"]) for r in records])
        labels = np.asarray([r["label"] for r in records])
        if images.ndim == 3:
            images = images[..., None]
        out[split] = (images, labels)
    builder = tfds.builder(name, data_dir=None if data_dir is None else str(data_dir))
    num_classes = builder.info.features["label"].num_classes
    return out, int(num_classes)


# ---------------------------------------------------------------------------------------------
def _normalise(images: np.ndarray, value_range: str) -> np.ndarray:
    if images.dtype == np.uint8:
        # the float32 arithmetic below tabulated for the 256 byte values: the same bits, one pass
        return _scale(np.arange(256, dtype=np.uint8).astype(np.float32), True, value_range)[images]
    x = images.astype(np.float32)
    return _scale(x, x.max(initial=0) > 1.0, value_range)


def _scale(x: np.ndarray, from_bytes: bool, value_range: str) -> np.ndarray:
    if from_bytes:
        x = x / 255.0
    return x * 2.0 - 1.0 if value_range == "symmetric" else x


def load_dataset(name: str = DEFAULT_DATASET, data_dir: str | os.PathLike | None = None,
                 source: str = "auto", value_range: str = "symmetric",
                 download: bool = True) -> Dataset:
    """Load a dataset as float32 NHWC images in [-1, 1] ('symmetric') or [0, 1] ('unit').

    `source` is 'local' (IDX files), 'tfds', or 'auto' (local first, then TFDS). When nothing is
    found, one JaxfaultError lists every place tried and how to get the data.
    """
    splits, num_classes, where = _load_splits(name, data_dir, source, value_range, download, ("train", "test"))
    return _make(name, splits, num_classes, value_range, where)


def load_test_split(name: str = DEFAULT_DATASET, data_dir: str | os.PathLike | None = None,
                    source: str = "auto", value_range: str = "symmetric",
                    download: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
    """(test images, test labels, number of classes) of a dataset, as ``load_dataset`` gives them,
    without reading or converting the training split (an evaluation of a trained model needs only
    the test split). The number of classes is the dataset's known count, else one more than the
    largest test label."""
    splits, num_classes, _ = _load_splits(name, data_dir, source, value_range, download, ("test",))
    images, labels = splits["test"]
    (labels,), num_classes = _int_labels([labels], num_classes)
    return _normalise(images, value_range), labels, num_classes


def _int_labels(label_arrays, num_classes):
    """(the label arrays as int32, the number of classes): the given count, else one more than the
    largest label of any of the arrays."""
    label_arrays = [y.astype(np.int32) for y in label_arrays]
    if num_classes is None:
        num_classes = int(max(y.max(initial=0) for y in label_arrays)) + 1
    return label_arrays, int(num_classes)


def _load_splits(name, data_dir, source, value_range, download, wanted):
    """({split: (raw images, labels)}, num_classes or None, source description) of the first place
    that holds the dataset; one JaxfaultError listing every place tried when none does."""
    if value_range not in VALUE_RANGES:
        raise JaxfaultError(f"value_range must be one of {VALUE_RANGES}, got {value_range!r}")
    if source not in SOURCES:
        raise JaxfaultError(f"source must be one of {SOURCES}, got {source!r}")
    if not isinstance(name, str) or not name:
        raise JaxfaultError(f"dataset name must be a non-empty string, got {name!r}")
    tried: list[str] = []
    if data_dir is not None and not Path(data_dir).exists() and source == "local":
        raise JaxfaultError(f"data directory {str(data_dir)!r} does not exist")
    if source in ("auto", "local"):
        for d in local_idx_dirs(name, data_dir):
            if d.is_dir():
                splits = load_idx_dir(d, NUM_CLASSES.get(name), splits=wanted)
                if splits is not None:
                    return splits, NUM_CLASSES.get(name), f"idx:{d}"
            tried.append(f"IDX files in {d}")
    if source in ("auto", "tfds"):
        try:
            splits, num_classes = load_tfds(name, data_dir, download=download, splits=wanted)
            return splits, num_classes, "tfds"
        except JaxfaultError:
            raise
        except Exception as e:  # TFDS raises many kinds: network, unknown name, missing TF...
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            tried.append(f"TFDS {name!r} ({type(e).__name__}: {msg[:160]})")
    hint = ("install the offline copy with 'apt-get install dataset-fashion-mnist'" if name == "fashion_mnist"
            else "put its IDX files in a folder given as `data_dir`")
    raise JaxfaultError(f"dataset {name!r} not found; tried: {'; '.join(tried)}. To get it: {hint}, "
                        f"or let TFDS download it (network needed) into `data_dir`")


def _make(name, splits, num_classes, value_range, source) -> Dataset:
    (tr_x, tr_y), (te_x, te_y) = splits["train"], splits["test"]
    (tr_y, te_y), num_classes = _int_labels([tr_y, te_y], num_classes)
    if tr_x.shape[1:] != te_x.shape[1:]:
        raise JaxfaultError(f"{name}: train images {tr_x.shape[1:]} and test images {te_x.shape[1:]} differ in shape")
    return Dataset(name=name, train_images=_normalise(tr_x, value_range), train_labels=tr_y,
                   test_images=_normalise(te_x, value_range), test_labels=te_y,
                   num_classes=num_classes, value_range=value_range, source=source)


def batches(images: np.ndarray, labels: np.ndarray, batch_size: int, key=None,
            drop_last: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (x, y) minibatches; shuffled by the JAX PRNG `key` when one is given."""
    if batch_size <= 0:
        raise JaxfaultError(f"batch_size must be positive, got {batch_size!r}")
    n = len(images)
    if key is not None:
        import jax

        order = np.asarray(jax.random.permutation(key, n))
    else:
        order = np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield images[idx], labels[idx]
