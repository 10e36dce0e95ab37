"""Evaluate every configuration of a plan with the engine: composed stages, traced rates, few programs.

Each trial gives one score in [0, 1], higher is better (jaxfault.plan.report): top-1 accuracy of
a classifier on the first ``eval_examples`` test images, or 1 / perplexity of a language model
on its first ``eval_windows`` validation windows (0 for a diverged trial).

For a configuration, the fault model is ``compose(hbm, sram, cim)`` of the active stages (in that
order: weights are read from HBM words, buffered as quantized words in SRAM, computed in the CiM
array), and its rate vector is (retention BER, SRAM BER, dev_var) of its knobs. Stage i of a
trial is keyed ``fold_in(trial_key, i)`` (jaxfault.core.keys).

* **Programs.** Configurations that share the composed fault model's structure (the ECC scheme)
  share one engine program (``engine.make_trial_program``), sized for the largest rate of each
  stage among them: the rates are traced, and the generator-transformed images and the
  write-verify mask are inputs, not constants.
* **Groups.** Configurations that share their inputs (scheme, generator, write-verify
  fraction) run together, ``configs_per_call`` rate vectors per call (the last call of a group
  is padded with rate-0 rows, whose results are dropped).
* **Trials.** Every configuration uses the same trial keys (common random numbers: differences
  between configurations are not blurred by different draws):
  ``trial_keys(stream(root_key(seed), "plan"), trials)``.
* **Weights already evaluated.** When no stage adds noise to every weight (no CiM stage) or
  faults activations, and ``skip_fault_free`` is on, each trial first fingerprints its perturbed
  weights (two 32-bit linear hashes of their bit patterns; see ``params_fingerprint``) and looks
  them up in a memo of weights already evaluated on the same images, seeded with the fault
  models' own fault-free output (e.g. Sparrow's fault-free decode at rate 0, the quantized
  kernels for SRAM). A hit (no fault drawn; every fault masked by the stored value or corrected
  by the ECC; or the same faulty weights as an earlier configuration, e.g. the SRAM faults of one
  voltage under two refresh intervals whose HBM words drew no effective fault, since all
  configurations share their trial keys) returns the stored score through ``lax.cond``; a miss runs the forward
  pass and enters the memo after the call. Under ``lax.map`` (CPU) the forward pass is skipped;
  under ``vmap`` the condition becomes a select and both are computed (same numbers).
* **Resumable.** Each configuration's row is appended to a ResultsFile as soon as its call
  finishes, under an identity (checkpoint digest, data, examples, seed, trials, precision,
  evaluation dtype, stages); rows already there are not recomputed.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxfault import engine
from jaxfault.core import tasks
from jaxfault.core.errors import JaxfaultError
from jaxfault.faults.fault_models import InDtype, compose
from jaxfault.core.keys import point_hash, root_key, stream, trial_keys
from jaxfault.plan.config import active_stages
from jaxfault.plan.stages import Configuration, get_stage
from jaxfault.core.protocol import FaultModel
from jaxfault.core.tasks import get_task
from jaxfault.core.precision import precision_scope

MEMO = "plan_memo"                  # variables collection: fingerprints and scores of evaluated weights


# ------------------------------------------------------------------------------ fault models
def stage_fault_model(stage: str, plan: dict, scheme: str | None = None) -> FaultModel:
    """The fault model of one stage with the plan's fixed settings; `scheme` is the value of its
    structural knob, if it has one (the HBM stage's ECC scheme)."""
    s = get_stage(stage)
    return s.build(plan[stage], {k: scheme for k in s.structural})


def plan_fault_model(plan: dict, knobs: dict, rate_bounds) -> FaultModel:
    """compose(active stages) with a configuration's structural knobs, sized for rate_bounds (one
    per stage), in the plan's eval dtype."""
    stages = active_stages(plan)
    fm = compose(*[get_stage(s).build(plan[s], knobs) for s in stages]).with_rate_bound(np.asarray(rate_bounds))
    return fm if plan["eval_dtype"] == "auto" else InDtype(fm, plan["eval_dtype"])


def plan_trial_keys(seed: int, trials: int) -> jax.Array:
    """The trial keys every configuration of a plan uses."""
    return trial_keys(stream(root_key(seed), "plan"), trials)


# ------------------------------------------------------------------------------ data
@dataclasses.dataclass
class PlanData:
    """Model, evaluation data and generator-transformed images of a plan."""

    model: Any
    variables: dict
    images: Any                      # test images in the model's value range, or token windows (N, L)
    labels: Any                      # labels, or next-token targets (N, L)
    input_shape: tuple
    generator_images: dict           # path -> G(images), in the model's value range
    generators: dict                 # path -> (module, variables)
    identity: dict
    selection_data: tuple | None = None   # (images, labels) of curvature-based write-verify selections
    task: str = "classification"


def load_plan_data(plan: dict, log: Callable[[str], None] = print) -> PlanData:
    """Load the checkpoint (the cached default LeNet when null), the first eval_examples test
    images, and apply every generator of the plan to them once (outside any compiled trial); for a
    language model (the cached default one when null), its first eval_windows validation windows."""
    from pathlib import Path

    from jaxfault.training.checkpoints import checkpoint_digest, load_checkpoint
    from jaxfault.data import load_dataset
    from jaxfault.neuralfuse.eopm import to_base_range

    if plan["task"] == "language_model":
        return _load_lm_plan_data(plan, log)
    path = plan["checkpoint"]
    if path is None:
        from jaxfault.training.zoo import default_classifier

        path = default_classifier(log=log)
    ck = load_checkpoint(path, kind="classifier")
    base_range = ck.config.get("value_range", "symmetric")
    ds = load_dataset(ck.config.get("dataset", "fashion_mnist"), data_dir=plan["data_dir"], value_range="symmetric")
    n = min(plan["eval_examples"], len(ds.test_images))
    x_sym = jnp.asarray(ds.test_images[:n])
    images = to_base_range(x_sym, base_range)
    gens, gen_images, digests = {}, {}, {}
    for g in (plan["sram"] or {}).get("generator", []):
        if g is None:
            continue
        from jaxfault.neuralfuse.evaluate import apply_generator, load_generator

        gen, gen_vars, gcfg = load_generator(g)
        shape = tuple(gcfg.get("input_shape", x_sym.shape[1:]))
        if shape != tuple(x_sym.shape[1:]):
            raise JaxfaultError(f"plan: sram: generator {g!r} was trained on inputs {shape}, the data has "
                                f"{tuple(x_sym.shape[1:])}")
        gens[g] = (gen, gen_vars)
        gen_images[g] = to_base_range(apply_generator(gen, gen_vars, np.asarray(x_sym), plan["batch_size"]),
                                      base_range)
        digests[g] = checkpoint_digest(g)[:16]
    selection = None
    if plan["cim"] is not None and plan["cim"]["selection"] not in ("magnitude", "random"):
        k = min(plan["cim"]["selection_examples"], len(ds.train_images))
        selection = (to_base_range(jnp.asarray(ds.train_images[:k]), base_range), jnp.asarray(ds.train_labels[:k]))
    identity = {"checkpoint": str(Path(ck.path).resolve()), "checkpoint_digest": checkpoint_digest(ck.path)[:16],
                "dataset": ds.name, "data_dir": plan["data_dir"], "eval_examples": n, "seed": plan["seed"],
                "trials": plan["trials"], "precision": plan["precision"], "eval_dtype": plan["eval_dtype"],
                "stages": list(active_stages(plan)), "generator_digests": digests}
    variables = jax.tree_util.tree_map(jnp.asarray, ck.variables)
    return PlanData(ck.model, variables, images, jnp.asarray(ds.test_labels[:n]), tuple(x_sym.shape[1:]),
                    gen_images, gens, identity, selection)


def _load_lm_plan_data(plan: dict, log: Callable[[str], None]) -> PlanData:
    from pathlib import Path

    from jaxfault.training.checkpoints import META_FILE, checkpoint_digest
    from jaxfault.training.lm import hf_folder_digest
    from jaxfault.training.zoo import load_lm_and_data

    path, model, variables, x, y, _ = load_lm_and_data(plan["checkpoint"], plan["eval_windows"], log)
    digest = checkpoint_digest(path)[:16] if (Path(path) / META_FILE).is_file() else hf_folder_digest(path)
    identity = {"checkpoint": str(Path(path).resolve()), "checkpoint_digest": digest, "task": "language_model",
                "eval_windows": int(x.shape[0]), "window_tokens": int(x.shape[1]), "seed": plan["seed"],
                "trials": plan["trials"], "precision": plan["precision"], "eval_dtype": plan["eval_dtype"],
                "stages": list(active_stages(plan)), "generator_digests": {}}
    return PlanData(model, jax.tree_util.tree_map(jnp.asarray, variables), jnp.asarray(x), jnp.asarray(y),
                    (int(x.shape[1]),), {}, {}, identity, None, task="language_model")


def score_of(metrics: dict, task: str) -> jax.Array:
    """A trial's score (module docstring): top-1 accuracy, or 1 / perplexity (0 when inf)."""
    if task == "language_model":
        return 1.0 / metrics["perplexity"].astype(jnp.float32)
    return metrics["top1"].astype(jnp.float32)


def scoring_metric(base: Callable, task: str) -> Callable:
    """metric(variables, inputs, targets) -> {"score": ...} of the engine's task metric (and the
    count of activation faults, when a stage faults activations: the engine's output hook)."""
    def metric(variables, inputs, targets, **hook):
        m = base(variables, inputs, targets, **hook)
        return {"score": score_of(m, task), **({"activation_faults": m["activation_faults"]} if hook else {})}

    return metric


# ------------------------------------------------------------------------------ rows
def stage_settings(plan: dict) -> dict:
    """The fixed (non-knob) settings of the active stages, part of every row's id."""
    return {s: get_stage(s).recorded_settings(plan[s]) for s in active_stages(plan)}


def row_id(config: Configuration, plan: dict, identity: dict | None = None) -> str:
    """Results-file id of a configuration: its knobs, rates, the stages' fixed settings and the
    digest of its generator (if any)."""
    gen = config.knobs.get("generator")
    digest = (identity or {}).get("generator_digests", {}).get(gen) if gen else None
    return point_hash({"knobs": config.knobs, "rates": list(config.rates), "settings": stage_settings(plan),
                       "generator_digest": digest})


MEMO_SIZE = 8192                    # known (fingerprint, score) pairs carried into a call


def fingerprint_multipliers(params, seed: int = 0x5EED) -> tuple:
    """Two fixed odd uint32 multipliers per parameter value (from a fixed key: the same in every
    program, so fingerprints compare across schemes and calls)."""
    leaves = jax.tree_util.tree_leaves(params)
    base = jax.random.key(seed)
    return tuple(tuple(jax.random.bits(jax.random.fold_in(base, 2 * i + j), jnp.shape(x), jnp.uint32) | jnp.uint32(1)
                       for j in range(2)) for i, x in enumerate(leaves))


def params_fingerprint(params, multipliers) -> jax.Array:
    """(2,) uint32: two linear hashes mod 2^32 of the parameters' bit patterns with independent
    random odd multipliers. Two parameter sets that differ in one value never share a fingerprint
    (an odd multiplier keeps any nonzero difference nonzero mod 2^32); sets that differ in more
    values share one with probability about 2^-64."""
    h = [jnp.uint32(0), jnp.uint32(0)]
    for x, (m1, m2) in zip(jax.tree_util.tree_leaves(params), multipliers):
        x = jnp.asarray(x)
        width = {2: jnp.uint16, 4: jnp.uint32}.get(x.dtype.itemsize)
        b = (jax.lax.bitcast_convert_type(x, width) if width else x).astype(jnp.uint32)
        h[0] = h[0] + jnp.sum(b * m1, dtype=jnp.uint32)
        h[1] = h[1] + jnp.sum((b ^ (b >> 16) ^ jnp.uint32(0x9E3779B9)) * m2, dtype=jnp.uint32)
    return jnp.stack(h)


def memo_metric(base: Callable) -> Callable:
    """metric(variables, images, labels) that looks the perturbed params' fingerprint up in the
    table of already evaluated weights carried in variables[MEMO] (same inputs), returns the
    stored score on a hit and runs the forward pass otherwise; 'forward_pass' says which
    (1.0 = run), 'fp_lo'/'fp_hi' return the fingerprint so the caller can extend the table."""
    def metric(variables, images, labels):
        memo = variables[MEMO]
        fp = params_fingerprint(variables["params"], memo["multipliers"])
        match = jnp.all(memo["fingerprints"] == fp[None], axis=1) & (jnp.arange(MEMO_SIZE) < memo["n"])
        found = jnp.any(match)
        idx = jnp.argmax(match)
        run = lambda: {k: jnp.asarray(v, jnp.float32) for k, v in base(variables, images, labels).items()}  # noqa: E731
        keep = lambda: {k: v[idx] for k, v in memo["metric"].items()}  # noqa: E731
        out = jax.lax.cond(found, keep, run)
        return {**out, "forward_pass": 1.0 - found.astype(jnp.float32), "fp_lo": fp[0], "fp_hi": fp[1]}

    return metric


def counting_metric(base: Callable) -> Callable:
    def metric(variables, images, labels, **hook):
        return {**base(variables, images, labels, **hook), "forward_pass": jnp.float32(1.0)}

    return metric


def reuses_evaluated_weights(plan: dict, stages) -> bool:
    """Whether a trial's score may be looked up by its perturbed weights: only when every stage
    faults stored weights alone (not when one adds noise to every weight, a CiM stage, nor when
    one faults activations, whose faults the weights do not show)."""
    for s in stages:
        st = get_stage(s)
        if st.noisy or "activations" in st.build(plan[s], st.nominal).sites:
            return False
    return True


class Memo:
    """Scores of already evaluated weights, by fingerprint, for one set of inputs."""

    def __init__(self):
        self.table: dict[tuple, float] = {}

    def add(self, fps, scores) -> None:
        for (lo, hi), a in zip(np.asarray(fps).reshape(-1, 2), np.asarray(scores).reshape(-1)):
            if len(self.table) < MEMO_SIZE:
                self.table.setdefault((int(lo), int(hi)), float(a))

    def arrays(self, multipliers) -> dict:
        fps = np.zeros((MEMO_SIZE, 2), np.uint32)
        acc = np.zeros((MEMO_SIZE,), np.float32)
        for i, (k, v) in enumerate(self.table.items()):
            fps[i], acc[i] = k, v
        return {"fingerprints": jnp.asarray(fps), "metric": {"score": jnp.asarray(acc)},
                "n": jnp.int32(len(self.table)), "multipliers": multipliers}


# ------------------------------------------------------------------------------ evaluation
@dataclasses.dataclass
class _Program:
    program: engine.TrialProgram
    fault_model: FaultModel
    eval_model: Any
    prepared: dict
    base_metric: Callable


class Planner:
    """The engine programs and inputs of one plan run (explicit, local state)."""

    def __init__(self, plan: dict, data: PlanData, configs: list[Configuration], mesh=None):
        self.plan, self.data, self.configs, self.mesh = plan, data, configs, mesh
        self.stages = active_stages(plan)
        self.skip = plan["skip_fault_free"] and reuses_evaluated_weights(plan, self.stages)
        self.bounds: dict = {}
        for c in configs:
            b = self.bounds.get(c.program_key, np.zeros(len(self.stages)))
            self.bounds[c.program_key] = np.maximum(b, np.asarray(c.rates))
        self.programs: dict = {}
        self.masks: dict = {}
        self.keys = plan_trial_keys(plan["seed"], plan["trials"])
        self.clean_score: float | None = None
        self.memos: dict = {}            # generator (images) -> Memo
        self.inputs: dict = {}           # group key -> (variables, images) of group_inputs
        self.multipliers = None

    @property
    def compiled(self) -> int:
        """Engine programs compiled so far."""
        return sum(p.program.compiled_programs() for p in self.programs.values())

    def program_for(self, config: Configuration) -> _Program:
        pk = config.program_key
        if pk not in self.programs:
            fm = plan_fault_model(self.plan, config.knobs, self.bounds[pk])
            eval_model, prepared, _ = engine.prepare(self.data.model, self.data.variables, self.data.images[:1], fm)
            y = self.data.labels
            base = scoring_metric(tasks.make_metric_fn(eval_model, batch_size=min(self.plan["batch_size"], int(y.shape[0])),
                                                       task=get_task(self.data.task)), self.data.task)
            metric = memo_metric(base) if self.skip else counting_metric(base)
            prog = engine.make_trial_program(metric, fm, strategy=self.plan["strategy"],
                                             precision=self.plan["precision"], mesh=self.mesh)
            self.programs[pk] = _Program(prog, fm, eval_model, prepared, base)
        return self.programs[pk]

    def inputs_for(self, generator: str | None, dtype) -> jax.Array:
        """The evaluation inputs (a generator's transformed images when given), floats in dtype."""
        x = jnp.asarray(self.data.images if generator is None else self.data.generator_images[generator])
        return x.astype(dtype) if dtype is not None and not jnp.issubdtype(x.dtype, jnp.integer) else x

    def mask_for(self, fraction: float, eval_model, variables) -> dict:
        """The write-verify mask of a fraction, chosen once by the plan's selection method on the
        clean evaluation-form weights."""
        if fraction not in self.masks:
            from jaxfault.swim import full_mask, write_verify_mask

            params = variables["params"]
            cim = self.plan["cim"]
            if fraction == 0.0 or fraction == 1.0:
                mask = full_mask(params, fraction == 1.0)
            else:
                sel = self.data.selection_data or (self.data.images[:1], self.data.labels[:1])
                key = stream(root_key(self.plan["seed"]), "selection")
                mask = write_verify_mask(eval_model, {**variables, "params": params}, sel[0], sel[1],
                                         method=cim["selection"], mask_p=fraction, key=key)
            self.masks[fraction] = mask
        return self.masks[fraction]

    def group_inputs(self, config: Configuration):
        """(variables, images) of a configuration's group: prepared weights and write-verify mask;
        when reusing results, the group's fault-free weights (the fault models' own output at rate
        0) and their score enter the memo of the group's inputs."""
        if config.group_key in self.inputs:   # a certified plan's later rounds reuse them
            return self.inputs[config.group_key]
        p = self.program_for(config)
        dtype = p.fault_model.eval_dtype
        variables = dict(p.prepared)
        if "cim" in self.stages:
            from jaxfault.swim import WRITE_VERIFY

            _, clean_vars = engine.evaluation_form(self.data.model, self.data.variables)
            variables[WRITE_VERIFY] = self.mask_for(float(config.knobs["write_verify"]), p.eval_model, clean_vars)
        x = self.inputs_for(config.knobs.get("generator"), dtype)
        y = self.data.labels
        with precision_scope(self.plan["precision"]):
            if self.clean_score is None:
                plain_x = self.inputs_for(None, dtype)
                self.clean_score = float(jax.jit(p.base_metric)(p.prepared, plain_x, y)["score"])
            if self.skip:
                if self.multipliers is None:
                    self.multipliers = fingerprint_multipliers(p.prepared["params"])
                zeros = jnp.zeros(len(self.stages), jnp.float32)
                ref_vars = jax.jit(lambda v: p.fault_model.perturb(jax.random.key(0), v, zeros)[0])(variables)
                ref_metric = jax.jit(p.base_metric)(ref_vars, x, y)
                fp = jax.jit(params_fingerprint)(ref_vars["params"], self.multipliers)
                self.memos.setdefault(config.knobs.get("generator"), Memo()).add(fp[None], ref_metric["score"])
        self.inputs[config.group_key] = (variables, x)
        return variables, x

    def trial_keys_from(self, start: int, cap: int) -> tuple[jax.Array, int]:
        """(keys of shape (trials,), count): the chunk of trials start..start+count-1 of a
        configuration allowed `cap` trials in all (key i of plan_trial_keys(seed, cap)); the last
        chunk is padded to the compiled shape by repeating its last key."""
        T = self.plan["trials"]
        if start == 0:
            return self.keys, T
        count = min(T, cap - start)
        ks = plan_trial_keys(self.plan["seed"], cap)[start:start + count]
        if count < T:
            ks = jnp.concatenate([ks, jnp.repeat(ks[-1:], T - count)])
        return ks, count

    def run_chunk(self, configs: list[Configuration], variables, x, keys=None, count: int | None = None) -> list[dict]:
        """Evaluate up to configs_per_call configurations of one group in one program call, on the
        plan's trial keys (or on `keys`, of which the first `count` are kept)."""
        p = self.program_for(configs[0])
        C, S, T = self.plan["configs_per_call"], len(self.stages), self.plan["trials"]
        rates = np.zeros((C, S), np.float32)
        rates[:len(configs)] = np.asarray([c.rates for c in configs], np.float32)
        keys = engine.shard_keys(jnp.broadcast_to((self.keys if keys is None else keys)[None], (C, T)), self.mesh)
        memo = self.memos.get(configs[0].knobs.get("generator")) if self.skip else None
        if memo is not None:
            variables = {**variables, MEMO: memo.arrays(self.multipliers)}
        t0 = time.perf_counter()
        metrics, stats = jax.device_get(p.program.run(variables, x, self.data.labels, jnp.asarray(rates), keys))
        seconds = time.perf_counter() - t0
        T = T if count is None else count
        if memo is not None:
            run = np.asarray(metrics["forward_pass"])[:len(configs), :T] > 0
            fps = np.stack([metrics["fp_lo"], metrics["fp_hi"]], -1)[:len(configs), :T]
            memo.add(fps[run], np.asarray(metrics["score"])[:len(configs), :T][run])
        rows = []
        for i, c in enumerate(configs):
            score = np.asarray(metrics["score"], np.float64)[i, :T]
            realised = {s: float(np.mean(np.asarray(stats[f"stage{j}.realised_ber"])[i, :T]))
                        for j, s in enumerate(self.stages) if f"stage{j}.realised_ber" in stats}
            rows.append({"knobs": c.knobs, "rates": list(c.rates), "nominal": c.nominal,
                         "score": score.tolist(),
                         "forward_passes": int(np.sum(np.asarray(metrics["forward_pass"])[i, :T])),
                         "realised_rates": realised, "seconds": seconds / len(configs)})
        return rows


def evaluate_configurations(plan: dict, data: PlanData, configs: list[Configuration], *,
                            done: dict | None = None, record: Callable[[str, dict], None] = lambda i, r: None,
                            log: Callable[[str], None] = print, mesh=None, planner: Planner | None = None,
                            start: int = 0, cap: int | None = None) -> tuple[list[dict], Planner]:
    """Rows (in configuration order) of every configuration; those whose row id is in `done` are
    taken from it. record(row_id, row) is called as each new row is computed.

    start > 0 evaluates the chunk of trials start.. of a configuration allowed `cap` trials in all
    (a certified plan's extra trials; its rows have their own ids, ``chunk_id``), reusing the
    programs of `planner`."""
    done = dict(done or {})
    planner = planner or Planner(plan, data, configs, mesh)
    ids = [chunk_id(row_id(c, plan, data.identity), start, cap) for c in configs]
    keys, count = planner.trial_keys_from(start, cap or plan["trials"])
    groups: dict = {}
    for c, rid in zip(configs, ids):
        if rid not in done:
            groups.setdefault(c.group_key, []).append((c, rid))
    total = sum(len(v) for v in groups.values())
    finished, t0 = 0, time.perf_counter()
    C = plan["configs_per_call"]
    for members in groups.values():
        variables, x = planner.group_inputs(members[0][0])
        for first in range(0, len(members), C):
            chunk = members[first:first + C]
            for (c, rid), row in zip(chunk, planner.run_chunk([c for c, _ in chunk], variables, x, keys, count)):
                record(rid, row)
                done[rid] = row
            finished += len(chunk)
            el = time.perf_counter() - t0
            log(f"[{finished}/{total}] {_label(chunk[0][0].knobs)}"
                + (f" (trials {start}..{start + count - 1})" if start else "")
                + f" ..: {el:.0f} s elapsed, ETA {el / finished * (total - finished):.0f} s")
    if planner.clean_score is None and configs:
        planner.group_inputs(configs[0])
    return [done[i] for i in ids], planner


def chunk_id(base: str, start: int, cap: int | None) -> str:
    """Results-file id of the trials start.. of a configuration (the base id for the first chunk)."""
    return base if start == 0 else point_hash({"row": base, "trials_from": start, "max_trials": cap})


def _label(knobs: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in knobs.items())
