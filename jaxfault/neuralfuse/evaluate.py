"""NeuralFuse evaluation: clean accuracy and the accuracy of M unseen perturbed models (seeds
50000.., never drawn in training; seed s's fault map is drawn with
jaxfault.neuralfuse.eopm.perturbed_model_key(s)), without and with the generator, in one jitted call."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxfault import engine
from jaxfault.core import tasks
from jaxfault.training.checkpoints import META_FILE, load_checkpoint
from jaxfault.core.config import parse_probability_list, setting
from jaxfault.core.errors import JaxfaultError, check, check_probability
from jaxfault.core.precision import PRECISIONS
from jaxfault.models.generators import create_generator
from jaxfault.neuralfuse.eopm import eval_seeds, seeds_to_keys, to_base_range
from jaxfault.neuralfuse.faults import SRAMBitErrors, check_layout, check_placement
from jaxfault.neuralfuse.train import GENERATOR_KIND, LEGACY_DEFAULTS
from jaxfault.core.quant import check_bits
from jaxfault.core.rows import ROW_SCHEMA, fault_config, make_row
from jaxfault.core.stats import paired_diff_ci
from jaxfault.training import make_accuracy_fn


def resolve_generator_checkpoint(path) -> Path:
    """The generator checkpoint folder for `path`: the run folder train.neuralfuse writes (its
    generator/ subfolder is used) or that generator/ folder itself."""
    path = Path(path)
    if not path.exists():
        raise JaxfaultError(f"generator checkpoint {str(path)!r} does not exist")
    if (path / META_FILE).is_file():
        return path
    if (path / "generator" / META_FILE).is_file():
        return path / "generator"
    hint = " (the run has no generator yet: finish it with `resume`)" if (path / "state").is_dir() else ""
    raise JaxfaultError(f"no NeuralFuse generator checkpoint in {str(path)!r}: pass the folder train.neuralfuse "
                        f"wrote (its `out`) or its generator/ subfolder{hint}")


def load_generator(directory):
    """(generator module, variables, config) of a neuralfuse_generator checkpoint (or of the run
    folder holding it)."""
    ck = load_checkpoint(resolve_generator_checkpoint(directory), kind=GENERATOR_KIND)
    gen = create_generator(ck.config.get("generator", "?"))
    variables = jax.tree_util.tree_map(jnp.asarray, ck.variables)
    want = jax.eval_shape(lambda k: gen.init(k, jnp.zeros((1, *ck.config.get("input_shape", (28, 28, 1)))),
                                             train=False), jax.random.key(0))
    if jax.tree_util.tree_structure(dict(want)) != jax.tree_util.tree_structure(variables):
        raise JaxfaultError(f"the variables in {ck.path} do not match the {ck.config.get('generator')} generator "
                            f"(a checkpoint written before the reference generators? its name is now "
                            f"{ck.config.get('generator')}-tanh)")
    return gen, variables, ck.config


def apply_generator(gen, gen_vars, images: np.ndarray, batch_size: int = 1000) -> jax.Array:
    """x' = G(x) in eval mode for all images, in fixed-size batches (one compile)."""
    n = len(images)
    bs = min(batch_size, n)
    nb = -(-n // bs)
    x = jnp.pad(jnp.asarray(images), ((0, nb * bs - n),) + ((0, 0),) * (images.ndim - 1))
    x = x.reshape((nb, bs) + images.shape[1:])
    out = jax.jit(lambda v, xs: jax.lax.map(lambda xb: gen.apply(v, xb, train=False), xs))(gen_vars, x)
    return out.reshape((nb * bs,) + images.shape[1:])[:n]


def _stats(values) -> dict:
    s = engine.summarize(values, "accuracy")
    return {"mean": s["mean"], "std": s["std"], "min": s["min"], "ci_lo": s["ci_lo"], "ci_hi": s["ci_hi"],
            "half_width": s["half_width"], "level": s["level"], "method": s["method"],
            "per_model": [float(v) for v in np.asarray(values)]}


def trained_fault_settings(config: dict, *, ber0=None, placement=None, layout=None) -> tuple[float, str, str]:
    """(ber0, placement, layout) to evaluate a generator with: each given value, else the one in its
    checkpoint config (a checkpoint written before the layout was recorded was trained in Flax's order)."""
    ber0 = config.get("ber0", 0.5) if ber0 is None else check_probability("ber0", ber0)
    placement = check_placement(placement or config.get("placement", "independent"))
    layout = check_layout(layout or config.get("layout", LEGACY_DEFAULTS["layout"]))
    return ber0, placement, layout


def evaluate_generator(generator_checkpoint, *, bers=None, ber0=None, placement=None, layout=None, models: int = 10,
                       base_checkpoint=None, test_subset: int | None = None, batch_size: int = 1000,
                       strategy: str = "auto", precision: str = "highest", data_dir=None) -> dict:
    """Evaluate a trained generator at one or more BERs; returns a JSON-ready dict.

    bers, ber0, placement and layout default to the generator's training settings (a generator
    checkpoint without a layout was trained in Flax's weight order)."""
    from jaxfault.data import load_dataset

    for b in bers or []:
        check_probability("ber", b)
    generator_checkpoint = resolve_generator_checkpoint(generator_checkpoint)
    gen, gen_vars, cfg = load_generator(generator_checkpoint)
    bers = list(bers) if bers is not None else [cfg["ber"]]
    ber0, placement, layout = trained_fault_settings(cfg, ber0=ber0, placement=placement, layout=layout)
    check(models >= 1, f"`models` must be >= 1, got {models}")
    base_path = base_checkpoint or cfg.get("base_checkpoint")
    if not base_path or not Path(base_path).exists():
        raise JaxfaultError(f"base checkpoint {base_path!r} of the generator not found (give it as `checkpoint`)")
    base = load_checkpoint(base_path, kind="classifier")
    bits = check_bits(int(cfg.get("bits") or base.config.get("quant_bits") or 8))
    base_range = base.config.get("value_range", "symmetric")
    data = load_dataset(base.config.get("dataset", "fashion_mnist"), data_dir=data_dir, value_range="symmetric")
    x, y = data.test_images, data.test_labels
    if test_subset is not None:
        check(1 <= test_subset <= len(x), f"`test_subset` must be in [1, {len(x)}], got {test_subset}")
        x, y = x[:test_subset], y[:test_subset]
    if tuple(x.shape[1:]) != tuple(cfg.get("input_shape", x.shape[1:])):
        raise JaxfaultError(f"generator was trained on inputs {tuple(cfg['input_shape'])}, data has {x.shape[1:]}")
    base_vars = jax.tree_util.tree_map(jnp.asarray, base.variables)
    x_gen = apply_generator(gen, gen_vars, x, batch_size)
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    clean_acc = jax.jit(make_accuracy_fn(base.model, batch_size))
    clean = {"without": float(clean_acc(base_vars, to_base_range(xj, base_range), yj)["top1"]),
             "with": float(clean_acc(base_vars, to_base_range(x_gen, base_range), yj)["top1"])}
    seeds = eval_seeds(models)
    # the engine evaluates the M perturbed models (one key per seed) at every BER, once on the plain
    # and once on the generator's images: the same compiled program and the same faulty models
    fm = SRAMBitErrors(ber0=ber0, bits=bits, placement=placement, layout=layout).with_rate_bound(max(bers))
    keys = seeds_to_keys(seeds)
    program = engine.make_trial_program(
        tasks.make_metric_fn(engine.evaluation_form(base.model, base_vars)[0], min(batch_size, len(y))), fm,
        strategy=strategy, precision=precision)
    without = engine.evaluate(base.model, base_vars, to_base_range(xj, base_range), yj, fm, bers, keys,
                              strategy=strategy, precision=precision, batch_size=batch_size, program=program)
    with_g = engine.evaluate(base.model, base_vars, to_base_range(x_gen, base_range), yj, fm, bers, keys,
                             strategy=strategy, precision=precision, batch_size=batch_size, program=program)
    results = []
    for i, b in enumerate(bers):
        w0, w1 = _stats(without.accuracy[i]), _stats(with_g.accuracy[i])
        # the same perturbed models (keys) with and without the generator: a paired interval
        rec_lo, rec_hi = paired_diff_ci(with_g.accuracy[i], without.accuracy[i])
        results.append({"ber": float(b), "perturbed_without": w0, "perturbed_with": w1,
                        "recovery": w1["mean"] - w0["mean"], "recovery_ci": [rec_lo, rec_hi],
                        "realised_ber": float(np.mean(without.stats["realised_ber"][i]))})
    return {"generator_checkpoint": str(Path(generator_checkpoint).absolute()), "generator": cfg.get("generator"),
            "base_checkpoint": str(Path(base_path).absolute()), "base_model": base.config.get("model"),
            "dataset": data.name, "test_images": int(len(x)), "trained_ber": cfg.get("ber"), "ber0": ber0,
            "bits": bits, "placement": placement, "layout": layout, "models": models,
            "seeds": [int(s) for s in np.asarray(seeds)], "clean": clean,
            "clean_drop": clean["without"] - clean["with"], "results": results,
            "schema": ROW_SCHEMA, "model": base.config.get("model"),
            "rows": [make_row(fault_model="sram", method="neuralfuse",
                              fault=fault_config(fm), rate_name="ber",
                              rate=r["ber"], trials=len(r[key]["per_model"]), metric="top1",
                              summary={k: v for k, v in r[key].items() if k != "per_model"}, generator=gen)
                     for r in results for key, gen in (("perturbed_without", None),
                                                       ("perturbed_with", cfg.get("generator")))]}


def format_table(report: dict) -> str:
    """Plain-text table of an evaluate_generator report."""
    c = report["clean"]
    lines = [f"NeuralFuse {report['generator']} on {report['base_model']} ({report['dataset']}, "
             f"{report['test_images']} test images, {report['bits']}-bit, {report['placement']} faults "
             f"in {report.get('layout', LEGACY_DEFAULTS['layout'])} order, "
             f"{report['models']} unseen perturbed models)",
             f"clean top-1 %: without G {100 * c['without']:.2f}, with G {100 * c['with']:.2f} "
             f"({100 * (c['with'] - c['without']):+.2f} points with G)",
             f"{'BER':>8}  {'faulty, w/o G % [95% interval]':>31}  {'base drop (points)':>18}  "
             f"{'faulty, with G % [95% interval]':>31}  {'recovery, points [95% interval, paired]':>40}"]
    pct = lambda d: f"{100 * d['mean']:.2f} [{100 * d['ci_lo']:.2f}, {100 * d['ci_hi']:.2f}]"  # noqa: E731
    for r in report["results"]:
        a, b = r["perturbed_without"], r["perturbed_with"]
        lo, hi = r["recovery_ci"]
        drop = 100 * (c["without"] - a["mean"])
        lines.append(f"{r['ber']:>8g}  {pct(a):>31}  {drop:>18.2f}  {pct(b):>31}  "
                     f"{100 * r['recovery']:>+17.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]")
    lines.append("base drop: points of top-1 the base model loses to the faults (clean minus faulty, without G); "
                 "recovery: points G wins back on the same faulty models")
    return "\n".join(lines)


def plot_sweep(report: dict, path) -> None:
    """Accuracy vs BER without/with the generator (mean and its 95 % interval over the perturbed
    models)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxfault.core.io import atomic_savefig

    bers = [r["ber"] for r in report["results"]]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for key, label in (("perturbed_without", "perturbed, without NeuralFuse"),
                       ("perturbed_with", "perturbed, with NeuralFuse")):
        m = np.array([r[key]["mean"] for r in report["results"]])
        lo = np.array([r[key]["ci_lo"] for r in report["results"]])
        hi = np.array([r[key]["ci_hi"] for r in report["results"]])
        ax.errorbar(bers, m, yerr=[m - lo, hi - m], marker="o", capsize=3, label=label)
    ax.axhline(report["clean"]["without"], color="gray", ls="--", lw=1, label="clean, without")
    ax.axhline(report["clean"]["with"], color="gray", ls=":", lw=1, label="clean, with")
    ax.set_xscale("log")
    ax.set_xlabel("bit error rate")
    ax.set_ylabel("test accuracy, mean and 95 % interval")
    ax.set_title(f"NeuralFuse {report['generator']} on {report['base_model']} ({report['models']} models/BER)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


@dataclasses.dataclass(frozen=True)
class GeneratorEvaluation:
    """The settings of one evaluation of a trained generator (``python -m eval.neuralfuse``)."""

    generator_checkpoint: str = setting(help="the run folder train.neuralfuse wrote (e.g. runs/neuralfuse) "
                                             "or its generator/")
    ber: Optional[float] = setting(None, "bit error rate (default: the one trained for)", kind="probability")
    sweep: Optional[str] = setting(None, "comma-separated BERs to evaluate instead of `ber` (adds a plot)")
    ber0: Optional[float] = setting(None, "share stuck at 1 (default: as trained)", kind="probability")
    placement: Optional[str] = setting(None, "independent or memory_array (default: as trained)")
    layout: Optional[str] = setting(None, "weight order in the SRAM words, torch or flax (default: as trained)")
    models: int = setting(10, "unseen perturbed models per BER (M)", kind="positive_int")
    checkpoint: Optional[str] = setting(None, "base classifier (default: the one the generator was trained on)")
    test_subset: Optional[int] = setting(None, "evaluate on the first N test images (default: all)", kind="positive_int")
    batch_size: int = setting(1000, "evaluation batch size", kind="positive_int")
    strategy: str = setting("auto", "batching of the M models: auto, vmap, map, map:B or loop", kind="strategy")
    precision: str = setting("highest", "float32 matmul/conv precision", choices=PRECISIONS)
    data_dir: Optional[str] = setting(None, "dataset folder (default: TFDS / the local IDX files)")

    def bers(self):
        """The BERs evaluated: the sweep's, [ber], or None for the one trained for."""
        if self.sweep is not None:
            return parse_probability_list(self.sweep, "`sweep`")
        return [self.ber] if self.ber is not None else None

    def prepare_output(self, out, overwrite: bool = False) -> list[Path]:
        """Validate the settings and check, before any work, that the JSON (and a sweep's plot) can
        be written in folder `out`; returns their paths."""
        from jaxfault.core.io import check_output_path

        if self.placement is not None:
            check_placement(self.placement)
        if self.layout is not None:
            check_layout(self.layout)
        self.bers()
        paths = [Path(out) / "neuralfuse_eval.json"] + ([Path(out) / "neuralfuse_sweep.png"] if self.sweep else [])
        for path in paths:
            check_output_path(path, overwrite=overwrite, flag="`out`")
        return paths

    def evaluate(self) -> dict:
        """The report of evaluate_generator for these settings."""
        return evaluate_generator(self.generator_checkpoint, bers=self.bers(), ber0=self.ber0, placement=self.placement,
                                  layout=self.layout, models=self.models, base_checkpoint=self.checkpoint,
                                  test_subset=self.test_subset, batch_size=self.batch_size, strategy=self.strategy,
                                  precision=self.precision, data_dir=self.data_dir)


def write_report(report: dict, paths: list[Path]) -> list[Path]:
    """Write the report atomically as JSON to paths[0] and, for a sweep, its plot to paths[1]."""
    from jaxfault.core.io import atomic_write_json

    atomic_write_json(paths[0], report)
    if len(paths) > 1:
        plot_sweep(report, paths[1])
    return paths
