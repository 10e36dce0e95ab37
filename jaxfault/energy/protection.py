"""Energy of protection: the hardware knob each method turns, turned into energy.

(a) Sparrow / SEC-DED: DRAM refresh energy vs refresh interval, with the ECC's storage overhead
    (stored bits per 16-bit weight), and a refresh-interval -> retention BER table.
(b) NeuralFuse: SRAM (GLB + RF) dynamic access energy vs supply voltage, E ~ V^2, and a
    voltage -> SRAM BER table.
(c) SWIM: write-verify programming cycles vs the fraction of weights verified.

All energies are in the estimator's normalised unit (one 16-bit MAC = 1). Every default below is
a named constant with its source in its comment and in docs/energy.md; every function takes
overrides. All functions are jnp-based, so they jit and vmap over operating points.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from jaxfault.energy.core import LEVELS, Energy
from jaxfault.core.errors import JaxfaultError

# ------------------------------------------------------------------ units
# pJ per normalised unit: the model's DRAM access (200 units per 16-bit word) set equal to half of
# the 640 pJ 32-bit DRAM read of Horowitz (ISSCC 2014 keynote, as tabulated in Han et al.,
# "Learning both Weights and Connections", NeurIPS 2015, Table 1): 320 pJ / 200 = 1.6 pJ.
PJ_PER_UNIT = 1.6

# ------------------------------------------------------------------ (a) DRAM refresh and ECC
# Stored bits per 16-bit weight come from the ECC scheme registry (jaxfault.ecc): each scheme
# carries its own stored_mask, so a newly registered scheme is priced without edits here.
# Sparrow stores 18 bits for blocks of 32/64 weights and 19 for blocks of 16 ("sparrow-b16");
# SEC-DED (72, 64) spends the same 12.5 % overhead (8 check bits per 64 data bits).

# Refresh energy per stored bit per refresh, in pJ. Derived with the Micron TN-40-07 method from
# DDR4 8 Gb JEDEC timing (tRFC = 350 ns, 8192 REF commands per 64 ms -> 2^20 bits per REF,
# VDD = 1.2 V) and an ASSUMED refresh current above standby IDD5B - IDD3N = 150 mA:
# 0.150 A * 1.2 V * 350 ns / 2^20 bits = 0.060 pJ/bit. Order of magnitude only: pass your part's.
REFRESH_PJ_PER_BIT = 0.150 * 1.2 * 350e-9 / 2**20 * 1e12
NOMINAL_REFRESH_S = 0.064  # JEDEC DDR3/DDR4 retention window (64 ms at <= 85 C)
# ASSUMED time one inference keeps the weights resident (a 30 frame/s stream): refresh energy per
# inference = refresh power * this period.
INFERENCE_PERIOD_S = 1.0 / 30.0


def _retention_default():
    # RAIDR (Liu et al., ISCA 2012, Sec. 2.3): in a 32 GB DRAM system ~30 cells fail below 128 ms
    # and ~1000 below 256 ms -> BER 1.1e-10 and 3.6e-9. Beyond 256 ms: ASSUMED power law through
    # these two points (BER ~ t^5.03). Replace with a measured table for your DRAM/temperature.
    bits = 32 * 2**30 * 8
    t0, b0, t1, b1 = 0.128, 30 / bits, 0.256, 1000 / bits
    k = np.log(b1 / b0) / np.log(t1 / t0)
    ts = (0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192)
    return tuple((t, float(min(b0 * (t / t0) ** k, 0.5))) for t in ts)


RETENTION_BER_TABLE = _retention_default()


def ecc_names() -> tuple[str, ...]:
    """ECC names the energy model prices: every registered scheme, plus sparrow-b16 (B = 16)."""
    from jaxfault.ecc import scheme_names

    return (*scheme_names(), "sparrow-b16")


def ecc_stored_bits(ecc: str | int) -> int:
    """Stored bits per 16-bit weight for a registered ECC name (or sparrow-b16), or a number."""
    from jaxfault.ecc import SCHEMES, get_scheme

    if isinstance(ecc, (int, np.integer)) or (isinstance(ecc, str) and ecc.isdigit()):
        b = int(ecc)
        if b < 16:
            raise JaxfaultError(f"ECC stored bits per 16-bit weight must be >= 16, got {ecc!r}")
        return b
    if ecc == "sparrow-b16":
        return get_scheme("sparrow", 16).stored_bits
    if not isinstance(ecc, str) or ecc not in SCHEMES:
        raise JaxfaultError(f"unknown ECC scheme {ecc!r}; choose from {', '.join(ecc_names())} or a bit count")
    return get_scheme(ecc).stored_bits


def weight_storage_bits(num_weights, qw=16, pw=0.0, stored_bits=16):
    """Bits of DRAM holding the weights: per layer num_weights * (1 - pw) * qw, times the ECC's
    stored_bits / 16 overhead (pruned weights are not stored; arrays broadcast per layer)."""
    n = jnp.asarray(num_weights, jnp.float32) * (1.0 - jnp.asarray(pw, jnp.float32)) * jnp.asarray(qw, jnp.float32)
    return n.sum(-1) * (jnp.asarray(stored_bits, jnp.float32) / 16.0)


def dram_refresh_energy(
    storage_bits,
    interval_s,
    *,
    pj_per_bit: float = REFRESH_PJ_PER_BIT,
    period_s: float = INFERENCE_PERIOD_S,
    pj_per_unit: float = PJ_PER_UNIT,
):
    """Refresh energy (normalised units) spent keeping storage_bits bits in DRAM for period_s
    seconds when every row is refreshed once per interval_s."""
    interval_s = jnp.asarray(interval_s, jnp.float32)
    bits = jnp.asarray(storage_bits, jnp.float32)
    return bits * (pj_per_bit / pj_per_unit) * (period_s / interval_s)


# Fraction of a DRAM weight read whose energy scales with the stored bits: 1.0 = the ECC check
# bits are read and moved with the data (side-band ECC); on-die ECC that never leaves the die
# (HBM3, LPDDR5) is closer to the array-activation share only. ASSUMED 1.0 (the pessimistic case).
ECC_READ_SCALING = 1.0


def dram_weight_energy_with_ecc(energy: Energy, stored_bits=16, read_scaling: float = ECC_READ_SCALING):
    """Per-layer DRAM weight-read energy when each 16-bit weight is stored as stored_bits bits:
    the share read_scaling of the read energy grows by stored_bits / 16."""
    ratio = jnp.asarray(stored_bits, jnp.float32) / 16.0
    return energy.data[..., 0, 0] * (1.0 + read_scaling * (ratio - 1.0))


def _interp_log(x, xs, ys, log_x: bool):
    xs = np.asarray(xs, np.float64)
    ys = np.asarray(ys, np.float64)
    xx = jnp.log(jnp.asarray(x, jnp.float32)) if log_x else jnp.asarray(x, jnp.float32)
    xt = np.log(xs) if log_x else xs
    return jnp.interp(xx, jnp.asarray(xt, jnp.float32), jnp.asarray(ys, jnp.float32))


def _check_table(table, name, increasing_ber_with_x: bool):
    t = np.asarray(table, np.float64)
    if t.ndim != 2 or t.shape[1] != 2 or len(t) < 2:
        raise JaxfaultError(f"{name} must be a list of at least two [x, ber] pairs, got shape {t.shape}")
    if not (np.all(np.isfinite(t)) and np.all(t[:, 1] > 0) and np.all(t[:, 1] <= 1)):
        raise JaxfaultError(f"{name}: BER values must be in (0, 1], got {t[:, 1].tolist()}")
    order = np.argsort(t[:, 0])
    t = t[order]
    d = np.diff(t[:, 1])
    if not (np.all(d > 0) if increasing_ber_with_x else np.all(d < 0)) or np.any(np.diff(t[:, 0]) <= 0):
        raise JaxfaultError(f"{name} must be strictly monotone (BER {'rising' if increasing_ber_with_x else 'falling'} with x)")
    return t


def retention_ber(interval_s, table=RETENTION_BER_TABLE):
    """BER of DRAM cells refreshed every interval_s (log-log interpolation in table, clamped)."""
    t = _check_table(table, "retention table", True)
    return jnp.exp(_interp_log(interval_s, t[:, 0], np.log(t[:, 1]), log_x=True))


def interval_for_ber(ber, table=RETENTION_BER_TABLE):
    """Longest refresh interval whose retention BER is <= ber (inverse of retention_ber)."""
    t = _check_table(table, "retention table", True)
    return jnp.exp(_interp_log(ber, t[:, 1], np.log(t[:, 0]), log_x=True))


# ------------------------------------------------------------------ (b) SRAM voltage (NeuralFuse)
NOMINAL_VOLTAGE = 1.0  # voltages are relative to nominal VDD unless the user passes absolute ones


def _voltage_default():
    # ANCHOR: the NeuralFuse paper reports up to 24 % SRAM access energy saved at 1 % BER; with
    # E ~ V^2 that is V/Vnom = sqrt(0.76) = 0.872 at BER 1e-2. SLOPE: ASSUMED one decade of BER per
    # 0.03 Vnom (SRAM bit-error rates rise exponentially as VDD drops below Vmin, cf. the
    # low-voltage SRAM measurements cited by NeuralFuse; the slope is not a measured value).
    v0, b0, slope = float(np.sqrt(0.76)), 1e-2, 0.03
    vs = np.round(np.arange(0.84, 1.001, 0.02), 4)
    return tuple((float(v), float(min(b0 * 10 ** ((v0 - v) / slope), 0.5))) for v in vs)


VOLTAGE_BER_TABLE = _voltage_default()
SRAM_LEVELS = ("GLB", "RF")  # Eyeriss' on-chip SRAM/register levels whose supply NeuralFuse lowers


def sram_energy(energy: Energy, voltage, v_nominal: float = NOMINAL_VOLTAGE, levels: Sequence[str] = SRAM_LEVELS):
    """Per-layer data energy at the given SRAM levels when their supply is `voltage` (dynamic
    energy ~ V^2: C V^2 per access). Leading axes of `voltage` broadcast against the layers."""
    idx = [LEVELS.index(l) for l in levels]
    base = energy.data[..., :, :, idx].sum((-1, -2))
    return base * (jnp.asarray(voltage, jnp.float32)[..., None] / v_nominal) ** 2


def total_energy_at_voltage(energy: Energy, voltage, v_nominal: float = NOMINAL_VOLTAGE, levels: Sequence[str] = SRAM_LEVELS):
    """Whole-network energy with the SRAM levels at `voltage` and everything else nominal."""
    idx = [LEVELS.index(l) for l in levels]
    sram = energy.data[..., :, :, idx].sum((-1, -2, -3))
    v = jnp.asarray(voltage, jnp.float32)
    return energy.total - sram + sram * (v / v_nominal) ** 2


def voltage_ber(voltage, table=VOLTAGE_BER_TABLE):
    """SRAM bit error rate at supply `voltage` (log-linear interpolation, clamped to the table)."""
    t = _check_table(table, "voltage table", False)
    return jnp.exp(_interp_log(voltage, t[:, 0], np.log(t[:, 1]), log_x=False))


def voltage_for_ber(ber, table=VOLTAGE_BER_TABLE):
    """Lowest supply voltage whose SRAM BER is <= ber (inverse of voltage_ber, clamped)."""
    t = _check_table(table, "voltage table", False)
    t = t[::-1]  # BER increasing
    return _interp_log(ber, t[:, 1], t[:, 0], log_x=True)


# ------------------------------------------------------------------ (c) write-verify (SWIM)
# SWIM's defaults (docs/swim.md): N = 8 bits per weight on devices of m = 1 bit -> 8 devices per weight.
WEIGHT_BITS = 8
BITS_PER_DEVICE = 1
# ASSUMED mean program-and-verify iterations per verified device (iterative write-verify of
# multi-level NVM cells takes on the order of ten pulses, e.g. Shim et al., "Two-step write-verify
# scheme ... RRAM-based inference engine", 2020); a plain write is one pulse. Override it.
VERIFY_ITERATIONS = 10.0


@dataclasses.dataclass(frozen=True)
class WriteVerify:
    """Programming cost model: cycles per device for plain and verified writes."""

    weight_bits: int = WEIGHT_BITS
    bits_per_device: int = BITS_PER_DEVICE
    verify_iterations: float = VERIFY_ITERATIONS
    plain_cycles: float = 1.0


def write_verify_cycles(num_weights, fraction, model: WriteVerify = WriteVerify()):
    """Programming cycles to write num_weights weights when a fraction of them is write-verified."""
    if model.weight_bits < 1 or model.bits_per_device < 1 or model.weight_bits % model.bits_per_device:
        raise JaxfaultError(f"bits per device {model.bits_per_device} must divide weight bits {model.weight_bits}")
    if not model.verify_iterations >= model.plain_cycles > 0:
        raise JaxfaultError(f"verify iterations {model.verify_iterations} must be >= plain cycles {model.plain_cycles} > 0")
    f = jnp.asarray(fraction, jnp.float32)
    devices = jnp.asarray(num_weights, jnp.float32) * (model.weight_bits // model.bits_per_device)
    return devices * ((1.0 - f) * model.plain_cycles + f * model.verify_iterations)


def relative_write_verify_cost(fraction, model: WriteVerify = WriteVerify()):
    """Cycles relative to verifying every weight (1.0 = full write-verify)."""
    return write_verify_cycles(1.0, fraction, model) / write_verify_cycles(1.0, 1.0, model)
