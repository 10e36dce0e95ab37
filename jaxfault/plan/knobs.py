"""Knobs, not rates: the physical settings of each stage and the rates they imply.

* HBM: refresh interval (s) -> retention BER through the retention table
  (:func:`jaxfault.energy.protection.retention_ber`: log-log interpolation), for an ECC scheme.
* SRAM: supply voltage (relative to nominal) -> SRAM BER through the voltage table
  (:func:`jaxfault.energy.protection.voltage_ber`: log-linear interpolation), with or without a
  NeuralFuse generator in front of the model.
* CiM: write-verify fraction -> which weights are verified (a selection method); the CiM stage's
  rate is the device variation ``dev_var`` of the unverified weights.

Inside a table's range the documented relations are used as they are. Outside it a knob is an
error unless the stage allows extrapolation, which extends the table's end segment in the same
space (log-log for retention, log-linear for voltage), with the BER capped at 0.5.

These relations are the built-in stages' (jaxfault.plan.stages); a registered stage brings its own.
"""
from __future__ import annotations

import numpy as np

from jaxfault.energy import protection as P
from jaxfault.core.errors import JaxfaultError, plain

MAX_BER = 0.5


def _table(table, default, where: str, name: str, rising: bool) -> np.ndarray:
    if table is None:
        table = default
    try:
        arr = np.asarray(table, np.float64)
    except (TypeError, ValueError):
        raise JaxfaultError(f"{where}: {name} must be a list of [x, ber] number pairs, got {plain(table)!r}") from None
    try:
        return P._check_table(arr, f"{where}: {name}", rising)
    except JaxfaultError as e:
        raise JaxfaultError(str(e)) from None


def retention_table(table=None, where: str = "plan: hbm") -> np.ndarray:
    """The retention table [[interval_s, ber], ...] sorted by interval (default: RETENTION_BER_TABLE)."""
    t = _table(table, P.RETENTION_BER_TABLE, where, "retention_table", True)
    if np.any(t[:, 0] <= 0):
        raise JaxfaultError(f"{where}: retention_table intervals must be > 0, got {t[:, 0].tolist()}")
    return t


def voltage_table(table=None, where: str = "plan: sram") -> np.ndarray:
    """The voltage table [[V/V_nom, ber], ...] sorted by voltage (default: VOLTAGE_BER_TABLE)."""
    t = _table(table, P.VOLTAGE_BER_TABLE, where, "voltage_table", False)
    if np.any(t[:, 0] <= 0):
        raise JaxfaultError(f"{where}: voltage_table voltages must be > 0, got {t[:, 0].tolist()}")
    return t


def check_in_range(value: float, table: np.ndarray, knob: str, unit: str, table_name: str, extrapolate: bool,
                   where: str) -> None:
    """One-line error when value lies outside the table's knob range and extrapolation is off."""
    lo, hi = float(table[0, 0]), float(table[-1, 0])
    if not extrapolate and not (lo <= value <= hi):
        raise JaxfaultError(f"{where}: {knob} {value:g} is outside the {table_name}'s range [{lo:g}, {hi:g}] {unit} "
                            f"(set \"extrapolate\": true to extend its end segments)")


def _extend(x: float, xs: np.ndarray, log_bers: np.ndarray) -> float:
    """log BER on the line through the nearest end segment (x already in the interpolation space)."""
    i = (0, 1) if x < xs[0] else (-2, -1)
    x0, x1 = xs[i[0]], xs[i[1]]
    y0, y1 = log_bers[i[0]], log_bers[i[1]]
    return float(y0 + (y1 - y0) * (x - x0) / (x1 - x0))


def retention_ber(interval_s: float, table: np.ndarray) -> float:
    """Retention BER of a refresh interval (protection.retention_ber inside the table; the
    log-log end segment extended outside it, BER capped at 0.5)."""
    if table[0, 0] <= interval_s <= table[-1, 0]:
        return float(P.retention_ber(interval_s, table))
    y = _extend(np.log(interval_s), np.log(table[:, 0]), np.log(table[:, 1]))
    return float(min(np.exp(y), MAX_BER))


def voltage_ber(voltage: float, table: np.ndarray) -> float:
    """SRAM BER at a relative supply voltage (protection.voltage_ber inside the table; the
    log-linear end segment extended outside it, BER capped at 0.5)."""
    if table[0, 0] <= voltage <= table[-1, 0]:
        return float(P.voltage_ber(voltage, table))
    y = _extend(voltage, table[:, 0], np.log(table[:, 1]))
    return float(min(np.exp(y), MAX_BER))
