"""Faults on weights stored in any number format, optionally under a format protection scheme.

:func:`perturb_leaves` is the one code path that the HBM and SRAM fault models take for a
``format``: every selected leaf is encoded (:mod:`jaxfault.core.formats`), its element words (in the
``layout`` weight order) and, for MX formats, its scale bytes are turned into stored regions by
the scheme (:mod:`jaxfault.ecc.format_schemes`), the regions are faulted
(:func:`jaxfault.faults.stored.inject_regions`), decoded, corrected and put back.

Keys: the element words of leaf i draw from ``fold_in(key, i)`` (as the SRAM model's kernels
always have, so an integer format gives that model's faults exactly); every other region (MX
scales, check bits) draws from ``fold_in(key, L + j)`` with L the number of leaves and j its
index among those regions. Under the memory-array placement every region reads the one array of
``key``: a leaf's element words at indices 0.., its scales after them.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from jaxfault.core import formats as FM
from jaxfault.faults import placement as fp
from jaxfault.faults.stored import inject_regions

U32 = jnp.uint32


def _width(mask: int) -> int:
    return int(mask).bit_length()


def perturb_leaves(key, leaves: Sequence[jax.Array], fmt, ber, zero_to_one=0.0, *, scheme: str = "none",
                   mode: str = "stuck-at", placement: str = "independent", layout: str = "flax",
                   rate_bound=None):
    """Faulty copies of float leaves stored in ``fmt`` under ``scheme``.

    Args:
      key: the trial's typed key.
      leaves: float arrays (the values as stored: quantized to fmt already, or quantized here).
      fmt: a format name or NumberFormat.
      ber: probability that a stored cell is faulty (may be traced; then give rate_bound).
      zero_to_one: share of stuck-at faults that read 1.
      scheme: a name of :data:`jaxfault.ecc.format_schemes.FORMAT_SCHEMES`.
      mode: "stuck-at" or "flip"; placement: "independent" or "memory_array"; layout: the
        weight order of the element words ("flax" or "torch").
    Returns:
      (list of float32 leaves, stats dict: the injection's statistics plus ``corrected``,
      ``detected`` (codewords) and ``changed_fraction`` (elements whose value changed)).
    """
    from jaxfault.ecc.format_schemes import check_pair

    s, fmt = check_pair(scheme, fmt)
    fp.check_layout(layout)
    L = len(leaves)
    regions, owners, keys = [], [], []
    encoded = []
    extra = 0
    for i, x in enumerate(leaves):
        st = fmt.encode(x)
        encoded.append(st)
        el = fp.to_layout_order(st.elements, layout)
        for j, r in enumerate(s.encode(el, fmt.element_roles, start=0)):
            regions.append(r)
            owners.append((i, "element", j))
            keys.append(jax.random.fold_in(key, i) if j == 0 else jax.random.fold_in(key, L + extra))
            extra += j != 0
        if fmt.scale_in_memory:
            sc = jnp.reshape(st.scales, (-1,))
            for j, r in enumerate(s.encode(sc, fmt.scale_roles, start=int(el.shape[0]))):
                regions.append(r)
                owners.append((i, "scale", j))
                keys.append(jax.random.fold_in(key, L + extra))
                extra += 1
    widths = [_width(r.mask) for r in regions]
    faulty, stats = inject_regions(keys, regions, ber, zero_to_one, mode=mode, placement=placement,
                                   array_key=key, word_bits=widths, rate_bound=rate_bound)
    out = []
    corrected = jnp.int32(0)
    detected = jnp.int32(0)
    changed = jnp.int32(0)
    n_el = 0
    for i, x in enumerate(leaves):
        parts = {f: [w for w, (o, ff, _) in zip(faulty, owners) if o == i and ff == f] for f in ("element", "scale")}
        el, c1, d1 = s.decode(parts["element"], fmt.element_roles)
        st = encoded[i]
        elements = fp.from_layout_order(el, st.elements.shape, layout)
        scales = st.scales
        if fmt.scale_in_memory:
            sc, c2, d2 = s.decode(parts["scale"], fmt.scale_roles)
            scales = jnp.reshape(sc, st.scales.shape)
            c1, d1 = c1 + c2, d1 + d2
        value = fmt.decode(FM.Stored(elements, scales))
        clean = fmt.decode(st)
        changed = changed + jnp.sum(jax.lax.bitcast_convert_type(value, U32)
                                    != jax.lax.bitcast_convert_type(clean, U32), dtype=jnp.int32)
        n_el += int(x.size)
        corrected, detected = corrected + c1, detected + d1
        out.append(value)
    stats = {**stats, "corrected": corrected, "detected": detected,
             "changed_fraction": changed.astype(jnp.float32) / max(n_el, 1)}
    return out, stats
