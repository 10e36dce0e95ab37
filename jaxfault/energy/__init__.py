"""Energy: Eyeriss-like estimator (docs/energy.md), layer extraction from Flax models, protection energy."""
from jaxfault.energy.core import (  # noqa: F401
    LEVELS,
    TYPES,
    Counts,
    Energy,
    Hardware,
    LayerArrays,
    access_counts,
    check_design,
    energy_core,
    energy_jit,
)
from jaxfault.energy.layers import Layer, conv, fc, layers_from_model, to_arrays  # noqa: F401
from jaxfault.energy.networks import ALEXNET_REFERENCE, AlexNet, get_network  # noqa: F401
