"""Energy per inference of a configuration, from the energy model of jaxfault.energy.

One inference at the plan's inference period T costs (normalised units, one 16-bit MAC = 1):

    E = E_net(V)                    Eyeriss-like energy of the network with its on-chip SRAM
                                    levels (GLB, RF) at supply V (V^2 scaling), DRAM weight
                                    reads excluded
      + E_dram_read(scheme)         DRAM weight reads, grown by the scheme's stored bits / 16
      + E_refresh(scheme, t_REF)    refresh of the stored weight bits for T seconds
      + E_gen(V)                    the NeuralFuse generator's own inference at V (if any)
      + E_wv(f)                     write-verify programming of the CiM array, amortised:
                                    cycles(f) * pulse energy * T / reprogramming period
      + the terms of any other registered stage (its ``energy`` function of its knobs)

Stages that are not in the plan keep their nominal setting on both sides of the comparison
(16-bit words at 64 ms, nominal voltage, no CiM programming term without a CiM stage). The
reference is the unprotected nominal design (no ECC, 64 ms, nominal voltage, no generator, full
write-verify where CiM applies). Constants come from jaxfault.energy.protection unless the plan's
"energy" section overrides them; the CiM pulse energy and reprogramming period are assumptions
stated here and in docs/plan.md.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxfault.energy import protection as P
from jaxfault.energy.analysis import evaluate as network_energy
from jaxfault.energy.core import Hardware
from jaxfault.energy.layers import layers_from_model
from jaxfault.core.errors import JaxfaultError
from jaxfault.plan.stages import get_stage

# ASSUMED energy of one program (or verify) pulse of a CiM device: RRAM/PCM set/reset pulses are
# of the order of 1-10 pJ per cell (e.g. Yu & Chen, "Emerging memory technologies", IEEE SSC
# Magazine 2016); 10 pJ is the pessimistic end. Override with "cim_pulse_pj".
CIM_PULSE_PJ = 10.0
# ASSUMED time between two programmings of the CiM array (weights rewritten to counter drift or
# to load another model): one hour. Write-verify energy is amortised over the inferences in it.
CIM_REPROGRAM_PERIOD_S = 3600.0


@dataclasses.dataclass(frozen=True)
class EnergyModel:
    """The energy tables of one model (and its generators) for one plan."""

    layers: tuple
    num_weights: np.ndarray         # per layer
    net: Any                        # jaxfault.energy.core.Energy of the network
    generators: dict                # generator path -> Energy of the generator network
    qw: int
    period_s: float
    v_nominal: float
    refresh_pj_per_bit: float
    pj_per_unit: float
    ecc_read_scaling: float
    write_verify: P.WriteVerify
    cim_pulse_pj: float
    cim_reprogram_period_s: float
    sections: tuple = ()            # (stage name, validated section) of the active stages

    @property
    def stages(self) -> tuple:
        return tuple(name for name, _ in self.sections)

    def stored_bits(self, scheme: str | None, block_size: int = 64) -> int:
        if scheme is None:
            return 16
        from jaxfault.ecc import stored_bits_per_weight

        return stored_bits_per_weight(scheme, block_size)

    def breakdown(self, knobs: dict, block_size: int = 64) -> dict:
        """Energy terms of one configuration (normalised units per inference)."""
        v = float(knobs.get("voltage", 1.0)) * self.v_nominal
        bits = self.stored_bits(knobs.get("scheme"), block_size)
        interval = float(knobs.get("refresh_interval_s", P.NOMINAL_REFRESH_S))
        net = self.net
        dram_w0 = float(np.sum(net.data[..., 0, 0]))
        compute = float(P.total_energy_at_voltage(net, v, self.v_nominal)) - dram_w0
        dram_read = float(np.sum(P.dram_weight_energy_with_ecc(net, bits, self.ecc_read_scaling)))
        storage = float(P.weight_storage_bits(self.num_weights, self.qw, 0.0, bits))
        refresh = float(P.dram_refresh_energy(storage, interval, pj_per_bit=self.refresh_pj_per_bit,
                                              period_s=self.period_s, pj_per_unit=self.pj_per_unit))
        gen = knobs.get("generator")
        generator = float(P.total_energy_at_voltage(self.generators[gen], v, self.v_nominal)) if gen else 0.0
        wv = 0.0
        if "cim" in self.stages:
            cycles = float(P.write_verify_cycles(float(np.sum(self.num_weights)), float(knobs["write_verify"]),
                                                 self.write_verify))
            wv = cycles * self.cim_pulse_pj / self.pj_per_unit * self.period_s / self.cim_reprogram_period_s
        terms = {"network": compute, "dram_weight_reads": dram_read, "refresh": refresh, "generator": generator,
                 "write_verify": wv}
        for name, section in self.sections:
            for term, value in get_stage(name).energy(knobs, section, dict(terms)).items():
                if term in terms:
                    raise JaxfaultError(f"plan stage {name!r}: energy term {term!r} is already a term of the plan")
                terms[term] = float(value)
        return {"total": sum(terms.values()), **terms, "stored_bits_per_weight": bits}


def check_energy(knobs: dict, breakdown: dict) -> dict:
    """breakdown (EnergyModel.breakdown of the configuration knobs), if every term is a finite
    number; else a one-line JaxfaultError naming the configuration and the term, so that no plan
    prints or chooses by a NaN energy."""
    import math

    for term, value in breakdown.items():
        if not math.isfinite(float(value)):
            where = " ".join(f"{k}={v}" for k, v in knobs.items())
            raise JaxfaultError(f"plan: energy of {where or 'the nominal design'} is not finite ({term} {value!r}); "
                                f"check the plan's \"energy\" settings")
    return breakdown


def build_energy_model(model, variables, input_shape, plan: dict, stages, generators: dict | None = None) -> EnergyModel:
    """The energy model of a plan: the network's layers traced from the model, generator networks
    from their modules, constants from the plan's "energy" section or the protection defaults.

    generators: path -> (generator module, generator variables).
    """
    e = plan["energy"]
    layers = tuple(layers_from_model(model, input_shape, {k: v for k, v in variables.items()
                                                          if k in ("params", "batch_stats")}))
    hw = Hardware()
    net = network_energy(list(layers), e["qw"], e["qa"], 0.0, hw)
    gens = {}
    for path, (gen, gen_vars) in (generators or {}).items():
        glayers = layers_from_model(gen, input_shape, gen_vars)
        gens[path] = network_energy(glayers, e["qw"], e["qa"], 0.0, hw)
    wv = P.WriteVerify(verify_iterations=e["verify_iterations"] if e["verify_iterations"] is not None
                       else P.VERIFY_ITERATIONS)
    pick = lambda name, default: default if e[name] is None else e[name]  # noqa: E731
    return EnergyModel(layers=layers, num_weights=np.asarray([l.num_weights for l in layers], np.float64), net=net,
                       generators=gens, qw=e["qw"], period_s=plan["inference_period_s"], v_nominal=e["v_nominal"],
                       refresh_pj_per_bit=pick("refresh_pj_per_bit", P.REFRESH_PJ_PER_BIT),
                       pj_per_unit=pick("pj_per_unit", P.PJ_PER_UNIT),
                       ecc_read_scaling=pick("ecc_read_scaling", P.ECC_READ_SCALING), write_verify=wv,
                       cim_pulse_pj=pick("cim_pulse_pj", CIM_PULSE_PJ),
                       cim_reprogram_period_s=pick("cim_reprogram_period_s", CIM_REPROGRAM_PERIOD_S),
                       sections=tuple((s, plan[s]) for s in stages))
