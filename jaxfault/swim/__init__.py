"""SWIM (DAC 2022): compute-in-memory device variation and selective write-verify.

- ``variation``: the programming-noise model (``apply_variation``) and the
  fault model ``CiMVariation`` / ``cim_variation`` (rate: dev_var; the write-verify mask travels
  as the variables collection ``"write_verify"``).
- ``curvature``: diagonal curvature estimators (Becker-LeCun as the SWIM code computes it, exact
  Hessian diagonal, Gauss-Newton, Hutchinson).
- ``selection``: the SWIM code's sensitivity scores and ``write_verify_mask``.
- ``run``: the experiment behind ``python -m eval.swim`` (``SwimConfig``, ``run(config)``);
  imported on its own (``from jaxfault.swim.run import SwimConfig, run``).
"""
from jaxfault.swim.selection import (CURVATURES, METHODS, full_mask, mask_fraction, protection_mask,
                                     second_order_buffer, select_top_fraction, selection_buffer,
                                     sensitivity_scores, write_verify_mask)
from jaxfault.swim.variation import (WRITE_VERIFY, CiMVariation, apply_variation, cim_variation,
                                     variation_std, with_write_verify)

__all__ = ["CURVATURES", "METHODS", "WRITE_VERIFY", "CiMVariation", "apply_variation", "cim_variation",
           "full_mask", "mask_fraction", "protection_mask", "second_order_buffer",
           "select_top_fraction", "selection_buffer", "sensitivity_scores", "variation_std", "with_write_verify",
           "write_verify_mask"]
