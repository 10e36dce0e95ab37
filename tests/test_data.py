"""Data loading: local IDX files (written by the tests), TFDS mock data, and clear errors."""
import gzip
import struct

import numpy as np
import pytest

from jaxfault.data import batches, load_dataset, load_test_split, read_idx
from jaxfault.core.errors import JaxfaultError


def write_idx(path, array, compress=False):
    array = np.asarray(array, np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    data = header + array.tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def make_idx_dir(root, n_train=12, n_test=6, hw=(5, 4), compress=False):
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, *hw)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, *hw)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        write_idx(root / name, arr, compress)
    return arrays


@pytest.mark.parametrize("compress", [False, True])
def test_idx_roundtrip_and_ranges(tmp_path, compress):
    arrays = make_idx_dir(tmp_path / "fashion_mnist", compress=compress)
    ds = load_dataset("fashion_mnist", data_dir=tmp_path, source="local", value_range="unit")
    assert ds.train_images.shape == (12, 5, 4, 1) and ds.train_images.dtype == np.float32
    assert ds.test_labels.dtype == np.int32
    np.testing.assert_allclose(ds.train_images[..., 0], arrays["train-images-idx3-ubyte"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.test_labels, arrays["t10k-labels-idx1-ubyte"])
    sym = load_dataset("fashion_mnist", data_dir=tmp_path / "fashion_mnist", source="local")
    np.testing.assert_allclose(sym.train_images, ds.train_images * 2 - 1, atol=1e-6)
    assert sym.train_images.min() >= -1 and sym.train_images.max() <= 1
    assert ds.input_shape == (5, 4, 1)


def test_truncated_idx_is_a_clear_error(tmp_path):
    make_idx_dir(tmp_path)
    f = tmp_path / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-7])
    with pytest.raises(JaxfaultError, match="truncated or corrupt"):
        load_dataset("fashion_mnist", data_dir=tmp_path, source="local")


def test_bad_magic_and_corrupt_gzip(tmp_path):
    (tmp_path / "x").write_bytes(b"\x12\x34\x56\x78rest")
    with pytest.raises(JaxfaultError, match="not an IDX file"):
        read_idx(tmp_path / "x")
    (tmp_path / "y.gz").write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(JaxfaultError, match="cannot read IDX"):
        read_idx(tmp_path / "y.gz")


def test_missing_dataset_lists_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.setattr("jaxfault.data.SYSTEM_DIRS", {"fashion_mnist": (str(tmp_path / "sys"),)})
    monkeypatch.delenv("JAXFAULT_DATA", raising=False)
    with pytest.raises(JaxfaultError) as e:
        load_dataset("fashion_mnist", data_dir=tmp_path, source="local")
    msg = str(e.value)
    assert str(tmp_path / "sys") in msg and "apt-get install dataset-fashion-mnist" in msg and "\n" not in msg
    with pytest.raises(JaxfaultError, match="nowhere.* does not exist"):
        load_dataset("fashion_mnist", data_dir=tmp_path / "nowhere", source="local")


def test_bad_arguments():
    with pytest.raises(JaxfaultError, match="value_range"):
        load_dataset(value_range="0-255")
    with pytest.raises(JaxfaultError, match="source"):
        load_dataset(source="web")
    with pytest.raises(JaxfaultError, match="batch_size"):
        next(batches(np.zeros((3, 1)), np.zeros(3), 0))


def test_tfds_path_with_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=7, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = load_dataset("mnist", source="tfds", data_dir=tmp_path, value_range="unit")
    assert ds.source == "tfds" and ds.num_classes == 10
    assert ds.train_images.shape == (7, 28, 28, 1) and ds.test_images.shape == (7, 28, 28, 1)
    assert 0.0 <= ds.train_images.min() and ds.train_images.max() <= 1.0
    assert ds.train_labels.dtype == np.int32 and ds.train_labels.max() < 10
    with tfds.testing.mock_data(num_examples=7, policy=tfds.testing.MockPolicy.USE_CODE):
        x, y, n = load_test_split("mnist", source="tfds", data_dir=tmp_path, value_range="unit")
    np.testing.assert_array_equal(x, ds.test_images)
    np.testing.assert_array_equal(y, ds.test_labels)
    assert n == 10


@pytest.mark.parametrize("value_range", ["symmetric", "unit"])
def test_test_split_alone_is_the_datasets_test_split(tmp_path, value_range):
    """load_test_split gives load_dataset's test arrays bit for bit without opening the training
    files (here: removed)."""
    make_idx_dir(tmp_path / "fashion_mnist")
    ds = load_dataset("fashion_mnist", data_dir=tmp_path, source="local", value_range=value_range)
    for f in (tmp_path / "fashion_mnist").glob("train-*"):
        f.unlink()
    x, y, n = load_test_split("fashion_mnist", data_dir=tmp_path, source="local", value_range=value_range)
    assert x.dtype == np.float32 and y.dtype == np.int32 and n == ds.num_classes == 10
    np.testing.assert_array_equal(x.view(np.uint32), ds.test_images.view(np.uint32))
    np.testing.assert_array_equal(y, ds.test_labels)


def test_batches_cover_everything_once():
    import jax

    x, y = np.arange(10)[:, None], np.arange(10)
    seen = np.concatenate([b for _, b in batches(x, y, 3, key=jax.random.key(0))])
    assert sorted(seen.tolist()) == list(range(10))
    assert [len(b) for _, b in batches(x, y, 3, drop_last=True)] == [3, 3, 3]


@pytest.mark.parametrize("value_range", ["symmetric", "unit"])
def test_byte_images_normalise_to_the_float32_formula_bit_for_bit(value_range):
    """Every byte value v maps to float32(v) / 255 (then * 2 - 1 for 'symmetric'), computed in
    float32, bit for bit; float images already in [0, 1] are only shifted."""
    from jaxfault.data import _normalise

    v = np.arange(256, dtype=np.uint8).reshape(16, 4, 4, 1)
    want = v.astype(np.float32) / np.float32(255.0)
    if value_range == "symmetric":
        want = want * np.float32(2.0) - np.float32(1.0)
    got = _normalise(v, value_range)
    assert got.dtype == np.float32 and got.shape == v.shape
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    unit = np.linspace(0, 1, 7, dtype=np.float32)
    np.testing.assert_array_equal(_normalise(unit, value_range), unit * 2 - 1 if value_range == "symmetric" else unit)
