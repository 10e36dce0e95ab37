"""Tasks: what a model's output is scored by.

A task turns a model's outputs on a batch into per-batch sums (hits, token losses, counts), and
the sums over the whole evaluation set into named metrics. The engine runs every task the same
way: fixed-size batches under ``lax.scan`` (the last batch padded and masked), so a metric
function is jittable as a whole and can be mapped over faulty instances.

    task = classification(topk=(1, 5))       # top-k accuracy of labels
    task = language_model()                  # next-token loss, perplexity and top-1

* ``classification``: inputs are images (N, ...), targets integer labels (N,). Metrics
  ``top{k}``: the fraction of inputs whose label is among the k largest logits.
* ``language_model``: inputs are token ids (N, L), targets the next token at every position
  (N, L), with -1 marking positions not scored. ``nll`` is the mean next-token cross-entropy in
  nats over the scored tokens, ``perplexity`` is exp(nll), ``top1`` the fraction of scored tokens
  whose target has the largest logit. A faulty model can produce inf or NaN logits (an exponent
  fault does that): such a token's loss is +inf, so the instance's perplexity is inf, never NaN;
  ``nonfinite_tokens`` counts those tokens and ``diverged`` is 1.0 for an instance with any.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, ClassVar, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxfault.core.errors import JaxfaultError, check

PyTree = Any
MODEL_COLLECTIONS = ("params", "batch_stats")


class Task(abc.ABC):
    """Base class of tasks (subclasses are frozen dataclasses, hashable static configuration)."""

    name: ClassVar[str] = "task"
    apply_kwargs: ClassVar[dict] = {}

    @abc.abstractmethod
    def sum_names(self) -> tuple[str, ...]:
        """Names of the per-batch sums, in order."""

    @abc.abstractmethod
    def batch_sums(self, logits: jax.Array, targets: jax.Array) -> jax.Array:
        """Per-batch sums (a float32 or int32 vector, in ``sum_names`` order) of one batch;
        padded entries carry target -1 and must not count."""

    @abc.abstractmethod
    def finalize(self, sums: jax.Array, n: int) -> dict[str, jax.Array]:
        """Metrics {name: scalar} from the sums over the whole evaluation set of n inputs."""

    @abc.abstractmethod
    def check_data(self, inputs, targets) -> None:
        """Raise JaxfaultError unless (inputs, targets) have this task's shapes and dtypes."""

    @property
    @abc.abstractmethod
    def primary(self) -> str:
        """The headline metric's name."""

    def describe(self) -> dict:
        """JSON-ready configuration."""
        return {"task": self.name, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}


@dataclasses.dataclass(frozen=True)
class Classification(Task):
    """Top-k accuracy of integer labels."""

    topk: tuple = (1,)

    name: ClassVar[str] = "classification"
    apply_kwargs: ClassVar[dict] = {"train": False}

    def __post_init__(self):
        try:
            ks = tuple(int(k) for k in self.topk)
        except (TypeError, ValueError):
            raise JaxfaultError(f"topk must be a list of positive integers, got {self.topk!r}") from None
        check(ks and all(k >= 1 for k in ks), f"topk must be a list of positive integers, got {self.topk!r}")
        object.__setattr__(self, "topk", ks)

    @property
    def primary(self) -> str:
        return f"top{self.topk[0]}"

    def sum_names(self):
        return tuple(f"top{k}" for k in self.topk)

    def batch_sums(self, logits, targets):
        valid = targets >= 0
        out = []
        for k in self.topk:
            if k == 1:
                hit = jnp.argmax(logits, -1) == targets
            else:
                _, idx = jax.lax.top_k(logits, k)
                hit = jnp.any(idx == targets[:, None], axis=-1)
            out.append(jnp.sum(hit & valid))
        return jnp.stack(out)

    def finalize(self, sums, n):
        return {f"top{k}": sums[i] / n for i, k in enumerate(self.topk)}

    def check_data(self, inputs, targets):
        x, y = np.shape(inputs), np.shape(targets)
        check(len(x) >= 2 and len(y) == 1 and x[0] == y[0] and y[0] >= 1,
              f"classification needs inputs (N, ...) and labels (N,), got shapes {x} and {y}")


@dataclasses.dataclass(frozen=True)
class LanguageModel(Task):
    """Next-token cross-entropy, perplexity and top-1 of token sequences."""

    name: ClassVar[str] = "language_model"

    @property
    def primary(self) -> str:
        return "perplexity"

    def sum_names(self):
        return ("nll_sum", "scored_tokens", "top1_hits", "nonfinite_tokens")

    def batch_sums(self, logits, targets):
        logits = logits.astype(jnp.float32)
        valid = targets >= 0
        finite = jnp.all(jnp.isfinite(logits), axis=-1)
        safe = jnp.where(finite[..., None], logits, 0.0)
        logp = jax.nn.log_softmax(safe, axis=-1)
        tgt = jnp.where(valid, targets, 0)
        nll = -jnp.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]
        nll = jnp.where(finite, nll, jnp.inf)
        hit = (jnp.argmax(safe, -1) == tgt) & finite
        nll_sum = jnp.sum(jnp.where(valid, nll, 0.0))
        return jnp.stack([nll_sum, jnp.sum(valid).astype(jnp.float32),
                          jnp.sum(hit & valid).astype(jnp.float32),
                          jnp.sum(valid & ~finite).astype(jnp.float32)])

    def finalize(self, sums, n):
        tokens = jnp.maximum(sums[1], 1.0)
        nll = sums[0] / tokens
        return {"nll": nll, "perplexity": jnp.exp(nll), "top1": sums[2] / tokens,
                "nonfinite_tokens": sums[3], "diverged": (sums[3] > 0).astype(jnp.float32)}

    def check_data(self, inputs, targets):
        x, y = np.shape(inputs), np.shape(targets)
        check(len(x) == 2 and x == y and x[0] >= 1 and x[1] >= 1,
              f"language_model needs token ids (N, L) and next-token targets (N, L), got shapes {x} and {y}")
        for what, a in (("inputs", inputs), ("targets", targets)):
            check(np.issubdtype(np.asarray(a).dtype, np.integer), f"language_model {what} must be integer token ids, "
                  f"got dtype {np.asarray(a).dtype}")


def classification(topk: Sequence[int] = (1,)) -> Classification:
    """Top-k classification accuracy.

    Args:
      topk: the k of every reported top-k accuracy; the first is the headline metric.
    Returns:
      A Classification task whose metrics are ``top{k}`` fractions in [0, 1].
    """
    return Classification(tuple(topk))


def language_model() -> LanguageModel:
    """Next-token language modelling: mean cross-entropy ``nll`` (nats), ``perplexity`` =
    exp(nll), next-token ``top1``, ``nonfinite_tokens`` and ``diverged`` (see the module docstring).

    Returns:
      A LanguageModel task; its inputs are token ids (N, L) and targets the next tokens (N, L),
      -1 where a position is not scored.
    """
    return LanguageModel()


TASKS = {"classification": classification, "language_model": language_model}


def get_task(name: str, **config) -> Task:
    """A task by name ('classification' or 'language_model') and its configuration."""
    from jaxfault.core.errors import nearest_hint

    if name not in TASKS:
        raise JaxfaultError(f"unknown task {name!r}{nearest_hint(str(name), tuple(TASKS))}; "
                            f"choose one of {', '.join(TASKS)}")
    return TASKS[name](**config)


# ------------------------------------------------------------------------------------ the metric
def batched_metric_fn(model, task: Task, batch_size: int = 1000) -> Callable:
    """fn(variables, inputs, targets, output_hook=None) -> (metrics, extra_stats).

    Inputs run through ``model.apply`` in fixed-size batches under ``lax.scan``. Variables may carry
    extra collections (fault-model data); only the model's are applied. ``output_hook``, when
    given, is ``hook(batch_index) -> (interceptor, counts)``: the interceptor wraps every module
    method call of that batch (``flax.linen.intercept_methods``) and appends traced fault counts to
    the list ``counts``; their total over the evaluation is returned as ``activation_faults``.

    Args:
      model: a Flax module; ``model.apply(variables, x, **task.apply_kwargs)`` gives logits.
      task: the Task that scores the logits.
      batch_size: inputs per batch (the last batch is padded and masked).
    Returns:
      The metric function; metrics are float32 scalars named by the task.
    """
    import flax.linen as nn

    check(isinstance(batch_size, int) and batch_size > 0, f"batch_size must be a positive integer, got {batch_size!r}")

    def metric(variables, inputs, targets, output_hook=None):
        applied = {k: v for k, v in variables.items() if k in MODEL_COLLECTIONS}
        n = inputs.shape[0]
        bs = min(batch_size, n)
        nb = -(-n // bs)
        pad = nb * bs - n
        x = jnp.pad(inputs, ((0, pad),) + ((0, 0),) * (inputs.ndim - 1)).reshape((nb, bs) + inputs.shape[1:])
        y = jnp.pad(targets, ((0, pad),) + ((0, 0),) * (targets.ndim - 1),
                    constant_values=-1).reshape((nb, bs) + targets.shape[1:])
        n_sums = len(task.sum_names())

        def body(carry, xyb):
            sums, act = carry
            xb, yb, b = xyb
            if output_hook is None:
                logits = model.apply(applied, xb, **task.apply_kwargs)
                return (sums + task.batch_sums(logits, yb), act), None
            interceptor, counts = output_hook(b)
            with nn.intercept_methods(interceptor):
                logits = model.apply(applied, xb, **task.apply_kwargs)
            extra = sum(counts) if counts else jnp.float32(0.0)
            return (sums + task.batch_sums(logits, yb), act + jnp.asarray(extra, jnp.float32)), None

        zero = jnp.zeros((n_sums,), jnp.int32 if isinstance(task, Classification) else jnp.float32)
        (sums, act), _ = jax.lax.scan(body, (zero, jnp.float32(0.0)), (x, y, jnp.arange(nb)))
        extra = {"activation_faults": act} if output_hook is not None else {}
        return task.finalize(sums, n), extra

    return metric


def make_metric_fn(model, batch_size: int = 1000, topk: Sequence[int] = (1,), task=None) -> Callable:
    """fn(variables, inputs, targets, output_hook=None) -> {metric: scalar} of a task.

    Args:
      model: the Flax model in evaluation form.
      batch_size: inputs per ``lax.scan`` batch.
      topk: the top-k accuracies reported when ``task`` is None (classification).
      task: a :class:`Task` (default: ``classification(topk)``).
    Returns:
      The metric function. Variables may carry extra collections (fault-model data); only the
      model's are applied. With an ``output_hook`` (see :func:`batched_metric_fn`) the
      dict also holds ``activation_faults``, the activation faults injected over the evaluation.
    """
    task = classification(topk) if task is None else task
    inner = batched_metric_fn(model, task, batch_size=batch_size)

    def metric(variables, inputs, targets, output_hook=None):
        metrics, extra = inner(variables, inputs, targets, output_hook)
        return {**metrics, **extra}

    return metric
