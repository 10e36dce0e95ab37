"""JAX's persistent compilation cache for library users: one call, the same cache as the CLIs."""
from __future__ import annotations

from pathlib import Path

MIN_COMPILE_SECONDS = 0.0           # every program is stored: loading one costs less than compiling it


def default_cache_dir() -> Path:
    """Where compiled XLA programs persist between runs: <jaxfault cache>/xla."""
    from jaxfault.training.zoo import cache_dir

    return cache_dir() / "xla"


def enable_compile_cache(path=None) -> Path | None:
    """Turn on JAX's persistent compilation cache, so that a later process running the same
    program loads it instead of compiling it again.

    Args:
      path: the cache directory (default: <jaxfault cache>/xla, the one the CLIs use).
    Returns:
      The directory in use, or None when it cannot be created (the cache then stays off: an
      unwritable cache only costs compile time).
    """
    import jax

    path = Path(path) if path is not None else default_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
