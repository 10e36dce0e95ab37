"""The NeuralFuse training loop behind ``python -m train.neuralfuse`` (docs/neuralfuse.md, "EOPM training"): EOPM steps over
epochs with running clean/perturbed accuracy, periodic resumable state and a generator checkpoint."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxfault.training.checkpoints import load_checkpoint, read_metadata, save_checkpoint
from jaxfault.core.progress import progress
from jaxfault.data import batches, load_dataset
from jaxfault.core.errors import JaxfaultError, check
from jaxfault.core.keys import root_key, stream
from jaxfault.models.generators import create_generator, init_generator
from jaxfault.neuralfuse.faults import resolve_layout
from jaxfault.neuralfuse.eopm import EOPMConfig, base_variables, init_train_state, make_eopm_step, make_optimizer

GENERATOR_KIND = "neuralfuse_generator"
STATE_KIND = "neuralfuse_train_state"
# settings that must match when --resume continues a run
RESUME_KEYS = ("generator", "base_checkpoint", "ber", "ber0", "bits", "placement", "layout", "n_models", "lam", "epochs",
               "batch_size", "learning_rate", "decay_rate", "seed", "train_subset", "init_generator")


# the value of a setting that checkpoints written before it existed were trained with
LEGACY_DEFAULTS = {"layout": "flax"}


def load_base(checkpoint) -> tuple:
    """(Checkpoint, value_range) of a classifier checkpoint; the NeuralFuse base must be a classifier."""
    ck = load_checkpoint(checkpoint, kind="classifier")
    return ck, ck.config.get("value_range", "symmetric")


def _warm_start(directory, generator: str, input_shape, template: dict) -> dict:
    """Generator variables of an earlier run's neuralfuse_generator checkpoint, checked to fit this run
    (same generator and input shape), to fine-tune from instead of a random initialisation."""
    ck = load_checkpoint(directory, kind=GENERATOR_KIND)
    for k, want in (("generator", generator), ("input_shape", list(input_shape))):
        if ck.config.get(k) != want:
            raise JaxfaultError(f"cannot start from generator {ck.path}: its {k} is {ck.config.get(k)!r}, "
                                f"this run's is {want!r}")
    variables = {"params": ck.variables["params"], "batch_stats": ck.variables.get("batch_stats", {})}
    want_tree = jax.tree_util.tree_structure(template)
    check(jax.tree_util.tree_structure(variables) == want_tree,
          f"cannot start from generator {ck.path}: its variables do not match the {generator} module")
    return jax.tree_util.tree_map(lambda v, t: jnp.asarray(v, dtype=t.dtype), variables, template)


def _save_state(directory: Path, state: dict, config: dict, progress_info: dict) -> None:
    leaves = jax.tree_util.tree_leaves(state)
    save_checkpoint(directory, {"leaves": {f"{i:05d}": np.asarray(x) for i, x in enumerate(leaves)}},
                    {**config, **progress_info, "kind": STATE_KIND})


def _load_state(directory: Path, template: dict, config: dict) -> tuple[dict, dict]:
    meta = read_metadata(directory)["config"]
    for k in RESUME_KEYS:
        was = meta.get(k, LEGACY_DEFAULTS.get(k))
        if k in config and was != config[k]:
            raise JaxfaultError(f"cannot `resume` from {directory}: {k} was {was!r}, now {config[k]!r}")
    ck = load_checkpoint(directory, kind=STATE_KIND)
    stored = ck.variables["leaves"]
    leaves, treedef = jax.tree_util.tree_flatten(template)
    check(len(stored) == len(leaves), f"cannot `resume` from {directory}: the saved state does not match")
    restored = [jnp.asarray(stored[f"{i:05d}"], dtype=t.dtype) for i, t in enumerate(leaves)]
    return jax.tree_util.tree_unflatten(treedef, restored), meta


def _train_neuralfuse_body(base_checkpoint, out, *, generator: str = "UNetS", ber: float = 0.01, ber0: float = 0.5,
                     bits: int | None = None, placement: str = "memory_array", layout: str | None = None, n_models: int = 5, lam: float = 5.0,
                     epochs: int = 3, batch_size: int = 128, learning_rate: float = 2e-3, decay_rate: float = 0.5,
                     decay_every: int | None = None, seed: int = 0, train_subset: int | None = None,
                     strategy: str = "auto", data_dir=None, save_every: int = 50, resume: bool = False,
                     init_generator_checkpoint=None, log: Callable[[str], None] = print) -> dict:
    """Train a generator against base_checkpoint's perturbed models; write out/generator (kind
    neuralfuse_generator) and out/state (for --resume). init_generator_checkpoint: an earlier run's generator
    checkpoint to fine-tune from (fresh optimizer state). Returns the final metrics."""
    out = Path(out)
    gen = create_generator(generator)
    base, base_range = load_base(base_checkpoint)
    qbits = base.config.get("quant_bits")
    bits = bits if bits is not None else (qbits or 8)
    layout = resolve_layout(layout, placement)
    cfg = EOPMConfig(ber=ber, ber0=ber0, bits=bits, placement=placement, layout=layout, n_models=n_models, lam=lam,
                     strategy=strategy, base_range=base_range).validate()
    if qbits is not None and bits != qbits:
        raise JaxfaultError(f"precision {bits} differs from the base model's QAT precision {qbits}")
    check(epochs >= 1, f"`epochs` must be >= 1, got {epochs}")
    check(batch_size >= 1, f"`batch_size` must be >= 1, got {batch_size}")
    check(save_every >= 1, f"`save_every` must be >= 1, got {save_every}")

    data = load_dataset(base.config.get("dataset", "fashion_mnist"), data_dir=data_dir, value_range="symmetric")
    x_train, y_train = data.train_images, data.train_labels
    if train_subset is not None:
        check(1 <= train_subset <= len(x_train), f"`train_subset` must be in [1, {len(x_train)}], got {train_subset}")
        idx = np.asarray(jax.random.permutation(stream(root_key(seed), "subset"), len(x_train)))[:train_subset]
        x_train, y_train = x_train[idx], y_train[idx]
    check(len(x_train) >= batch_size, f"`batch_size` {batch_size} exceeds the {len(x_train)} training images")
    steps_per_epoch = len(x_train) // batch_size
    total = steps_per_epoch * epochs
    decay_every = decay_every or max(1, total // 3)
    optimizer = make_optimizer(learning_rate, decay_every, decay_rate)

    config = {"kind": GENERATOR_KIND, "generator": generator, "base_checkpoint": str(Path(base.path).absolute()),
              "base_model": base.config.get("model"), "dataset": data.name, "input_shape": list(data.input_shape),
              "value_range": "symmetric", "base_value_range": base_range, "ber": ber, "ber0": ber0, "bits": bits,
              "placement": placement, "layout": layout, "n_models": n_models, "lam": lam, "epochs": epochs, "batch_size": batch_size,
              "learning_rate": learning_rate, "decay_rate": decay_rate, "decay_every": decay_every, "seed": seed,
              "train_subset": train_subset, "strategy": strategy,
              "init_generator": None if init_generator_checkpoint is None
              else str(Path(init_generator_checkpoint).absolute())}
    k_init, k_data, k_steps = jax.random.split(root_key(seed), 3)
    gen_vars = init_generator(gen, k_init, data.input_shape)
    if init_generator_checkpoint is not None:
        gen_vars = _warm_start(init_generator_checkpoint, generator, data.input_shape, gen_vars)
        log(f"fine-tuning the generator of {init_generator_checkpoint}")
    state = init_train_state(gen_vars, optimizer)
    start_step, history, resumed_sums = 0, [], None
    if resume:
        if (out / "state").exists():
            state, meta = _load_state(out / "state", state, config)
            start_step, history = int(meta["global_step"]), list(meta.get("history", []))
            resumed_sums = meta.get("epoch_sums")
            log(f"resuming {out} at step {start_step}/{total}")
        else:
            log(f"nothing to resume in {out}: starting a new run")
    base_vars = base_variables(base.model, cfg, jax.tree_util.tree_map(jnp.asarray, base.variables))
    step = make_eopm_step(gen, base.model, cfg, optimizer)
    log(f"NeuralFuse {generator} on {base.config.get('model')} ({base.path}), {data.name}: BER {ber}, "
        f"{n_models} perturbed models/step, lambda {lam}, {epochs} epoch(s) x {steps_per_epoch} steps of {batch_size}")

    running = {"sums": np.zeros(3)}  # the current epoch's running sums, saved so a resume continues them

    def save(global_step, done):
        info = {"global_step": global_step, "history": history,
                "epoch_sums": [float(v) for v in running["sums"]]}
        _save_state(out / "state", state, config, info)
        if done:
            gen_vars = {"params": state["params"], "batch_stats": state["batch_stats"]}
            save_checkpoint(out / "generator", gen_vars, config, {"history": history})

    global_step = start_step
    t0 = time.time()
    # one bar for every epoch left, so that its ETA is the training's and not the current epoch's
    bar = progress(total=total, initial=start_step, desc=f"training ({epochs} epochs x {steps_per_epoch} steps)",
                   unit="step", leave=False)
    for epoch in range(start_step // steps_per_epoch, epochs):
        first = global_step - epoch * steps_per_epoch
        sums = np.zeros(3)
        if first > 0 and resumed_sums is not None:  # continue the killed run's running epoch metrics
            sums = np.asarray(resumed_sums, np.float64)
        counted_from = 0 if first == 0 or resumed_sums is not None else first
        running["sums"] = sums
        it = batches(x_train, y_train, batch_size, key=jax.random.fold_in(k_data, epoch), drop_last=True)
        for i, (x, y) in enumerate(it):
            if i < first:
                continue
            state, m = step(state, base_vars, x, y, jax.random.fold_in(k_steps, global_step))
            sums += np.array([float(m["loss"]), float(m["clean_acc"]), float(m["perturbed_acc"])])
            global_step += 1
            n = i + 1 - counted_from
            bar.update(1)
            bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{sums[0] / n:.3f}", clean=f"{sums[1] / n:.3f}", perturbed=f"{sums[2] / n:.3f}")
            # an epoch's last step is saved below, with the epoch in the history (a state saved here
            # would resume at the next epoch without this epoch's record)
            if global_step % save_every == 0 and global_step < total and i + 1 < steps_per_epoch:
                save(global_step, done=False)
        n = max(1, steps_per_epoch - counted_from)
        running["sums"] = np.zeros(3)  # the epoch is in the history; saves after it start the next one
        rec = {"epoch": epoch + 1, "loss": sums[0] / n, "clean_acc": sums[1] / n, "perturbed_acc": sums[2] / n,
               "seconds": time.time() - t0}
        history.append(rec)
        t0 = time.time()
        log(f"epoch {epoch + 1}/{epochs}: loss {rec['loss']:.4f}  running clean acc {rec['clean_acc']:.4f}  "
            f"running perturbed acc {rec['perturbed_acc']:.4f}  ({rec['seconds']:.1f} s)")
        save(global_step, done=epoch + 1 == epochs)
    bar.close()
    if global_step >= total and not (out / "generator").exists():
        save(global_step, done=True)
    return {"history": history, "generator_checkpoint": str(out / "generator"), "steps": global_step}


def train_neuralfuse(base_checkpoint, out, *, precision: str = "default", **kwargs) -> dict:
    """Train a generator against base_checkpoint's perturbed models; write out/generator (kind
    neuralfuse_generator) and out/state (for --resume); returns the final metrics.

    Keyword arguments are those of the training loop (generator, ber, ber0, bits, placement,
    layout, n_models, lam, epochs, batch_size, learning_rate, decay_rate, decay_every, seed,
    train_subset, strategy, data_dir, save_every, resume, init_generator_checkpoint, log), plus
    precision: the float32 matmul/conv precision of the EOPM steps ('default': the backend's fast
    mode, e.g. TF32 on NVIDIA GPUs; 'highest': full float32).
    """
    from jaxfault.core.precision import precision_scope

    with precision_scope(precision):
        return _train_neuralfuse_body(base_checkpoint, out, **kwargs)
