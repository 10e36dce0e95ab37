"""Eyeriss-like row-stationary energy estimator (SPEC section 4) as a pure, jittable function.

Everything here is a function of arrays: the layer shapes (`LayerArrays`, one entry per conv/FC
layer), the per-layer bit widths and pruning ratios, and the hardware table (`Hardware`, a
pytree). Because PE-array sizes and unit energies are traced values, the estimator can be vmapped
over design points (bit widths, pruning, unit energies, PE-array size) in one XLA call.

Conventions (SPEC 4, generalised to non-square shapes, see docs/energy.md):
  K^2 -> kh*kw, O^2 -> oh*ow, I^2 -> ih*iw (padded input), "K O I" -> kh*oh*iw.
  Filter rows map onto PE rows (replic = pe_rows // kh), output rows onto PE columns
  (fold = ceil(oh / pe_cols)); psum NoC hops run along filter rows ((kh - 1) ...), RF psum
  accumulation along filter columns (2 (kw - 1) kh ...). For square shapes this is SPEC 4 exactly.
  Grouped convs (groups G) are G independent convs with C/G inputs and M/G outputs each.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxfault.errors import JaxfaultError

REF_BITS = 16.0  # unit energies are normalised to 16-bit operands (SPEC 4)
TYPES = ("weights", "inputs", "psums")
LEVELS = ("DRAM", "GLB", "NoC", "RF")


class Hardware(NamedTuple):
    """Unit energies per 16-bit access (normalised to one MAC) and the PE array (rows, cols).

    Defaults are SPEC 4 / Eyeriss (Chen et al., ISCA 2016, Fig. 7 normalised costs; 12x14 PEs).
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
    sides added; SPEC's symmetric `pad` is 2*pad here). For FC layers (is_fc=1) kh, kw are the
    input's spatial size (SPEC: input K x K x C) and ih = kh, iw = kw, pads 0, strides 1."""

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
        return self.computation + self.data.sum((-1, -2))

    @property
    def total(self) -> jax.Array:
        """(...): whole-network energy."""
        return self.per_layer.sum(-1)


class Counts(NamedTuple):
    """Access counts (no unit energies, no bit scaling): macs (..., L); data (..., L, 3, 4)."""

    macs: jax.Array
    data: jax.Array


def output_size(i, k, pad_total, stride):
    """floor((I + pad_total - K) / stride) + 1 (SPEC 4 with pad_total = 2 pad); int arrays."""
    return (i + pad_total - k) // stride + 1


def access_counts(layers: LayerArrays, pw, pe_rows=12, pe_cols=14) -> Counts:
    """SPEC 4 access counts per layer for pruning ratios pw (L,); PE dims may be traced."""
    i32 = jnp.int32
    L = {k: jnp.asarray(v, i32) for k, v in layers._asdict().items()}
    pe_rows = jnp.asarray(pe_rows, i32)
    pe_cols = jnp.asarray(pe_cols, i32)
    is_fc = L["is_fc"] != 0
    kh, kw, g = L["kh"], L["kw"], L["groups"]
    ih_p = L["ih"] + L["pad_h"]
    iw_p = L["iw"] + L["pad_w"]
    oh = output_size(L["ih"], kh, L["pad_h"], L["sh"])
    ow = output_size(L["iw"], kw, L["pad_w"], L["sw"])
    replic = pe_rows // kh
    fold = (oh + pe_cols - 1) // pe_cols
    rep_ge = replic >= fold
    rep_div_fold = replic // jnp.maximum(fold, 1)

    f = jnp.float32
    keep = 1.0 - jnp.asarray(pw, f)
    c = (L["c"] // g).astype(f)
    m = (L["m"] // g).astype(f)
    K2 = (kh * kw).astype(f)
    khf, kwf = kh.astype(f), kw.astype(f)
    ohf, owf = oh.astype(f), ow.astype(f)
    O2 = ohf * owf
    I2 = ih_p.astype(f) * iw_p.astype(f)
    KOI = khf * ohf * iw_p.astype(f)
    replic_f = replic.astype(f)
    pe_cols_f = pe_cols.astype(f)

    # ---- conv layer (SPEC 4, "Conv layer")
    w_base = K2 * c * m * keep
    conv_macs = w_base * O2
    conv_w = jnp.stack(
        [w_base, w_base, jnp.where(rep_ge, ohf, replic_f * pe_cols_f) * w_base, K2 * O2 * c * m * keep], -1
    )
    conv_i = jnp.stack(
        [
            I2 * c,
            jnp.where(rep_ge, I2 * c, I2 * c * m),
            jnp.where(rep_ge, rep_div_fold.astype(f) * KOI * c, KOI * c * m),
            KOI * c * m,
        ],
        -1,
    )
    conv_p = jnp.stack(
        [O2 * m, 2.0 * O2 * (c - 1.0) * m, (khf - 1.0) * O2 * c * m, 2.0 * (kwf - 1.0) * khf * O2 * c * m], -1
    )

    # ---- fully connected layer (SPEC 4, "Fully connected layer"; O = 1)
    blocks = pe_cols_f * replic_f
    fc_macs = w_base
    fc_w = jnp.stack([w_base, w_base, w_base, w_base], -1)
    fc_i = jnp.stack([K2 * c, K2 * c, K2 * blocks * c, K2 * m * c], -1)
    fc_p = jnp.stack([m, 2.0 * (c - 1.0) * m, (khf - 1.0) * c * m, 2.0 * (kwf - 1.0) * khf * c * m], -1)

    gf = g.astype(f)
    macs = jnp.where(is_fc, fc_macs, conv_macs) * gf
    data = jnp.stack(
        [jnp.where(is_fc[:, None], fc, cv) for fc, cv in ((fc_w, conv_w), (fc_i, conv_i), (fc_p, conv_p))], -2
    ) * gf[:, None, None]
    return Counts(macs, data)


def energy_core(layers: LayerArrays, qw, qa, pw, hw: Hardware = Hardware()) -> Energy:
    """Per-layer SPEC 4 energy. qw, qa, pw: (L,) (or scalars, broadcast). Pure and jittable;
    vmap it over any of qw, qa, pw, hw to evaluate many design points in one call."""
    n = layers.kh.shape[-1]
    f = jnp.float32
    qw = jnp.broadcast_to(jnp.asarray(qw, f), (n,))
    qa = jnp.broadcast_to(jnp.asarray(qa, f), (n,))
    pw = jnp.broadcast_to(jnp.asarray(pw, f), (n,))
    counts = access_counts(layers, pw, hw.pe_rows, hw.pe_cols)
    unit = jnp.stack([jnp.asarray(u, f) for u in (hw.dram, hw.glb, hw.noc, hw.rf)])  # (4,)
    sw, sa = qw / REF_BITS, qa / REF_BITS
    scale = jnp.stack([sw, sa, sa], -1)  # (L, 3): weights by qw, inputs and psums by qa
    data = counts.data * unit * scale[:, :, None]
    comp = counts.macs * jnp.asarray(hw.mac, f) * sw * sa
    return Energy(comp, data)


energy_jit = jax.jit(energy_core)


def check_design(qw, qa, pw, num_layers: int | None = None, hw: Hardware | None = None) -> None:
    """Raise JaxfaultError for bit widths <= 0, pruning outside [0, 1), bad hardware or lengths."""
    for name, v in (("qw", qw), ("qa", qa)):
        a = np.asarray(v, dtype=np.float64)
        bad = ~(a > 0) | ~np.isfinite(a)
        if bad.any():
            raise JaxfaultError(f"{name} (bit width) must be > 0, got {a[bad].ravel()[0]!r}")
    a = np.asarray(pw, dtype=np.float64)
    bad = ~((a >= 0) & (a < 1))
    if bad.any():
        raise JaxfaultError(f"pw (pruning ratio) must be in [0, 1), got {a[bad].ravel()[0]!r}")
    if num_layers is not None:
        for name, v in (("qw", qw), ("qa", qa), ("pw", pw)):
            s = np.shape(v)
            if len(s) and s[-1] not in (1, num_layers):
                raise JaxfaultError(f"{name} has {s[-1]} per-layer values, the network has {num_layers} layers")
    if hw is not None:
        for name in ("mac", "rf", "noc", "glb", "dram"):
            a = np.asarray(getattr(hw, name), dtype=np.float64)
            if not (np.isfinite(a).all() and (a >= 0).all()):
                raise JaxfaultError(f"unit energy {name} must be finite and >= 0, got {getattr(hw, name)!r}")
        for name in ("pe_rows", "pe_cols"):
            a = np.asarray(getattr(hw, name))
            if not (np.all(a == np.round(a)) and (a >= 1).all()):
                raise JaxfaultError(f"{name} must be an integer >= 1, got {getattr(hw, name)!r}")
