"""NeuralFuse: bit errors on quantized weights read from low-voltage SRAM, input-transformation
generators trained with EOPM (expectation over perturbed models), and their evaluation."""
from jaxfault.neuralfuse.eopm import EOPMConfig, perturbed_model_key
from jaxfault.neuralfuse.faults import (PLACEMENTS, apply_stuck_at, fault_masks, memory_array_index,
                                        perturb_kernel, perturb_params, perturb_variables)

__all__ = ["EOPMConfig", "PLACEMENTS", "apply_stuck_at", "fault_masks", "memory_array_index", "perturb_kernel",
           "perturb_params", "perturb_variables", "perturbed_model_key"]
