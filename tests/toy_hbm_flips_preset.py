"""A toy method preset, registered from outside the library: weights in HBM under transient XOR
flips of their stored cells (soft errors from particle strikes, say) instead of the retention
stuck-at faults of the built-in HBM model. Everything else (the ECC scheme, block size, format)
stays a field of the HBM fault model.

It is one new file and one registration call (docs/extending.md)."""
from jaxfault.faults.fault_models import register_preset

register_preset("toy-hbm-flips", "hbm", mode="flip",
                description="toy: HBM words under transient XOR flips instead of stuck-at faults")
