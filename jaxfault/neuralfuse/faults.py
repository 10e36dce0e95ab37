"""Low-voltage SRAM bit errors on quantized weights (NeuralFuse's fault model).

Every conv/dense kernel is quantized per tensor (symmetric, signed, ``bits`` = 4, 8 or 16) with
:func:`jaxfault.core.quant.quantize` and stored as ``bits``-bit two's-complement words. Each stored
bit cell is faulty with probability ``ber``; a faulty cell reads 1 with probability ``ber0``
(stuck-at-1) and 0 otherwise (stuck-at-0): ``word = (word & ~map_1to0) | map_0to1``, read back
sign-extended, ``W' = q' * delta``. The faults come from the one sampler of
:mod:`jaxfault.faults` (exact: no cap, no dropped faults; ``ber`` may be traced when a static
``rate_bound`` is given).

Placements (see :mod:`jaxfault.faults.placement`):

* ``"independent"`` (default): every bit of every weight of every layer draws its own cell;
  kernel i (flatten order of the parameter tree) uses ``fold_in(key, i)``. This is the cleaner
  model (no correlation between layers).
* ``"memory_array"``: the reference's shared map of 8192 rows x 128 bit columns, drawn once per
  key and reused for every layer. Weight ``k`` of a layer takes row ``(k // 256) mod 8192`` and
  word slot ``k mod 16`` for 8-bit words; its bit ``b`` (b = 0: least significant) is column
  ``slot * 8 + b``. A row holds ``W = 128 // bits`` words; for 4 or 16 bits the same "row
  pattern repeated 16 times" rule gives row ``(k // (16 W)) mod 8192`` and slot ``k mod W``.

Weight order (``layout``): ``"torch"`` numbers the weights in PyTorch's order (conv OIHW, dense
(out, in)), the order in which the reference stores a layer, so that its memory-array map hits
the same physical weights; ``"flax"`` in the row-major order of the Flax kernel (conv HWIO, dense
(in, out)). Under the memory-array placement the order matters for more than bookkeeping: weight
k and weight k + 16 share a fault pattern, so in PyTorch's order the repeats fall inside one
output channel's filter, in Flax's order across 16 output channels of one input position, and
the damage a model suffers differs (docs/neuralfuse.md measures it). Under the independent
placement the order only permutes i.i.d. draws. ``layout=None`` (the default) takes the
placement's default (:func:`jaxfault.faults.placement.resolve_layout`): ``"torch"`` for the
memory array, ``"flax"`` for independent faults.

``compat=True`` reproduces the reference code for 4-bit words: the row index is
``k // (W * W)`` (W = 32, so k // 1024 instead of k // 512), and the 4-bit word lives in the low
bits of an int8 without sign extension, so a faulty weight reads back in [-16, 15] (the int8's
upper four bits keep the original sign) rather than in [-8, 7]. For 8-bit words compat changes
nothing; for 16-bit words only the row rule (k // 64 instead of k // 128). The default is the
sign-extended ``bits``-bit word, the faithful model of a ``bits``-bit SRAM word.

All functions are pure and jittable, with ``key`` as the only source of randomness, so they can
be vmapped / lax.mapped over keys (one key = one perturbed model).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxfault import faults as F
from jaxfault.core.errors import JaxfaultError, check, check_probability
from jaxfault.faults.placement import (ARRAY_COLS, ARRAY_ROWS, LAYOUTS, PLACEMENTS, check_layout, check_placement,
                                       from_layout_order, memory_array_maps, memory_array_rows_slots,
                                       memory_array_word_maps, pack_cells, resolve_layout, to_layout_order,
                                       unpack_cells)
from jaxfault.faults.fault_models import register_fault_model
from jaxfault.core.protocol import FaultModel, check_rate_bound
from jaxfault.core.pytree import is_kernel
from jaxfault.core.quant import check_bits, dequantize, quantize

PyTree = Any
OK, STUCK1, STUCK0 = 0, 1, 2  # cell codes of memory_array_codes
DEFAULT_RATE_BOUND = 0.01

__all__ = ["ARRAY_COLS", "ARRAY_ROWS", "LAYOUTS", "OK", "PLACEMENTS", "STUCK0", "STUCK1", "SRAMBitErrors",
           "apply_reference_map", "check_layout", "resolve_layout", "check_placement", "fault_masks", "memory_array_codes",
           "memory_array_index", "perturb_kernel", "perturb_params", "perturb_variables", "sign_extend",
           "sram_bit_errors", "to_unsigned"]


def to_unsigned(q: jax.Array, bits: int) -> jax.Array:
    """Two's-complement bit pattern of signed ints q in the low ``bits`` bits (int32 holder)."""
    return jnp.bitwise_and(jnp.asarray(q).astype(jnp.int32), (1 << bits) - 1)


def sign_extend(u: jax.Array, bits: int) -> jax.Array:
    """Inverse of to_unsigned: interpret the low ``bits`` bits as a signed two's-complement word."""
    return F.words_to_int(jnp.asarray(u).astype(jnp.int32), bits)


def _container_bits(bits: int, compat: bool) -> int | None:
    # The reference stores 4- and 8-bit words in an int8 and never sign-extends the 4-bit word.
    return 8 if compat and bits < 8 else None


def _apply(q, map_1to0, map_0to1, bits: int, compat: bool):
    return F.apply_stuck_at_int(q, map_1to0, map_0to1, bits, _container_bits(bits, compat))


# ---------------------------------------------------------------------------------- cell maps
def _array_maps_from_codes(array_codes):
    codes = jnp.asarray(array_codes)
    return pack_cells(codes == STUCK0), pack_cells(codes == STUCK1)


def memory_array_codes(key: jax.Array, ber, ber0=0.5, *, rate_bound=None) -> jax.Array:
    """The per-key 8192 x 128 int8 array of cell codes (0 ok, 1 stuck-at-1, 2 stuck-at-0) of the
    memory-array placement (the same cells that :func:`perturb_params` uses for that key)."""
    m10, m01, _ = memory_array_maps(key, ber, ber0, rate_bound=rate_bound)
    c10, c01 = unpack_cells(m10), unpack_cells(m01)
    return jnp.where(c01, STUCK1, jnp.where(c10, STUCK0, OK)).astype(jnp.int8)


def memory_array_index(n: int, bits: int = 8, k: jax.Array | None = None, *,
                       compat: bool = False) -> tuple[jax.Array, jax.Array]:
    """(row, column) index arrays of shape [n, bits]: where bit b of weight k lives in the array
    (k = 0..n-1, or the given weight indices k)."""
    k = jnp.arange(n, dtype=jnp.int32) if k is None else jnp.asarray(k, jnp.int32)
    row, slot = memory_array_rows_slots(k, bits, compat)
    cols = slot[:, None] * bits + jnp.arange(bits, dtype=jnp.int32)[None, :]
    return jnp.broadcast_to(row[:, None], cols.shape), cols


def _layer_maps(key, n: int, p, q, bits: int, placement: str, array_maps, compat: bool, bound: float):
    """(map_1to0, map_0to1, FaultStats) uint32 of shape (n,) for n consecutive words of a layer."""
    if placement == "independent":
        return F.stuck_at_maps(key, n, p, q, F.int_stored_mask(bits), rate_bound=bound)
    m10, m01 = memory_array_word_maps(array_maps[0], array_maps[1], n, bits, compat)
    n01 = jnp.sum(jax.lax.population_count(m01), dtype=jnp.int32)
    nf = jnp.sum(jax.lax.population_count(m10 | m01), dtype=jnp.int32)
    return m10, m01, F.fault_stats(nf, n01, n * bits)


def fault_masks(key: jax.Array, n: int, ber, ber0=0.5, bits: int = 8, placement: str = "independent",
                array_codes: jax.Array | None = None, *, compat: bool = False,
                rate_bound=None) -> tuple[jax.Array, jax.Array]:
    """(map_1to0, map_0to1): uint32 bit masks (low ``bits`` bits) for n consecutive weights.

    For the memory-array placement ``array_codes`` (from :func:`memory_array_codes`) is the
    shared per-key array (drawn from ``key`` when not given).
    """
    check_placement(placement)
    bits = check_bits(bits)
    bound = _resolved(ber, ber0, rate_bound)
    array_maps = None
    if placement == "memory_array":
        array_maps = (_array_maps_from_codes(array_codes) if array_codes is not None
                      else memory_array_maps(key, ber, ber0, rate_bound=bound)[:2])
    m10, m01, _ = _layer_maps(key, n, ber, ber0, bits, placement, array_maps, compat, bound)
    return m10, m01


# ----------------------------------------------------------------------------------- kernels
@jax.custom_jvp
def _straight_through(w: jax.Array, wf: jax.Array) -> jax.Array:
    """Forward: exactly wf (bit-exact, unlike w + stop_gradient(wf - w)); derivative wrt w: identity."""
    return wf


@_straight_through.defjvp
def _straight_through_jvp(primals, tangents):
    w, wf = primals
    dw, _ = tangents
    return wf, dw


def _perturb_kernel(w, key, ber, ber0, bits, placement, array_maps, layout, compat, bound, straight_through):
    q, delta = quantize(w, bits)
    flat = to_layout_order(q, layout)
    m10, m01, st = _layer_maps(key, flat.shape[0], ber, ber0, bits, placement, array_maps, compat, bound)
    qf = from_layout_order(_apply(flat, m10, m01, bits, compat), w.shape, layout)
    wf = dequantize(qf, delta).astype(w.dtype)
    if straight_through:
        wf = _straight_through(w, jax.lax.stop_gradient(wf))
    return wf, st


def _resolved(ber, ber0, rate_bound):
    """Validated rates: Python numbers stay Python numbers (static zero short-cut), traced stay traced."""
    _, bound = F.resolve_rate("ber", ber, rate_bound)
    F.resolve_rate("ber0", ber0, bounded=False)
    return bound


def perturb_kernel(w: jax.Array, key: jax.Array, ber, ber0=0.5, bits: int = 8,
                   placement: str = "independent", array_codes: jax.Array | None = None,
                   straight_through: bool = True, *, layout: str | None = None, compat: bool = False,
                   rate_bound=None) -> jax.Array:
    """Quantize one kernel, inject stuck-at faults, return the dequantized faulty kernel.

    With straight_through the value is exactly W' and the gradient wrt w is the identity (STE).
    """
    bound = _resolved(ber, ber0, rate_bound)
    bits = check_bits(bits)
    layout = resolve_layout(layout, placement)
    array_maps = None
    if placement == "memory_array":
        array_maps = (_array_maps_from_codes(array_codes) if array_codes is not None
                      else memory_array_maps(key, ber, ber0, rate_bound=bound)[:2])
    return _perturb_kernel(w, key, ber, ber0, bits, placement, array_maps, layout, compat, bound, straight_through)[0]


def _perturb_params(params: PyTree, key, ber, ber0, bits, placement, layout, compat, bound, straight_through):
    """(perturbed params, FaultStats over all kernels): the one code path of every SRAM injection."""
    if placement == "independent":
        return _perturb_params_independent(params, key, ber, ber0, bits, layout, compat, bound, straight_through)
    array_maps = memory_array_maps(key, ber, ber0, rate_bound=bound)[:2]
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    out, stats, i = [], [], 0
    for path, x in leaves:
        if is_kernel(path, x):
            wf, st = _perturb_kernel(x, jax.random.fold_in(key, i), ber, ber0, bits, placement, array_maps, layout,
                                     compat, bound, straight_through)
            out.append(wf)
            stats.append(st)
            i += 1
        else:
            out.append(x)
    return jax.tree_util.tree_unflatten(treedef, out), F.merge_stats(stats)


def _perturb_params_independent(params, key, ber, ber0, bits, layout, compat, bound, straight_through):
    """The independent placement: kernel i's cells drawn from fold_in(key, i), exactly as
    _perturb_kernel would draw them one kernel at a time, but every kernel in one sampler loop
    (one compiled sampler per model instead of one per kernel)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    idx = [j for j, (path, x) in enumerate(leaves) if is_kernel(path, x)]
    width = _container_bits(bits, compat) or bits
    quantized = [quantize(leaves[j][1], bits) for j in idx]
    words = [F.int_to_words(to_layout_order(q, layout), width) for q, _ in quantized]
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(len(idx), dtype=jnp.uint32))
    faulty, stats = F.inject_stuck_at_each(keys, words, ber, ber0, F.int_stored_mask(bits), rate_bound=bound)
    out = [x for _, x in leaves]
    for j, (q, delta), u in zip(idx, quantized, faulty):
        w = leaves[j][1]
        qf = from_layout_order(F.words_to_int(u, width), w.shape, layout)
        wf = dequantize(qf, delta).astype(w.dtype)
        out[j] = _straight_through(w, jax.lax.stop_gradient(wf)) if straight_through else wf
    return jax.tree_util.tree_unflatten(treedef, out), stats


def perturb_params(params: PyTree, key: jax.Array, ber, ber0=0.5, bits: int = 8,
                   placement: str = "independent", straight_through: bool = True, *, layout: str | None = None,
                   compat: bool = False, rate_bound=None) -> PyTree:
    """One perturbed model: every conv/dense kernel quantized, faulted and dequantized.

    Pure in (params, key): the same key gives the same perturbed model. Kernel i uses
    ``fold_in(key, i)`` (independent placement) or the one shared memory array of ``key``.
    Biases, batch-norm parameters etc. are unchanged. Run the result with the model's
    ``clone(quant_bits=None)`` (the weights are already dequantized). ``ber`` may be traced
    when ``rate_bound`` is given; with straight_through the gradient wrt the kernels is the
    identity (EOPM training).
    """
    bound = _resolved(ber, ber0, rate_bound)
    bits = check_bits(bits)
    layout = resolve_layout(layout, placement)
    return _perturb_params(params, key, ber, ber0, bits, placement, layout, bool(compat), bound, straight_through)[0]


def perturb_variables(variables: dict, key: jax.Array, ber, ber0=0.5, bits: int = 8,
                      placement: str = "independent", **options) -> dict:
    """perturb_params applied to variables["params"]; other collections (batch_stats) unchanged."""
    out = dict(variables)
    out["params"] = perturb_params(variables["params"], key, ber, ber0, bits, placement, **options)
    return out


# --------------------------------------------------------------------------------- replay
def apply_reference_map(q, stuck_at_1, stuck_at_0, bits: int = 8, layout: str = "torch", *, compat: bool = False):
    """Replay a recorded pair of 8192 x 128 cell maps (1 = faulty) on one layer's quantized weights.

    ``q``: the layer's integer weights in the Flax shape (conv HWIO, dense (in, out)); weight k
    in the ``layout`` order takes the memory-array cells described in the module docstring.
    A cell set in both maps reads 1 (the stuck-at-1 map is applied last, as
    ``(word & ~map_1to0) | map_0to1``). Returns (faulty q as int32 in the Flax shape, FaultStats
    of the faulty weight bits).
    """
    bits = check_bits(bits)
    check_layout(layout)
    q = jnp.asarray(q)
    check(jnp.issubdtype(q.dtype, jnp.integer), f"q must be an integer array, got {q.dtype}")
    m01 = pack_cells(stuck_at_1)
    m10 = pack_cells(stuck_at_0)
    flat = to_layout_order(q, layout)
    w10, w01 = memory_array_word_maps(m10, m01, flat.shape[0], bits, compat)
    out = from_layout_order(_apply(flat, w10, w01, bits, compat), q.shape, layout)
    n01 = jnp.sum(jax.lax.population_count(w01), dtype=jnp.int32)
    nf = jnp.sum(jax.lax.population_count(w10 | w01), dtype=jnp.int32)
    return out, F.fault_stats(nf, n01, flat.shape[0] * bits)


# --------------------------------------------------------------------------- the fault model
@dataclasses.dataclass(frozen=True)
class SRAMBitErrors(FaultModel):
    """Stuck-at bit errors in the SRAM words of every quantized conv/dense kernel.

    ``perturb(key, variables, ber)``: kernels quantized (``bits``), each stored cell stuck with
    probability ber (stuck-at-1 share ``ber0``) under the given placement/layout/compat,
    dequantized back to float; other collections unchanged. ``ber`` may be traced; the static
    ``rate_bound`` (>= every ber of a sweep) sizes the sampler's chunks.
    """

    ber0: float = 0.5
    bits: int = 8
    placement: str = "independent"
    layout: str | None = None  # None: the placement's default (resolve_layout)
    compat: bool = False
    rate_bound: float = DEFAULT_RATE_BOUND
    format: str | None = None  # None: ``bits``-bit symmetric integers (the behaviour above)

    rate_name: ClassVar[str] = "ber"

    def __post_init__(self):
        if self.format is not None:
            from jaxfault.core import formats as FM

            FM.get(self.format)
            if self.compat:
                raise JaxfaultError("compat reproduces the reference's integer words; it takes no format")
        object.__setattr__(self, "ber0", check_probability("ber0", self.ber0))
        if isinstance(self.bits, bool) or not isinstance(self.bits, (int, np.integer)):
            raise JaxfaultError(f"bits must be one of 4, 8, 16, got {self.bits!r}")
        object.__setattr__(self, "bits", check_bits(int(self.bits)))
        object.__setattr__(self, "layout", resolve_layout(self.layout, self.placement))
        if not isinstance(self.compat, (bool, np.bool_)):
            raise JaxfaultError(f"compat must be true or false, got {self.compat!r}")
        object.__setattr__(self, "compat", bool(self.compat))
        object.__setattr__(self, "rate_bound", check_rate_bound(self.rate_bound))

    def prepare(self, variables: PyTree) -> PyTree:
        """The clean quantized model: every kernel replaced by dequantize(quantize(w)) (ber = 0),
        or by its value in ``format``."""
        def clean(path, x):
            if not is_kernel(path, x):
                return x
            if self.format is not None:
                from jaxfault.core import formats as FM

                return FM.get(self.format).quantize(x).astype(x.dtype)
            q, delta = quantize(x, self.bits)
            return dequantize(q, delta).astype(x.dtype)

        out = dict(variables)
        out["params"] = jax.tree_util.tree_map_with_path(clean, variables["params"])
        return out

    def perturb(self, key: jax.Array, variables: PyTree, rate):
        """(variables with faulty kernels, FaultStats over all kernel cells)."""
        _, bound = F.resolve_rate("ber", rate, self.rate_bound)
        if self.format is not None:
            return self._perturb_format(key, variables, rate, bound)
        params, stats = _perturb_params(variables["params"], key, rate, self.ber0, self.bits, self.placement,
                                        self.layout, self.compat, bound, straight_through=False)
        out = dict(variables)
        out["params"] = params
        return out, stats


    def _perturb_format(self, key, variables, rate, bound):
        """The format path (:func:`jaxfault.ecc.formatted.perturb_leaves`): kernel i's element
        words drawn from fold_in(key, i) as above, MX scales from further keys."""
        from jaxfault.ecc.formatted import perturb_leaves

        leaves, treedef = jax.tree_util.tree_flatten_with_path(variables["params"])
        idx = [j for j, (p, x) in enumerate(leaves) if is_kernel(p, x)]
        faulty, stats = perturb_leaves(key, [leaves[j][1] for j in idx], self.format, rate, self.ber0,
                                       placement=self.placement, layout=self.layout, rate_bound=bound)
        out = [x for _, x in leaves]
        for j, v in zip(idx, faulty):
            out[j] = v.astype(leaves[j][1].dtype)
        return {**variables, "params": jax.tree_util.tree_unflatten(treedef, out)}, stats


def sram_bit_errors(**config) -> SRAMBitErrors:
    """Build (and validate) an SRAM bit-error fault model: ber0, bits, placement, layout, compat, rate_bound."""
    names = {f.name for f in dataclasses.fields(SRAMBitErrors)}
    unknown = sorted(set(config) - names)
    if unknown:
        raise JaxfaultError(f"unknown SRAM fault option {unknown[0]!r}; choose from {', '.join(sorted(names))}")
    return SRAMBitErrors(**config)


register_fault_model("sram", SRAMBitErrors, rate_name="ber", method="neuralfuse",
                     description="low-voltage SRAM bit errors on quantized kernels (NeuralFuse)")
