"""Eyeriss-like row-stationary energy estimator as a pure, jittable function. The model (access
counts per level and data type, unit energies, bit scaling) is written out in docs/energy.md,
"The model, exactly".

Everything here is a function of arrays: the layer shapes (`LayerArrays`, one entry per conv/FC
layer), the per-layer bit widths and pruning ratios, and the hardware table (`Hardware`, a
pytree). Because PE-array sizes and unit energies are traced values, the estimator can be vmapped
over design points (bit widths, pruning, unit energies, PE-array size) in one XLA call.

Conventions (the square-shape model generalised to non-square shapes, see docs/energy.md):
  K^2 -> kh*kw, O^2 -> oh*ow, I^2 -> ih*iw (padded input), "K O I" -> kh*oh*iw.
  Filter rows map onto PE rows (replic = pe_rows // kh), output rows onto PE columns
  (fold = ceil(oh / pe_cols)); psum NoC hops run along filter rows ((kh - 1) ...), RF psum
  accumulation along filter columns (2 (kw - 1) kh ...). Square shapes give the square-shape formulas.
  Grouped convs (groups G) are G independent convs with C/G inputs and M/G outputs each.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxfault.core.errors import JaxfaultError, plain

REF_BITS = 16.0  # unit energies are normalised to 16-bit operands (docs/energy.md)
TYPES = ("weights", "inputs", "psums")
LEVELS = ("DRAM", "GLB", "NoC", "RF")


class Hardware(NamedTuple):
    """Unit energies per 16-bit access (normalised to one MAC) and the PE array (rows, cols).

    Defaults are Eyeriss' (Chen et al., ISCA 2016, Fig. 7 normalised costs; 12x14 PEs), docs/energy.md.
    All fields may be arrays (one value per design point) so the estimator vmaps over them.
    """

    mac: float = 1.0
    rf: float = 1.0
    noc: float = 2.0
    glb: float = 6.0
    dram: float = 200.0
    pe_rows: int = 12
    pe_cols: int = 14


class LayerArrays(NamedTuple):
    """Per-layer shapes as int32 arrays of shape (L,). `pad_h`/`pad_w` are TOTAL padding (both
    sides added; a symmetric per-side `pad` is 2*pad here). For FC layers (is_fc=1) kh, kw are the
    input's spatial size (input K x K x C) and ih = kh, iw = kw, pads 0, strides 1."""

    is_fc: jax.Array
    kh: jax.Array
    kw: jax.Array
    c: jax.Array
    m: jax.Array
    ih: jax.Array
    iw: jax.Array
    pad_h: jax.Array
    pad_w: jax.Array
    sh: jax.Array
    sw: jax.Array
    groups: jax.Array


class Energy(NamedTuple):
    """Per-layer energy (leading design-point axes allowed).

    computation: (..., L) MAC energy.  data: (..., L, 3, 4) data-movement energy indexed
    [type (weights, inputs, psums), level (DRAM, GLB, NoC, RF)].
    """

    computation: jax.Array
    data: jax.Array

    @property
    def by_type(self) -> jax.Array:
        """(..., L, 3): weights, inputs, psums (summed over levels)."""
        return self.data.sum(-1)

    @property
    def by_level(self) -> jax.Array:
        """(..., L, 4): DRAM, GLB, NoC, RF (summed over types)."""
        return self.data.sum(-2)

    @property
    def per_layer(self) -> jax.Array:
        """(..., L): computation + all data movement."""
        # sums as products with ones: XLA CPU vectorises these far better than small reductions
        flat = self.data.reshape(self.data.shape[:-2] + (12,))
        return self.computation + flat @ jnp.ones((12,), flat.dtype)

    @property
    def total(self) -> jax.Array:
        """(...): whole-network energy."""
        pl = self.per_layer
        return pl @ jnp.ones(pl.shape[-1:], pl.dtype)


class Counts(NamedTuple):
    """Access counts (no unit energies, no bit scaling): macs (..., L); data (..., L, 3, 4)."""

    macs: jax.Array
    data: jax.Array


def output_size(i, k, pad_total, stride):
    """floor((I + pad_total - K) / stride) + 1 (pad_total = 2 pad for symmetric padding); int arrays."""
    return (i + pad_total - k) // stride + 1


def _terms(layers: LayerArrays, pw, pe_rows, pe_cols):
    """Access counts as (macs, [[4 levels] x 3 types]) of broadcastable arrays (no stacking).

    Shapes broadcast: layer fields (L,) with pw (..., L) and PE dims (..., 1) or scalars, or
    layer fields (L, 1) with pw (L, P) and PE dims (P,) (layer-major batches).
    Integer floor/ceil divisions are done in float32, exact for these small integers."""
    f = jnp.float32
    F = {k: jnp.asarray(v).astype(f) for k, v in layers._asdict().items()}
    pe_rows = jnp.asarray(pe_rows).astype(f)
    pe_cols = jnp.asarray(pe_cols).astype(f)
    is_fc = F["is_fc"] != 0
    kh, kw, g = F["kh"], F["kw"], F["groups"]
    ih_p = F["ih"] + F["pad_h"]
    iw_p = F["iw"] + F["pad_w"]
    oh = jnp.floor((ih_p - kh) / F["sh"]) + 1.0
    ow = jnp.floor((iw_p - kw) / F["sw"]) + 1.0
    replic = jnp.floor(pe_rows / kh)
    fold = jnp.ceil(oh / pe_cols)
    rep_ge = replic >= fold
    rep_div_fold = jnp.floor(replic / jnp.maximum(fold, 1.0))

    keep = 1.0 - jnp.asarray(pw, f)
    c = F["c"] / g
    m = F["m"] / g
    K2 = kh * kw
    O2 = oh * ow
    I2 = ih_p * iw_p
    KOI = kh * oh * iw_p
    cm = c * m

    # conv layer (docs/energy.md, "Conv layer"), times the number of groups
    w_base = K2 * cm * keep
    conv_macs = w_base * O2
    conv_w = (w_base, w_base, jnp.where(rep_ge, oh, replic * pe_cols) * w_base, w_base * O2)
    conv_i = (I2 * c, jnp.where(rep_ge, I2 * c, I2 * cm), jnp.where(rep_ge, rep_div_fold * KOI * c, KOI * cm), KOI * cm)
    conv_p = (O2 * m, 2.0 * O2 * (c - 1.0) * m, (kh - 1.0) * O2 * cm, 2.0 * (kw - 1.0) * kh * O2 * cm)
    # fully connected layer (docs/energy.md, "Fully connected layer"; O = 1)
    blocks = pe_cols * replic
    fc_w = (w_base,) * 4
    fc_i = (K2 * c, K2 * c, K2 * blocks * c, K2 * m * c)
    fc_p = (m, 2.0 * (c - 1.0) * m, (kh - 1.0) * cm, 2.0 * (kw - 1.0) * kh * cm)

    sel = lambda a, b: jnp.where(is_fc, a, b) * g
    macs = sel(w_base, conv_macs)
    data = tuple(tuple(sel(a, b) for a, b in zip(fc_t, cv_t)) for fc_t, cv_t in ((fc_w, conv_w), (fc_i, conv_i), (fc_p, conv_p)))
    return macs, data


def access_counts(layers: LayerArrays, pw, pe_rows=12, pe_cols=14) -> Counts:
    """Access counts per layer for pruning ratios pw (L,); PE dims may be traced."""
    macs, data = _terms(layers, pw, pe_rows, pe_cols)
    shape = jnp.broadcast_shapes(macs.shape, *(jnp.shape(x) for t in data for x in t))
    data = jnp.stack([jnp.stack([jnp.broadcast_to(x, shape) for x in t], -1) for t in data], -2)
    return Counts(jnp.broadcast_to(macs, shape), data)


def _scales(qw, qa, hw: Hardware):
    f = jnp.float32
    sw = jnp.asarray(qw, f) / REF_BITS
    sa = jnp.asarray(qa, f) / REF_BITS
    units = tuple(jnp.asarray(u, f) for u in (hw.dram, hw.glb, hw.noc, hw.rf))
    return sw, sa, units


def energy_core(layers: LayerArrays, qw, qa, pw, hw: Hardware = Hardware()) -> Energy:
    """Per-layer energy (docs/energy.md, "The model, exactly"). qw, qa, pw: (L,) (or scalars, broadcast). Pure and jittable;
    vmap it over any of qw, qa, pw, hw to evaluate many design points in one call."""
    n = jnp.shape(layers.kh)[-1]
    f = jnp.float32
    qw = jnp.broadcast_to(jnp.asarray(qw, f), (n,))
    qa = jnp.broadcast_to(jnp.asarray(qa, f), (n,))
    pw = jnp.broadcast_to(jnp.asarray(pw, f), (n,))
    counts = access_counts(layers, pw, hw.pe_rows, hw.pe_cols)
    sw, sa, units = _scales(qw, qa, hw)
    unit = jnp.stack(units)  # (4,)
    scale = jnp.stack([sw, sa, sa], -1)  # (L, 3): weights by qw, inputs and psums by qa
    data = counts.data * unit * scale[:, :, None]
    comp = counts.macs * jnp.asarray(hw.mac, f) * sw * sa
    return Energy(comp, data)


def total_energy_layer_major(layers: LayerArrays, qw, qa, pw, hw: Hardware = Hardware()):
    """Whole-network energy of P design points at once, without per-layer outputs.

    qw, qa, pw: (P, L); hw fields: scalars or (P,). Computes in layer-major (L, P) layout so the
    sum over layers is a sum of contiguous vectors; equals energy_core(...).total per point."""
    f = jnp.float32
    t = lambda a: jnp.asarray(a, f).T  # (L, P)
    la = LayerArrays(*(jnp.asarray(v)[:, None] for v in layers))
    macs, data = _terms(la, t(pw), hw.pe_rows, hw.pe_cols)
    sw, sa, units = _scales(t(qw), t(qa), hw)
    tot = macs * jnp.asarray(hw.mac, f) * sw * sa
    for s, terms in zip((sw, sa, sa), data):
        tot = tot + s * sum(x * u for x, u in zip(terms, units))
    return tot.sum(0)


energy_jit = jax.jit(energy_core)


def check_design(qw, qa, pw, num_layers: int | None = None, hw: Hardware | None = None) -> None:
    """Raise JaxfaultError for bit widths <= 0, pruning outside [0, 1), bad hardware or lengths."""
    for name, v in (("qw", qw), ("qa", qa)):
        a = np.asarray(v, dtype=np.float64)
        bad = ~(a > 0) | ~np.isfinite(a)
        if bad.any():
            raise JaxfaultError(f"{name} (bit width) must be > 0, got {a[bad].ravel()[0].item()!r}")
    a = np.asarray(pw, dtype=np.float64)
    bad = ~((a >= 0) & (a < 1))
    if bad.any():
        raise JaxfaultError(f"pw (pruning ratio) must be in [0, 1), got {a[bad].ravel()[0].item()!r}")
    if num_layers is not None:
        for name, v in (("qw", qw), ("qa", qa), ("pw", pw)):
            s = np.shape(v)
            if len(s) and s[-1] not in (1, num_layers):
                raise JaxfaultError(f"{name} has {s[-1]} per-layer values, the network has {num_layers} layers")
    if hw is not None:
        for name in ("mac", "rf", "noc", "glb", "dram"):
            a = np.asarray(getattr(hw, name), dtype=np.float64)
            if not (np.isfinite(a).all() and (a >= 0).all()):
                raise JaxfaultError(f"unit energy {name} must be finite and >= 0, got {plain(getattr(hw, name))!r}")
        for name in ("pe_rows", "pe_cols"):
            a = np.asarray(getattr(hw, name))
            if not (np.all(a == np.round(a)) and (a >= 1).all()):
                raise JaxfaultError(f"{name} must be an integer >= 1, got {plain(getattr(hw, name))!r}")
