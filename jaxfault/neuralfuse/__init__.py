"""NeuralFuse (SPEC 3): bit errors on quantized weights, input-transformation generators trained
with EOPM (expectation over perturbed models), and their evaluation."""
from jaxfault.neuralfuse.faults import (PLACEMENTS, apply_stuck_at, fault_masks, memory_array_index,
                                        perturb_kernel, perturb_params, perturb_variables)

__all__ = ["PLACEMENTS", "apply_stuck_at", "fault_masks", "memory_array_index", "perturb_kernel",
           "perturb_params", "perturb_variables"]
