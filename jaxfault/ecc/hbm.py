"""HBM retention faults on bf16 weights stored under an ECC scheme, as a fault model.

The selected float leaves (conv/dense kernels, or every float parameter) are flattened in
tree_flatten order, truncated to bf16, zero-padded to whole blocks of the scheme and encoded;
each stored bit cell (the scheme's `stored_mask`) is faulty with probability `rate` (the BER),
stuck at 1 with probability `zero_to_one` and at 0 otherwise (or flipped, mode="flip"); the
words are decoded and put back into the leaves. Evaluation runs in bf16, inputs included, as
the Sparrow reference does. The padding never leaks into the returned weights.

``format`` (default ``"bfloat16"``, the behaviour above) stores the selected leaves in any
number format of :mod:`jaxfault.core.formats` instead. With bf16 and one of the bf16 schemes
(``sparrow``, ``secded``, ``none``) nothing changes; any other format, or bf16 under a scheme
of :mod:`jaxfault.ecc.format_schemes` (``mset``, ``exp-secded``), takes the one format path
:func:`jaxfault.ecc.formatted.perturb_leaves`: each leaf quantized to the format
(``prepare``), encoded, its element words and MX scales faulted under the scheme, decoded; the
model is evaluated in float32 and the stats add ``scale_faults`` and per-role counts.
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxfault import faults
from jaxfault.core.bits import bf16_round_trip, pytree_to_words, words_to_pytree
from jaxfault.ecc import SCHEMES, check_scheme_block_size, get_scheme
from jaxfault.core.errors import JaxfaultError, check_probability
from jaxfault.faults.fault_models import register_fault_model
from jaxfault.core.protocol import FaultModel, check_rate_bound
from jaxfault.core.pytree import is_kernel, path_to_str

MODES = ("stuck-at", "flip")


def is_float_param(path, leaf) -> bool:
    """Every floating-point leaf (kernels, biases, normalisation parameters)."""
    return jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating)


LEAF_SELECTORS = {"kernels": is_kernel, "all": is_float_param}


def check_finite_leaves(params, select=is_kernel) -> None:
    """JaxfaultError naming the first selected leaf holding NaN or Inf."""
    import numpy as np

    for p, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        if select(p, x):
            arr = np.asarray(jnp.asarray(x, jnp.float32))
            bad = ~np.isfinite(arr)
            if bad.any():
                i = int(np.flatnonzero(bad.ravel())[0])
                raise JaxfaultError(f"weights of {path_to_str(p)} contain {int(bad.sum())} NaN/Inf value(s), "
                                    f"first {float(arr.ravel()[i])} at flat index {i}")


@dataclasses.dataclass(frozen=True)
class HBMFaults(FaultModel):
    """Stuck-at (or flip) faults in the stored cells of bf16 weights under an ECC scheme."""

    scheme: str = "sparrow"
    block_size: int = 64
    zero_to_one: float = 0.01
    mode: str = "stuck-at"
    leaves: str = "kernels"
    compat: bool = False
    rate_bound: float = 1e-2
    format: str = "bfloat16"

    rate_name: ClassVar[str] = "ber"

    def __post_init__(self):
        from jaxfault.core import formats as FM
        from jaxfault.ecc.format_schemes import FORMAT_SCHEMES, check_pair

        FM.get(self.format)
        if self.format == "bfloat16" and self.scheme not in FORMAT_SCHEMES:
            SCHEMES.get(self.scheme)                      # the bf16 registry's one-line error
        if not self.bf16_path:
            if self.scheme in SCHEMES and self.scheme not in FORMAT_SCHEMES:
                raise JaxfaultError(f"scheme {self.scheme!r} protects bfloat16 words only; for format "
                                    f"{self.format!r} choose one of {', '.join(FORMAT_SCHEMES.names())}")
            check_pair(self.scheme, self.format)
        else:
            SCHEMES.get(self.scheme)
        object.__setattr__(self, "block_size", check_scheme_block_size(self.scheme, self.block_size)
                           if self.bf16_path else int(self.block_size))
        object.__setattr__(self, "zero_to_one", check_probability("zero_to_one", self.zero_to_one))
        if self.mode not in MODES:
            raise JaxfaultError(f"unknown fault mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.leaves not in LEAF_SELECTORS:
            raise JaxfaultError(f"leaves must be one of {', '.join(LEAF_SELECTORS)}, got {self.leaves!r}")
        object.__setattr__(self, "rate_bound", check_rate_bound(self.rate_bound))

    @property
    def bf16_path(self) -> bool:
        """True when the bf16 words go through the bf16 scheme registry (the published path)."""
        return self.format == "bfloat16" and self.scheme in SCHEMES

    @property
    def eval_dtype(self):  # type: ignore[override]
        """bf16 on the published path (as the Sparrow reference), float32 for other formats."""
        return jnp.bfloat16 if self.bf16_path else None

    @property
    def select(self):
        return LEAF_SELECTORS[self.leaves]

    def get_scheme(self):
        return get_scheme(self.scheme, self.block_size, compat=self.compat)

    @property
    def stored_bits(self):
        """Stored bits per weight (a float for format schemes, amortised over scales and checks)."""
        if self.bf16_path:
            return self.get_scheme().stored_bits
        from jaxfault.ecc.format_schemes import get_format_scheme

        return get_format_scheme(self.scheme).stored_bits(self.format)

    def prepare(self, variables):
        """Selected leaves truncated to bf16 (what the encoder stores), or quantized to the
        format; NaN/Inf rejected, before and after quantization."""
        check_finite_leaves(variables["params"], self.select)
        if not self.bf16_path:
            from jaxfault.core import formats as FM

            fmt = FM.get(self.format)
            params = jax.tree_util.tree_map_with_path(
                lambda p, x: fmt.quantize(x) if self.select(p, x) else x, variables["params"])
            try:
                check_finite_leaves(params, self.select)
            except JaxfaultError as e:
                raise JaxfaultError(f"format {self.format} overflows: {e}") from None
            return {**variables, "params": params}
        params = jax.tree_util.tree_map_with_path(lambda p, x: bf16_round_trip(x) if self.select(p, x) else x,
                                                  variables["params"])
        return {**variables, "params": params}

    def encode(self, params):
        """(stored words, layout) of the selected leaves of params."""
        s = self.get_scheme()
        words, layout = pytree_to_words(params, math.lcm(s.group, s.block_size), select=self.select)
        return s.encode(words), layout

    def perturb(self, key, variables, rate):
        if not self.bf16_path:
            return self._perturb_format(key, variables, rate)
        s = self.get_scheme()
        params = variables["params"]
        encoded, layout = self.encode(params)
        if self.mode == "stuck-at":
            bad, st = faults.inject_stuck_at(key, encoded, rate, self.zero_to_one, s.stored_mask,
                                             rate_bound=self.rate_bound)
        else:
            bad, st = faults.inject_flips(key, encoded, rate, s.stored_mask, rate_bound=self.rate_bound)
        dec = s.decode(bad)
        n = layout.n_values
        changed = jnp.mean((dec[:n] != s.decode(encoded)[:n]).astype(jnp.float32))
        new = words_to_pytree(params, dec, layout, select=self.select)
        return {**variables, "params": new}, {**st._asdict(), "changed_fraction": changed}

    def _perturb_format(self, key, variables, rate):
        from jaxfault.ecc.formatted import perturb_leaves

        leaves, treedef = jax.tree_util.tree_flatten_with_path(variables["params"])
        idx = [j for j, (p, x) in enumerate(leaves) if self.select(p, x)]
        faulty, stats = perturb_leaves(key, [leaves[j][1] for j in idx], self.format, rate, self.zero_to_one,
                                       scheme=self.scheme, mode=self.mode, rate_bound=self.rate_bound)
        out = [x for _, x in leaves]
        for j, v in zip(idx, faulty):
            out[j] = v.astype(leaves[j][1].dtype)
        return {**variables, "params": jax.tree_util.tree_unflatten(treedef, out)}, stats


def hbm_faults(**config) -> HBMFaults:
    """Factory: HBM retention faults under a scheme (see HBMFaults for the fields)."""
    return HBMFaults(**config)


register_fault_model("hbm", HBMFaults, rate_name="ber", method="sparrow",
                     description="HBM retention faults on bf16 weights under an ECC scheme (Sparrow, SEC-DED, none)")
