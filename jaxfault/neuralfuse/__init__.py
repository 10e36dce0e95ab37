"""NeuralFuse: bit errors on quantized weights read from low-voltage SRAM, input-transformation
generators trained with EOPM (expectation over perturbed models), and their evaluation."""
from jaxfault.neuralfuse.faults import (PLACEMENTS, SRAMBitErrors, apply_reference_map, fault_masks,
                                        memory_array_index, perturb_kernel, perturb_params, perturb_variables,
                                        sram_bit_errors)

__all__ = ["PLACEMENTS", "SRAMBitErrors", "apply_reference_map", "fault_masks", "memory_array_index",
           "perturb_kernel", "perturb_params", "perturb_variables", "sram_bit_errors"]
