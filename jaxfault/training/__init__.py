"""Train step and evaluation for classifiers, as pure functions over variable pytrees."""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxfault.core.progress import progress
from jaxfault.data import Dataset
from jaxfault.core.errors import JaxfaultError
from jaxfault.models import init_variables

PyTree = Any


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy with integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_accuracy_fn(model, batch_size: int = 1000, topk: Sequence[int] = (1,)) -> Callable:
    """Return a pure fn(variables, images, labels) -> {'top1': frac, 'top5': frac, ...}.

    The images are processed in fixed-size batches by lax.scan (the last batch is padded and
    masked), so the function is jittable as a whole and can be mapped over perturbed variables:
    the classification task of :mod:`jaxfault.core.tasks`.
    """
    from jaxfault.core import tasks

    if not isinstance(batch_size, int) or batch_size <= 0:
        raise JaxfaultError(f"batch_size must be positive, got {batch_size!r}")
    metric = tasks.batched_metric_fn(model, tasks.classification(topk), batch_size=batch_size)

    def accuracy(variables: PyTree, images: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
        return metric(variables, images, labels)[0]

    return accuracy


def evaluate(model, variables: PyTree, images, labels, batch_size: int = 1000,
             topk: Sequence[int] = (1,)) -> dict[str, float]:
    """Accuracy of one set of variables on (images, labels), as Python floats."""
    fn = jax.jit(make_accuracy_fn(model, batch_size, topk))
    return {k: float(v) for k, v in fn(variables, jnp.asarray(images), jnp.asarray(labels)).items()}


def make_train_step(model, optimizer: optax.GradientTransformation,
                    weight_noise_fn: Callable[[PyTree, jax.Array], PyTree] | None = None) -> Callable:
    """Return a pure step(state, x, y, key) -> (state, (loss, acc)) with state = (params, batch_stats, opt_state).

    weight_noise_fn(params, key) -> params, when given, perturbs the weights in the forward pass of
    every step (noise-aware training); the gradient flows to the clean params.
    """

    def loss_fn(params, batch_stats, x, y, key):
        p = weight_noise_fn(params, key) if weight_noise_fn is not None else params
        variables = {"params": p}
        if batch_stats:
            variables["batch_stats"] = batch_stats
        logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        loss = cross_entropy(logits, y)
        acc = jnp.mean(jnp.argmax(logits, -1) == y)
        return loss, (updates.get("batch_stats", batch_stats), acc)

    def step(state, x, y, key):
        params, batch_stats, opt_state = state
        (loss, (new_bs, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats, x, y, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), new_bs, opt_state), (loss, acc)

    return step


def make_indexed_step(step: Callable) -> Callable:
    """Jit `step` with the batch gathered on device from the whole training set by index.

    (A lax.scan over many steps was measured 2.5x slower than this per-step loop on XLA's CPU
    backend for LeNet, so one compiled call per step it is.)
    """

    @jax.jit
    def run(state, images, labels, batch_index, key):
        return step(state, images[batch_index], labels[batch_index], key)

    return run


def _train_classifier_body(model, dataset: Dataset, *, epochs: int = 10, batch_size: int = 128,
                     learning_rate: float = 1e-3, key: jax.Array,
                     weight_noise_fn: Callable[[PyTree, jax.Array], PyTree] | None = None,
                     log: Callable[[str], None] = print,
                     show_progress: bool = True) -> tuple[PyTree, list[dict]]:
    """The training loop of train_classifier (which sets the precision around it).

    History entries: epoch, train_loss, train_accuracy, test_accuracy, seconds.
    """
    if not isinstance(epochs, int) or epochs <= 0:
        raise JaxfaultError(f"epochs must be a positive integer, got {epochs!r}")
    if not (learning_rate > 0 and np.isfinite(learning_rate)):
        raise JaxfaultError(f"learning rate must be a positive number, got {learning_rate!r}")
    if batch_size <= 0:
        raise JaxfaultError(f"batch_size must be positive, got {batch_size!r}")
    n_train = len(dataset.train_images)
    steps_per_epoch = n_train // batch_size
    if steps_per_epoch == 0:
        raise JaxfaultError(f"batch_size {batch_size} is larger than the training set ({n_train})")
    init_key, key = jax.random.split(key)
    variables = init_variables(model, init_key, dataset.input_shape)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    schedule = optax.cosine_decay_schedule(learning_rate, epochs * steps_per_epoch)
    optimizer = optax.adam(schedule)
    state = (params, batch_stats, optimizer.init(params))
    run_step = make_indexed_step(make_train_step(model, optimizer, weight_noise_fn))
    train_x, train_y = jnp.asarray(dataset.train_images), jnp.asarray(dataset.train_labels)
    test_x, test_y = jnp.asarray(dataset.test_images), jnp.asarray(dataset.test_labels)
    accuracy_fn = jax.jit(make_accuracy_fn(model))
    history = []
    # one bar for the whole training, so that its ETA is the run's and not the current epoch's
    bar = progress(total=epochs * steps_per_epoch, desc=f"training ({epochs} epochs x {steps_per_epoch} steps)",
                   unit="step", leave=False, disable=None if show_progress else True)
    for epoch in range(1, epochs + 1):
        key, shuffle_key, step_key = jax.random.split(key, 3)
        t0 = time.perf_counter()
        order = jax.random.permutation(shuffle_key, n_train)[: steps_per_epoch * batch_size]
        order = order.reshape((steps_per_epoch, batch_size))
        step_keys = jax.random.split(step_key, steps_per_epoch)
        losses, accs = [], []
        for i in range(steps_per_epoch):
            state, (loss, acc) = run_step(state, train_x, train_y, order[i], step_keys[i])
            losses.append(loss)
            accs.append(acc)
            bar.update(1)
            if i % 50 == 0:
                bar.set_postfix(epoch=f"{epoch}/{epochs}", loss=f"{float(loss):.3f}")
        params, batch_stats, _ = state
        variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
        test_acc = float(accuracy_fn(variables, test_x, test_y)["top1"])
        seconds = time.perf_counter() - t0
        entry = {"epoch": epoch, "train_loss": float(jnp.mean(jnp.stack(losses))),
                 "train_accuracy": float(jnp.mean(jnp.stack(accs))), "test_accuracy": test_acc,
                 "seconds": seconds}
        history.append(entry)
        log(f"epoch {epoch}/{epochs}: loss {entry['train_loss']:.4f}  train acc {entry['train_accuracy']:.4f}  "
            f"test acc {test_acc:.4f}  ({seconds:.1f} s)")
    bar.close()
    return variables, history


def train_classifier(model, dataset: Dataset, *, precision: str = "default", **kwargs) -> tuple[PyTree, list[dict]]:
    """Train with Adam and a cosine learning-rate decay; return (variables, per-epoch history).

    History entries: epoch, train_loss, train_accuracy, test_accuracy, seconds. Keyword arguments:
    epochs, batch_size, learning_rate, key (typed), weight_noise_fn, log, show_progress, and
    precision, the float32 matmul/conv precision of the training steps ('default': the backend's
    fast mode, e.g. TF32 on NVIDIA GPUs; 'highest': full float32).
    """
    from jaxfault.core.precision import precision_scope

    with precision_scope(precision):
        return _train_classifier_body(model, dataset, **kwargs)
