"""Plan stages: a registered fault model, the knobs that set its rate, and what the knobs cost.

A plan stage is one section of a plan file. It names a registered fault model
(``jaxfault.faults.fault_models``) and says, as data and small pure functions:

* ``knobs``: the knob grids of the section (lists of values, expanded as a cartesian product),
  and ``settings``: its fixed settings (one value each). Both are ``jaxfault.core.config.Field`` lists,
  so a section is validated like every other config, once, before any work.
* ``rate(knobs, section)``: the knob relation, from this stage's knob values to the fault model's
  rate (a refresh interval to a retention BER, a supply voltage to an SRAM BER).
* ``nominal``: the knob values of the unprotected nominal design, the reference of every saving.
* ``structural``: the knobs that change the fault model's structure (an ECC scheme): they are
  passed to the fault model's factory and select a compiled program. Every other knob only moves
  the traced rate, or (``input_knobs``) the evaluation inputs.
* ``energy(knobs, section, terms)``: extra energy terms per inference (normalised units, one
  16-bit MAC = 1) that this stage's knobs cost, given the terms already computed.
* ``label(knobs)``: how a configuration's knobs of this stage are printed.

The fault model of a stage is ``build_fault_model(fault_model, **fields)``, its fields taken from
the structural knobs and the settings whose names are fields of the fault model's dataclass.

Register a stage with :func:`register_plan_stage`; a plan may then hold a section of its name,
and ``eval.plan`` evaluates it composed with the other stages, in registration order (the built-in
memories first: HBM words, SRAM buffers, the CiM array). Stage names and knob names are unique.

A configuration (:class:`Configuration`) is one value of every knob of a plan's active stages
and the rates they imply; :func:`expand` builds them in a fixed order.
"""
from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Callable

import numpy as np

from jaxfault.core.config import Field
from jaxfault.energy import protection as P
from jaxfault.core.errors import JaxfaultError, plain
from jaxfault.core.keys import point_hash
from jaxfault.plan import knobs as K
from jaxfault.core.protocol import Registry


def _no_energy(knobs: dict, section: dict, terms: dict) -> dict:
    return {}


def _no_check(section: dict, where: str, task: str) -> dict:
    return section


@dataclasses.dataclass(frozen=True)
class PlanStage:
    """One plan section: a registered fault model, its knob grids, settings and knob relation.

    Attributes:
      name: the plan section's name.
      fault_model: the registered fault model the stage perturbs with.
      knobs: the knob grids (list fields); a knob given as one value is read as a one-item list.
      settings: the fixed settings (every other field of the section).
      rate: rate(stage_knobs, section) -> the fault model's rate at those knob values.
      nominal: knob -> value of the unprotected nominal design.
      label: label(knobs) -> the knobs as printed in tables and logs.
      structural: knobs passed to the fault model (one compiled program per combination).
      input_knobs: knobs that change the evaluation inputs, not the rate (run as separate groups).
      row_settings: settings recorded in every row's id (default: every setting but extrapolate).
      energy: energy(knobs, section, terms) -> {term: energy per inference} added to the total.
      check: check(section, where, task) -> section: checks across fields, after each field's own.
      noisy: the fault model changes every weight in every trial, so no trial can reuse the score
        of weights already evaluated.
      nominal_text: the nominal design's setting of this stage in words (default: its label).
    """

    name: str
    fault_model: str
    knobs: tuple
    settings: tuple
    rate: Callable[[dict, dict], float]
    nominal: dict
    label: Callable[[dict], str]
    structural: tuple = ()
    input_knobs: tuple = ()
    row_settings: tuple | None = None
    energy: Callable[[dict, dict, dict], dict] = _no_energy
    check: Callable[[dict, str, str], dict] = _no_check
    noisy: bool = False
    nominal_text: str | None = None

    def __post_init__(self):
        names = [f.name for f in self.knobs]
        if not names:
            raise JaxfaultError(f"plan stage {self.name!r} needs at least one knob")
        if sorted(names) != sorted(self.nominal):
            raise JaxfaultError(f"plan stage {self.name!r}: nominal values {sorted(self.nominal)} must name exactly "
                                f"its knobs {sorted(names)}")
        for k in (*self.structural, *self.input_knobs):
            if k not in names:
                raise JaxfaultError(f"plan stage {self.name!r}: {k!r} is not one of its knobs {names}")

    @property
    def knob_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.knobs)

    @property
    def fields(self) -> list[Field]:
        """The section's fields: knobs, settings, and ``fault_model``, which may name a preset of
        the stage's fault model instead (jaxfault.faults.fault_models.register_preset)."""
        return [*self.knobs, *self.settings, Field("fault_model", str, self.fault_model)]

    def check_section(self, section: dict, where: str, task: str) -> dict:
        """A section whose fields are valid one by one, checked as a whole."""
        from jaxfault.faults.fault_models import base_fault_model, fixed_fields

        name = section["fault_model"]
        if base_fault_model(name) != self.fault_model:
            raise JaxfaultError(f"{where}: fault_model {name!r} is not {self.fault_model!r} or a preset of it")
        fixed = fixed_fields(name)
        for k in self.knob_names:
            if k in fixed:
                raise JaxfaultError(f"{where}: fault_model {name!r} fixes {k}, a knob of this stage")
        return self.check(section, where, task)

    def recorded_settings(self, section: dict) -> dict:
        """The fixed settings that enter a row's id (the fault model too, when it is a preset)."""
        names = self.row_settings if self.row_settings is not None else \
            tuple(f.name for f in self.settings if f.name != "extrapolate")
        out = {k: section[k] for k in names}
        if section.get("fault_model", self.fault_model) != self.fault_model:
            out["fault_model"] = section["fault_model"]
        return out

    def build(self, section: dict, knobs: dict):
        """The stage's fault model (or the section's preset of it): structural knobs and the
        settings that are its fields."""
        from jaxfault.faults.fault_models import build_fault_model, config_fields

        name = section.get("fault_model", self.fault_model)
        fields = set(config_fields(name))
        config = {k: section[k] for k in (f.name for f in self.settings) if k in fields}
        config.update({k: knobs[k] for k in self.structural})
        return build_fault_model(name, **config)


PLAN_STAGES = Registry("plan stage")


def register_plan_stage(stage: PlanStage) -> PlanStage:
    """Make `stage` a section that plans may hold. Its knob names must not be another stage's."""
    if stage.name not in PLAN_STAGES:
        taken = {k: s for s in stages() for k in s.knob_names}
        for k in stage.knob_names:
            if k in taken:
                raise JaxfaultError(f"plan stage {stage.name!r}: knob {k!r} is already a knob of stage "
                                    f"{taken[k].name!r}")
    PLAN_STAGES.register(stage.name, stage)
    return stage


def get_stage(name: str) -> PlanStage:
    return PLAN_STAGES.get(name).factory


def stages() -> tuple[PlanStage, ...]:
    """Every registered stage, in registration order (the order data flows through them)."""
    return tuple(PLAN_STAGES.get(n).factory for n in PLAN_STAGES.names())


def stage_names() -> tuple[str, ...]:
    return PLAN_STAGES.names()


# ------------------------------------------------------------------------------ configurations
@dataclasses.dataclass(frozen=True)
class Configuration:
    """One design point: a value of every knob of the active stages, and the rates they imply.

    ``knobs`` holds the knob values of the active stages (scheme / refresh_interval_s for hbm,
    voltage / generator for sram, write_verify for cim, and those of any registered stage);
    ``rates`` one rate per active stage, in stage order; ``nominal`` marks the reference design.
    """

    knobs: dict
    rates: tuple
    nominal: bool = False

    @property
    def config_id(self) -> str:
        return point_hash(self.knobs)

    @property
    def program_key(self) -> tuple:
        """Configurations with the same program key share one compiled program: the structural
        knobs only (an ECC scheme); rates are traced, data is an input."""
        return tuple(self.knobs[k] for s in stages() for k in s.structural if k in self.knobs)

    @property
    def group_key(self) -> tuple:
        """Configurations with the same group key share their inputs (images, write-verify mask)
        and run together: the structural and input knobs (scheme, generator, write-verify fraction)."""
        return tuple(self.knobs[k] for s in stages() for k in (*s.structural, *s.input_knobs) if k in self.knobs)


def stage_rate(stage: str, knobs: dict, plan: dict) -> float:
    """The rate one stage's knobs imply under the plan's settings (its knob relation)."""
    s = get_stage(stage)
    return float(s.rate({k: knobs[k] for k in s.knob_names}, plan[stage]))


def configuration(knobs: dict, plan: dict, stage_list, nominal: bool = False) -> Configuration:
    return Configuration(dict(knobs), tuple(stage_rate(s, knobs, plan) for s in stage_list), nominal)


def nominal_knobs(stage_list) -> dict:
    """The unprotected nominal design of the stages (each stage's ``nominal``): for the built-in
    ones no ECC at 64 ms refresh, nominal voltage without a generator, every weight write-verified."""
    return {k: v for s in stage_list for k, v in get_stage(s).nominal.items()}


def expand(plan: dict, stage_list) -> list[Configuration]:
    """Every configuration of the plan's knob grids (cartesian product, stage order, knob order,
    then the order the values are listed), then the nominal design if the grid does not contain it."""
    axes = [(f.name, plan[s][f.name]) for s in stage_list for f in get_stage(s).knobs]
    names = [a[0] for a in axes]
    nominal = nominal_knobs(stage_list)
    out = []
    for combo in itertools.product(*[a[1] for a in axes]):
        knobs = dict(zip(names, combo))
        out.append(configuration(knobs, plan, stage_list, nominal=knobs == nominal))
    if not any(c.nominal for c in out):
        out.append(configuration(nominal, plan, stage_list, nominal=True))
    return out


def _stages_of(knobs: dict) -> list[PlanStage]:
    return [s for s in stages() if all(k in knobs for k in s.knob_names)]


def knob_text(knobs: dict) -> str:
    """A configuration's knobs as printed: each active stage's label, in stage order."""
    return ", ".join(s.label(knobs) for s in _stages_of(knobs))


def nominal_text(knobs: dict) -> str:
    """The nominal design of the stages a configuration's knobs belong to, in words."""
    return ", ".join(s.nominal_text or s.label(s.nominal) for s in _stages_of(knobs))


# ------------------------------------------------------------------------------ the built-in memories
def _check_hbm(cfg: dict, where: str, task: str) -> dict:
    from jaxfault.ecc import SCHEMES, check_scheme_block_size

    for s in cfg["scheme"]:
        if s not in SCHEMES:
            SCHEMES.get(s)  # one-line error with the nearest name
        check_scheme_block_size(s, cfg["block_size"])
    table = K.retention_table(cfg["retention_table"], where)
    cfg["retention_table"] = [list(r) for r in table]
    for v in cfg["refresh_interval_s"]:
        K.check_in_range(v, table, "refresh_interval_s", "s", "retention table", cfg["extrapolate"], where)
    return cfg


def _check_generators(values: list) -> list:
    out = []
    for i, g in enumerate(values):
        if g is not None and not (isinstance(g, str) and g):
            raise JaxfaultError(f"plan: sram: generator[{i}] must be a checkpoint folder path or null, got {plain(g)!r}")
        if g in out:
            raise JaxfaultError(f"plan: sram: generator {g!r} is listed twice")
        if g is not None and not (Path(g) / "jaxfault.json").is_file():
            raise JaxfaultError(f"plan: sram: generator {g!r} is not a checkpoint folder (no jaxfault.json in it)")
        out.append(g)
    return out


def _check_sram(cfg: dict, where: str, task: str) -> dict:
    cfg["generator"] = _check_generators(cfg["generator"])
    table = K.voltage_table(cfg["voltage_table"], where)
    cfg["voltage_table"] = [list(r) for r in table]
    for v in cfg["voltage"]:
        K.check_in_range(v, table, "voltage", "V_nom", "voltage table", cfg["extrapolate"], where)
    if task == "language_model" and any(g is not None for g in cfg["generator"]):
        raise JaxfaultError("plan: sram: generator: a NeuralFuse generator transforms images; a language model's "
                            "plan takes [null]")
    return cfg


SELECTIONS = ("magnitude", "random", "SM", "second", "saliency")


def _check_cim(cfg: dict, where: str, task: str) -> dict:
    if task == "language_model" and cfg["selection"] not in ("magnitude", "random"):
        raise JaxfaultError(f"plan: cim: selection {cfg['selection']!r} ranks weights by a classifier's "
                            "curvature; a language model's plan takes 'magnitude' or 'random'")
    return cfg


def _sram_label(knobs: dict) -> str:
    g = knobs.get("generator")
    return f"{knobs['voltage']:g} V_nom" + (f" + G({Path(g).name})" if g else "")


HBM = register_plan_stage(PlanStage(
    name="hbm", fault_model="hbm",
    knobs=(Field("scheme", list, ["none", "secded", "sparrow"], items=str, nonempty=True, unique=True),
           Field("refresh_interval_s", list, items=float, nonempty=True, unique=True, min=0, min_open=True)),
    settings=(Field("zero_to_one", float, 0.01, min=0, max=1),
              Field("block_size", int, 64),
              Field("extrapolate", bool, False),
              Field("retention_table", list, None, nullable=True)),
    rate=lambda k, s: K.retention_ber(k["refresh_interval_s"], np.asarray(s["retention_table"])),
    nominal={"scheme": "none", "refresh_interval_s": P.NOMINAL_REFRESH_S},
    label=lambda k: f"{k['scheme']} @ {1000 * k['refresh_interval_s']:g} ms",
    structural=("scheme",), row_settings=("zero_to_one", "block_size"), check=_check_hbm,
    nominal_text="unprotected, 64 ms"))

SRAM = register_plan_stage(PlanStage(
    name="sram", fault_model="sram",
    knobs=(Field("voltage", list, items=float, nonempty=True, unique=True, min=0, min_open=True),
           Field("generator", list, [None], nonempty=True)),
    settings=(Field("bits", int, 8, choices=(4, 8, 16)),
              Field("ber0", float, 0.5, min=0, max=1),
              Field("extrapolate", bool, False),
              Field("voltage_table", list, None, nullable=True)),
    rate=lambda k, s: K.voltage_ber(k["voltage"], np.asarray(s["voltage_table"])),
    nominal={"voltage": 1.0, "generator": None},
    label=_sram_label, input_knobs=("generator",), row_settings=("bits", "ber0"), check=_check_sram,
    nominal_text="nominal voltage"))

CIM = register_plan_stage(PlanStage(
    name="cim", fault_model="cim",
    knobs=(Field("write_verify", list, items=float, nonempty=True, unique=True, min=0, max=1),),
    settings=(Field("selection", str, "magnitude", choices=SELECTIONS),
              Field("dev_var", float, 0.1, min=0),
              Field("write_var", float, 0.03, min=0),
              Field("selection_examples", int, 2000, min=1)),
    rate=lambda k, s: float(s["dev_var"]),
    nominal={"write_verify": 1.0},
    label=lambda k: f"verify {100 * k['write_verify']:g} %",
    input_knobs=("write_verify",), check=_check_cim, noisy=True, nominal_text="full write-verify"))
