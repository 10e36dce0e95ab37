"""One NeuralFuse training run, as ``python -m train.neuralfuse`` makes it: its settings, the
checks made before any work, the base model from the cache, EOPM training (resumable) and the
final evaluation on unseen perturbed models (docs/neuralfuse.md, "EOPM training").

    run = TrainingRun(ber=0.01, generator="UNetS", epochs=3)
    run.check_outputs("runs/nf", resume=False, overwrite=False)      # before any work
    result = run.train("runs/nf")
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Optional

from jaxfault.core.config import setting
from jaxfault.core.errors import JaxfaultError, nearest_hint
from jaxfault.models.generators import GENERATOR_NAMES
from jaxfault.neuralfuse.faults import LAYOUTS, PLACEMENTS
from jaxfault.core.precision import PRECISIONS


@dataclasses.dataclass(frozen=True)
class TrainingRun:
    """The settings of one training run; validated by ``check_outputs`` before any work."""

    ber: float = setting(0.01, "bit error rate of the SRAM cells", kind="probability")
    ber0: float = setting(0.5, "share of faulty cells stuck at 1", kind="probability")
    bits: Optional[int] = setting(None, "weight precision 4/8/16 (default: the base's QAT bits)", kind="positive_int")
    placement: str = setting("memory_array", f"fault placement: {', '.join(PLACEMENTS)}")
    layout: Optional[str] = setting(None, f"weight order in the SRAM words: {', '.join(LAYOUTS)} (default: torch, the "
                                          f"reference's storage order, under memory_array; flax under independent)")
    generator: str = setting("UNetS", f"one of {', '.join(GENERATOR_NAMES)}")
    n_models: int = setting(5, "perturbed models per step (N)", kind="positive_int")
    lam: float = setting(5.0, "weight of the perturbed loss (lambda)", kind="nonneg_float")
    epochs: int = setting(3, "training epochs", kind="positive_int")
    batch_size: int = setting(128, "images per EOPM step", kind="positive_int")
    lr: float = setting(2e-3, "Adam learning rate (b1=0.5, b2=0.999)", kind="positive_float")
    decay_rate: float = setting(0.5, "step decay factor", kind="finite_float")
    decay_every: Optional[int] = setting(None, "steps between decays (default: a third of the run)", kind="positive_int")
    train_subset: Optional[int] = setting(None, "train on a random subset of this many images", kind="positive_int")
    checkpoint: Optional[str] = setting(None, "base classifier checkpoint (default: cached QAT `model`)")
    model: str = setting("lenet", "base model from the cache when no `checkpoint`")
    data_dir: Optional[str] = setting(None, "folder with IDX files or the TFDS data_dir")
    strategy: str = setting("auto", "batching of the N models: auto, map, vmap, map:B", kind="strategy")
    seed: int = setting(0, "seed of the data order and the per-step perturbed models", kind="seed")
    precision: str = setting("default", "float32 matmul/conv precision of the EOPM steps ('default': the backend's "
                                        "fast mode)", choices=PRECISIONS)
    save_every: int = setting(50, "steps between resumable state saves", kind="positive_int")
    init_generator: Optional[str] = setting(None, "fine-tune the generator checkpoint DIR of an earlier run instead "
                                                  "of a random start")
    eval_models: int = setting(10, "unseen perturbed models of the final evaluation (OUT/neuralfuse_eval.json; 0: "
                                   "skip it)", kind="nonneg_int")

    def check_outputs(self, out, *, resume: bool, overwrite: bool) -> None:
        """Validate the settings and refuse, before any work, an `out` that cannot be written or
        whose earlier run would be lost: OUT/state or OUT/generator of an earlier run need `resume`
        (to continue it) or `overwrite`."""
        from jaxfault.training.checkpoints import is_checkpoint, read_metadata
        from jaxfault.core.io import check_output_path
        from jaxfault.models import MODEL_NAMES
        from jaxfault.models.generators import create_generator
        from jaxfault.neuralfuse.faults import resolve_layout
        from jaxfault.core.quant import check_bits

        out = Path(out)
        check_output_path(out, overwrite=True, kind="dir", flag="`out`")
        state, generator = out / "state", out / "generator"
        for sub in (state, generator):
            if sub.exists() and not sub.is_dir():
                raise JaxfaultError(f"`out`: {sub} is a file, expected a checkpoint folder")
        check_output_path(out / "neuralfuse_eval.json", overwrite=overwrite or resume, flag="`out`")
        if not overwrite and not resume and (state.exists() or generator.exists()):
            found = state if state.exists() else generator
            raise JaxfaultError(f"`out` {out} holds an earlier run ({found}); pass `resume` to continue it or "
                                f"`overwrite` to start a new run there")
        if not overwrite and resume and not is_checkpoint(state) and generator.exists():
            raise JaxfaultError(f"`out` {out} holds a generator ({generator}) but no state to resume; pass "
                                f"`overwrite` to train a new one there")
        if self.bits is not None:
            check_bits(self.bits)
        create_generator(self.generator)  # validates the name before any expensive work
        resolve_layout(self.layout, self.placement)  # the placement and the layout, as the library checks them
        for name, path, kind in (("checkpoint", self.checkpoint, "classifier"),
                                 ("init_generator", self.init_generator, "neuralfuse_generator")):
            if path is not None and read_metadata(path)["kind"] != kind:  # one line now, not after data loading
                raise JaxfaultError(f"`{name}` {path} holds a {read_metadata(path)['kind']!r}, expected a {kind!r}")
        if self.checkpoint is None and self.model not in MODEL_NAMES:
            raise JaxfaultError(f"unknown model {self.model!r}{nearest_hint(self.model, MODEL_NAMES)}; "
                                f"choose one of {', '.join(MODEL_NAMES)}")

    def train(self, out, *, resume: bool = False, log: Callable[..., None] = print) -> dict:
        """Train (resuming OUT/state when `resume`), write OUT/generator, then evaluate the generator
        on `eval_models` unseen perturbed models into OUT/neuralfuse_eval.json.

        Returns:
          {"generator_checkpoint", "steps", "evaluation" (the report, or None when skipped), "path"}.
        """
        from jaxfault.neuralfuse.train import train_neuralfuse

        base = self.checkpoint
        if base is None:
            from jaxfault.training.zoo import default_classifier

            base = default_classifier(model=self.model, qat=True, data_dir=self.data_dir)
        res = train_neuralfuse(base, out, generator=self.generator, ber=self.ber, ber0=self.ber0, bits=self.bits,
                               placement=self.placement, layout=self.layout, n_models=self.n_models, lam=self.lam,
                               epochs=self.epochs, batch_size=self.batch_size, learning_rate=self.lr,
                               decay_rate=self.decay_rate, decay_every=self.decay_every, seed=self.seed,
                               train_subset=self.train_subset, strategy=self.strategy, data_dir=self.data_dir,
                               save_every=self.save_every, resume=resume, init_generator_checkpoint=self.init_generator,
                               precision=self.precision)
        log(f"generator checkpoint: {res['generator_checkpoint']}  ({res['steps']} steps)")
        result = {"generator_checkpoint": res["generator_checkpoint"], "steps": res["steps"], "evaluation": None,
                  "path": None}
        if self.eval_models == 0:
            return result
        from jaxfault.core.io import atomic_write_json
        from jaxfault.neuralfuse.evaluate import evaluate_generator

        log(f"evaluating on {self.eval_models} unseen perturbed models (as eval.neuralfuse evaluates {out})",
            flush=True)
        report = evaluate_generator(res["generator_checkpoint"], models=self.eval_models, data_dir=self.data_dir)
        result.update(evaluation=report, path=atomic_write_json(Path(out) / "neuralfuse_eval.json", report))
        return result
