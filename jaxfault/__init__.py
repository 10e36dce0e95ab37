"""jaxfault: fault injection, protection and energy for deep networks, in JAX/Flax."""

__version__ = "0.1.0"

from jaxfault.errors import JaxfaultError  # noqa: E402,F401
