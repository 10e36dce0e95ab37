"""Shared fixtures: small real data, tiny trained checkpoints, and an isolated model cache."""
from __future__ import annotations

import os
import shutil

# On a GPU, JAX preallocates 75 % of its memory per process by default, so a second pytest-xdist
# worker would fail with out-of-memory: allocate on demand instead (set before jax is imported).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def _compile_cache_dir() -> str:
    """One persistent XLA compilation cache per test run, shared by its xdist workers: many tests
    compile the same small programs (the same tiny LeNet, the same fault model), and a program
    compiled by one test is loaded by the next instead of compiled again, as the CLIs do between
    runs. A fresh run starts empty, so no result depends on an earlier run."""
    import tempfile

    run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
    return os.path.join(tempfile.gettempdir(), f"jaxfault-test-xla-{run}")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test, deselected by default (run with -m slow)")
    from jaxfault.engine.compile_cache import enable_compile_cache

    enable_compile_cache(_compile_cache_dir())


def pytest_unconfigure(config):
    if not hasattr(config, "workerinput"):          # the controller (or a run without xdist), after the workers
        shutil.rmtree(_compile_cache_dir(), ignore_errors=True)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never read or write the user's model cache from tests."""
    monkeypatch.setenv("JAXFAULT_CACHE", str(tmp_path_factory.getbasetemp() / "empty-cache"))


@pytest.fixture(scope="session")
def small_dataset():
    """2000 train / 1000 test images of Fashion-MNIST when installed, else a learnable synthetic set."""
    from jaxfault.data import Dataset, load_dataset
    from jaxfault.core.errors import JaxfaultError

    try:
        full = load_dataset("fashion_mnist", source="local")
        return Dataset(name=full.name, train_images=full.train_images[:2000], train_labels=full.train_labels[:2000],
                       test_images=full.test_images[:1000], test_labels=full.test_labels[:1000],
                       num_classes=10, value_range=full.value_range, source=full.source)
    except JaxfaultError:
        rng = np.random.default_rng(0)
        protos = rng.uniform(-1, 1, (10, 28, 28, 1)).astype(np.float32)

        def make(n):
            y = rng.integers(0, 10, n).astype(np.int32)
            x = np.clip(protos[y] + 0.3 * rng.standard_normal((n, 28, 28, 1)), -1, 1).astype(np.float32)
            return x, y

        (trx, try_), (tex, tey) = make(2000), make(1000)
        return Dataset("synthetic", trx, try_, tex, tey, 10, "symmetric", "synthetic")


def _train_tiny(path, dataset, qat: bool):
    import jax

    from jaxfault.training.checkpoints import save_checkpoint
    from jaxfault.models import create_model
    from jaxfault.training import train_classifier

    model = create_model("lenet", 10, 8 if qat else None)
    variables, history = train_classifier(model, dataset, epochs=2, batch_size=64, learning_rate=3e-3,
                                          key=jax.random.key(0), log=lambda s: None, show_progress=False)
    config = {"kind": "classifier", "model": "lenet", "num_classes": 10, "quant_bits": 8 if qat else None,
              "dataset": "fashion_mnist", "input_shape": [28, 28, 1], "value_range": "symmetric", "epochs": 2,
              "batch_size": 64, "learning_rate": 3e-3, "seed": 0}
    save_checkpoint(path, variables, config, {"test_accuracy": history[-1]["test_accuracy"], "history": history})
    return path


@pytest.fixture(scope="session")
def lenet_checkpoint(tmp_path_factory, small_dataset):
    """A LeNet trained for 2 epochs on the small dataset, saved as a classifier checkpoint."""
    return _train_tiny(tmp_path_factory.mktemp("ckpt") / "lenet", small_dataset, qat=False)


@pytest.fixture(scope="session")
def qat_lenet_checkpoint(tmp_path_factory, small_dataset):
    """Like lenet_checkpoint, with 8-bit QAT."""
    return _train_tiny(tmp_path_factory.mktemp("ckpt") / "lenet_qat", small_dataset, qat=True)


@pytest.fixture
def default_cache(tmp_path, monkeypatch, lenet_checkpoint, qat_lenet_checkpoint):
    """A model cache holding the tiny checkpoints under the names default_classifier() looks for,
    so CLIs run without --checkpoint in tests without training a full model."""
    from jaxfault.training.zoo import cache_entry_name

    root = tmp_path / "cache"
    root.mkdir()
    shutil.copytree(lenet_checkpoint, root / cache_entry_name("lenet", qat=False))
    shutil.copytree(qat_lenet_checkpoint, root / cache_entry_name("lenet", qat=True))
    monkeypatch.setenv("JAXFAULT_CACHE", str(root))
    return root


@pytest.fixture()
def make_lm_checkpoint(tmp_path, monkeypatch):
    """make(width) -> folder of a 1-layer byte-level GPT-2 checkpoint (random weights, 16-token
    windows) whose corpus is a small local text, found through JAXFAULT_DATA."""
    def make(width: int = 32):
        import jax
        import jax.numpy as jnp

        from jaxfault.training.checkpoints import save_checkpoint
        from jaxfault.training.lm import build_language_model, lm_model_config

        data = tmp_path / "data"
        data.mkdir(exist_ok=True)
        (data / "fox.txt").write_text("\n".join(["the quick brown fox jumps over the lazy dog"] * 3000))
        monkeypatch.setenv("JAXFAULT_DATA", str(data))
        cfg = lm_model_config("gpt2", vocab_size=256, layers=1, width=width, heads=2, seq_len=16)
        model = build_language_model("gpt2", cfg)
        variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))
        path = tmp_path / f"lm{width}"
        save_checkpoint(path, variables, {"kind": "language_model", "family": "gpt2", "model_config": cfg,
                                          "corpus": "fox", "seq_len": 16, "tokenizer": "bytes"})
        return path

    return make
