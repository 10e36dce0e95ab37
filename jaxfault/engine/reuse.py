"""The engine's work-saving evaluation: same numbers as a full evaluation, per trial, bit for bit.

``jaxfault.engine.evaluate`` runs here when its trials are mapped sequentially (strategy "map",
the CPU default) on one device. Three kinds of work are skipped or shared:

* **Known answers.** Every trial's perturbed variables are first compared, bit for bit, with the
  clean ones. A trial that changed nothing (no fault drawn, every fault masked by the stored
  value or corrected by the ECC) has the clean model's accuracy. A trial whose perturbed
  variables have the same fingerprint as an earlier trial's (two 32-bit linear hashes of all
  their bit patterns, ``fingerprint``: one value apart never collide, otherwise about 2^-64)
  has that trial's accuracy. Both tests read one flat vector of the variables' bits, so each is
  a single reduction in the program.
* **The clean prefix.** For a model split into stages (jaxfault.engine.stages), a trial whose first
  changed parameter sits in stage k starts from the clean activations at the input of stage k,
  computed once per call. In float32 every cut is used. In bf16, XLA keeps float32 across some
  fused layer chains and rounds once, so a cut there would round differently from the whole
  program (cut before its dense head, the default LeNet's clean top-1 moved by 7 images in
  10,000); only cuts after a stage that rounds its own output are used (``model_stages`` with
  the arithmetic dtype: after the first convolution stage of a grayscale LeNet on the CPU).
* **Compilation.** Every program is a module-level ``jax.jit`` of a pure function whose static
  argument is a frozen spec (model, fault model, strategy, precision, batch size, top-k): jit's
  own cache reuses a program across calls with the same shapes and fault-model structure.

One compiled trial program serves every route: ``lax.switch`` picks, per trial, the full forward
pass, a suffix from a cut, or nothing. Under ``lax.map`` only the chosen branch runs.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
MAX_CACHE_BYTES = 1 << 30          # clean activations kept per call, at most


# ------------------------------------------------------------------------------ fingerprints
def _mix32(h):
    """The murmur3 32-bit finalizer: a bijection of uint32 that spreads every input bit."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def fingerprint(bits: jax.Array, seed: int = 0x5EED) -> jax.Array:
    """Two linear hashes mod 2^32 of a flat uint32 vector of bit patterns, with odd multipliers
    made in the program: the murmur3 finalizer of each value's index and of a seed (the same in
    every program, so fingerprints compare across calls). Vectors that differ in one value never
    share a fingerprint (an odd multiplier keeps any nonzero difference nonzero mod 2^32); vectors
    that differ in more share one with probability about 2^-64.

    Args:
      bits: a 1-D uint32 array (``flat_bits`` of a pytree).
      seed: mixed into every multiplier.
    Returns:
      A (2,) uint32 array.
    """
    idx = jax.lax.iota(jnp.uint32, bits.shape[0])
    m1, m2 = (_mix32(_mix32(idx * jnp.uint32(2) + jnp.uint32(j)) ^ jnp.uint32(seed + j)) | jnp.uint32(1)
              for j in range(2))
    return jnp.stack([jnp.sum(bits * m1, dtype=jnp.uint32),
                      jnp.sum((bits ^ (bits >> 16) ^ jnp.uint32(0x9E3779B9)) * m2, dtype=jnp.uint32)])


def flat_bits(leaves) -> jax.Array:
    """The bit patterns of a sequence of arrays, each widened to uint32, raveled and concatenated
    (one vector, so one reduction compares or hashes them all)."""
    parts = [_bits(x).ravel() for x in leaves]
    return jnp.concatenate(parts) if len(parts) > 1 else (parts[0] if parts else jnp.zeros((0,), jnp.uint32))


def _bits(x) -> jax.Array:
    x = jnp.asarray(x)
    width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}.get(x.dtype.itemsize)
    if jnp.issubdtype(x.dtype, jnp.bool_):
        return x.astype(jnp.uint32)
    return (jax.lax.bitcast_convert_type(x, width) if width else x).astype(jnp.uint32)


# ------------------------------------------------------------------------------ the spec
@dataclasses.dataclass(frozen=True)
class Spec:
    """Everything static about one evaluation: jit's cache key."""

    model: Any
    fault_model: Any
    precision: str
    batch_size: int
    task: Any                     # a jaxfault.core.tasks.Task (frozen, hashable)
    staged: bool                  # start trials from clean activations (jaxfault.engine.stages; needs clean)
    clean: bool = True            # evaluate the clean row (needed to skip unchanged trials)


def _stages(spec: Spec, prepared, images):
    from jaxfault.engine.stages import model_stages

    return model_stages(spec.model, prepared, images.dtype) if spec.staged else None


def _batches(a, bs: int, fill=0):
    n = a.shape[0]
    nb = -(-n // bs)
    a = jnp.pad(a, ((0, nb * bs - n),) + ((0, 0),) * (a.ndim - 1), constant_values=fill)
    return a.reshape((nb, bs) + a.shape[1:])


def _stage_leaves(names, v) -> tuple:
    """v's leaves grouped by the stage they count for: every leaf outside the stages (another
    collection, a parameter no stage reads) counts as stage 0's."""
    staged = {n for s in names for n in s}
    rest = jax.tree_util.tree_leaves(({k: x for k, x in v.items() if k != "params"},
                                      {k: x for k, x in v["params"].items() if k not in staged}))
    groups = [rest + jax.tree_util.tree_leaves([v["params"][n] for n in names[0]])]
    groups += [jax.tree_util.tree_leaves([v["params"][n] for n in s]) for s in names[1:]]
    return tuple(groups)


def _first_changed(ends: np.ndarray, clean_bits, faulty_bits) -> jax.Array:
    """Index of the first stage with a value that differs in any bit (len(ends): none), from the
    position of the first differing value in the stage-ordered bit vectors."""
    n = clean_bits.shape[0]
    pos = jnp.min(jnp.where(faulty_bits != clean_bits, jax.lax.iota(jnp.int32, n), n), initial=n)
    return jnp.sum(pos >= jnp.asarray(ends, jnp.int32), dtype=jnp.int32)


# ------------------------------------------------------------------------------ the program
def _program(spec: Spec, prepared, images, labels, rates, keys):
    """The clean row, then the (R, T) grid row by row, through ``_scan``."""
    T = keys.shape[1]
    flat_rates = jnp.repeat(rates, T, axis=0)
    flat_rates = jnp.concatenate([jnp.zeros_like(flat_rates[:1]), flat_rates])
    flat_keys = keys.reshape(-1)
    return _scan(spec, prepared, images, labels, flat_rates, jnp.concatenate([flat_keys[:1], flat_keys]))


def _scan(spec: Spec, prepared, images, labels, rates, keys):
    """Row 0 is the clean model, rows 1.. the trials, in one ``lax.scan`` over rows. A row's
    route is the forward pass from stage k (k = 0 the whole model; for a split model, k is the
    first changed stage and the stages before it are skipped, their output taken from the clean
    row's activations, which the scan carries), or a copy of the clean row (nothing changed) or
    of an earlier row (same fingerprint). Each stage's code appears once in the program.
    Returns ({metric: (rows,)}, {stat: (rows,)}, route per row: k, -1 clean copy, -2 duplicate)."""
    from jaxfault.core.protocol import stats_dict
    from jaxfault.core.tasks import make_metric_fn

    if spec.staged and not spec.clean:
        raise ValueError("a staged evaluation needs the clean row, whose activations it starts from")
    stages = _stages(spec, prepared, images)
    params = prepared["params"]
    names = (tuple(params),) if stages is None else tuple(s.leaves for s in stages)
    n_stages = len(names)
    n = labels.shape[0]
    bs = min(spec.batch_size, n)
    order = lambda v: flat_bits([x for g in _stage_leaves(names, v) for x in g])  # noqa: E731
    clean_bits = order(prepared)
    # one past each stage's last value in the stage-ordered bit vector
    ends = np.cumsum([sum(int(np.prod(jnp.shape(x))) for x in g) for g in _stage_leaves(names, prepared)])
    task = spec.task
    metric = make_metric_fn(spec.model, batch_size=bs, task=task)
    zero = {k: jnp.zeros(s.shape, s.dtype) for k, s in jax.eval_shape(metric, prepared, images, labels).items()}

    if stages is None:
        acts0 = ()

        def forward(v, start, acts):
            return metric(v, images, labels), acts
    else:
        x = _batches(images, bs)
        y = _batches(labels, bs, fill=-1)
        shapes = []
        h = jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
        for st in stages:
            h = jax.eval_shape(lambda z, fn=st.fn: fn(params, z), h)
            shapes.append(h)
        acts0 = tuple(jnp.zeros((x.shape[0],) + s.shape, s.dtype) for s in shapes[:-1])

        from jaxfault.core.tasks import Classification

        sums0 = jnp.zeros((len(task.sum_names()),), jnp.int32 if isinstance(task, Classification) else jnp.float32)

        def forward(v, start, acts):
            def body(c, xs):
                xb, yb, cached = xs
                h = xb
                outs = []
                for k, st in enumerate(stages[:-1]):
                    if k > 0:
                        h = jnp.where(start == k, cached[k - 1], h)
                    h = jax.lax.cond(start <= k, lambda z, fn=st.fn: fn(v["params"], z),
                                     lambda z, s=shapes[k]: jnp.zeros(s.shape, s.dtype), h)
                    outs.append(h)
                # The last stage always runs (start <= its index), scored in the same computation:
                # in bf16, XLA may take the argmax of unrounded logits, as in the whole program.
                if len(stages) > 1:
                    h = jnp.where(start == len(stages) - 1, cached[-1], h)
                logits = stages[-1].fn(v["params"], h)
                return c + task.batch_sums(logits, yb), tuple(outs)

            c, outs = jax.lax.scan(body, sums0, (x, y, acts))
            return task.finalize(c, n), outs

    rows = keys.shape[0]

    def body(memo, row):
        i, rate, key = row
        fps, filled, saved, acts = memo
        faulty, stats = spec.fault_model.perturb(key, prepared, rate)
        _check_same_layout(prepared, faulty)
        is_clean = i == 0
        v = jax.tree_util.tree_map(lambda c, f: jnp.where(is_clean, c, f), prepared, faulty)
        bits = order(v)
        first = _first_changed(ends, clean_bits, bits)
        fp = fingerprint(bits)
        match = jnp.all(fps == fp[None], axis=1) & filled
        dup = jnp.any(match) & ~is_clean
        unchanged = (first == n_stages) & ~is_clean & spec.clean
        start = jnp.where(is_clean, 0, jnp.minimum(first, n_stages - 1))
        run = (is_clean & spec.clean) | ~(is_clean | unchanged | dup)
        if stages is None:
            out, new_acts = jax.lax.cond(run, lambda: forward(v, start, acts), lambda: (zero, acts))
        else:
            # a faulty trial from stage 0 runs the whole model's program (fused across the cuts,
            # faster than the stages one by one); the clean row runs the stages to record the cuts
            branches = [lambda: (zero, acts), lambda: forward(v, start, acts), lambda: (metric(v, images, labels), acts)]
            which = jnp.where(run, jnp.where(is_clean | (start > 0), 1, 2), 0)
            out, new_acts = jax.lax.switch(which, branches)
        src = jnp.where(unchanged, 0, jnp.argmax(match))
        out = {k: jnp.where(unchanged | dup, saved[k][src], o) for k, o in out.items()}
        acts = jax.lax.cond(is_clean, lambda: new_acts, lambda: acts)
        memo = (fps.at[i].set(fp), filled.at[i].set(run), {k: saved[k].at[i].set(out[k]) for k in saved}, acts)
        kind = jnp.where(unchanged, -1, jnp.where(dup, -2, start))
        return memo, (out, stats_dict(stats), kind)

    memo = (jnp.zeros((rows, 2), jnp.uint32), jnp.zeros((rows,), bool),
            {k: jnp.zeros((rows,), z.dtype) for k, z in zero.items()}, acts0)
    _, (out, stats, kind) = jax.lax.scan(body, memo, (jnp.arange(rows), rates, keys))
    return out, stats, kind


def _grid(spec: Spec, strategy: str, prepared, images, labels, rates, keys):
    """The whole rates x trials evaluation without reuse (any strategy): ({metric: (R, T)}, {stat: (R, T)})."""
    from jaxfault.core.batching import map_over
    from jaxfault.core.protocol import stats_dict
    from jaxfault.core.tasks import make_metric_fn

    metric = make_metric_fn(spec.model, batch_size=spec.batch_size, task=spec.task)

    def one(rate, key):
        faulty, stats = spec.fault_model.perturb(key, prepared, rate)
        return metric(faulty, images, labels), stats_dict(stats)

    return jax.lax.map(lambda rk: map_over(lambda k: one(rk[0], k), rk[1], strategy), (rates, keys))


def _clean(spec: Spec, prepared, images, labels):
    from jaxfault.core.tasks import make_metric_fn

    return make_metric_fn(spec.model, batch_size=spec.batch_size, task=spec.task)(prepared, images, labels)


_program_jit = jax.jit(_program, static_argnums=0)
_grid_jit = jax.jit(_grid, static_argnums=(0, 1))
_clean_jit = jax.jit(_clean, static_argnums=0)


def strategy_reuses(strategy: str) -> bool:
    """True for the batching strategy the reuse path runs under: trials mapped one at a time
    ('map' without a chunk, which 'auto' is on the CPU).

    Args:
      strategy: a batching strategy name (jaxfault.core.batching).
    Returns:
      A bool.
    """
    from jaxfault.core.batching import parse_strategy

    return parse_strategy(strategy) == ("map", None)


def can_stage(model, prepared, images, batch_size: int) -> bool:
    """True when trials of this evaluation may start from clean activations: the model is split
    at a cut that is exact in the arithmetic dtype (jaxfault.engine.stages: every cut in float32;
    in bf16 only after a stage that rounds its own output), every floating parameter has the
    inputs' dtype, and the activations fit MAX_CACHE_BYTES.

    Args:
      model, prepared: the model in evaluation form and its prepared variables.
      images: the prepared inputs; batch_size: the evaluation batch size.
    Returns:
      A bool.
    """
    from jaxfault.engine.stages import model_stages

    if not jnp.issubdtype(images.dtype, jnp.floating):
        return False
    stages = model_stages(model, prepared, images.dtype)
    if stages is None:
        return False
    if any(jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) and jnp.asarray(x).dtype != images.dtype
           for x in jax.tree_util.tree_leaves(prepared)):
        return False
    bs = min(batch_size, images.shape[0])
    shape = jax.ShapeDtypeStruct((bs,) + images.shape[1:], images.dtype)
    total = 0
    for s in stages[:-1]:
        shape = jax.eval_shape(lambda x, fn=s.fn: fn(prepared["params"], x), shape)
        total += int(np.prod(shape.shape[1:])) * shape.dtype.itemsize * images.shape[0]
    return total <= MAX_CACHE_BYTES


class LayoutDiffers(Exception):
    """Raised while tracing the reuse program when the fault model's perturbed variables do not
    have the prepared variables' structure, shapes and dtypes (a clean row then cannot run
    through the same code as a faulty one); the engine falls back to the plain grid."""


def _check_same_layout(prepared, faulty) -> None:
    a, ta = jax.tree_util.tree_flatten(prepared)
    b, tb = jax.tree_util.tree_flatten(faulty)
    if ta != tb or any(jnp.shape(x) != jnp.shape(y) or jnp.asarray(x).dtype != y.dtype for x, y in zip(a, b)):
        raise LayoutDiffers("the perturbed variables differ in layout from the prepared ones")


def hashable(spec: Spec) -> bool:
    """True when a spec can key jit's cache (every field hashable)."""
    try:
        hash(spec)
    except TypeError:
        return False
    return True


# ------------------------------------------------------------------------------ evaluation
def evaluate_grid(spec: Spec, strategy: str, prepared, images, labels, rates, keys, clean: bool):
    """The rates x trials evaluation through the cached grid program, without reuse.

    Args:
      spec: the static description (model in evaluation form, fault model sized for the rates).
      strategy: a resolved batching strategy other than 'loop'.
      prepared, images, labels: prepared variables and inputs (engine.prepare).
      rates: (R,) or (R, S) float32; keys: (R, T) typed keys.
      clean: whether to also compute the clean metric.
    Returns:
      (metrics {name: (R, T)}, stats {name: (R, T)}, clean metric dict or {}).
    """
    metrics, stats = _grid_jit(spec, strategy, prepared, images, labels, rates, keys)
    cm = _clean_jit(spec, prepared, images, labels) if clean else {}
    metrics, stats, cm = jax.device_get((metrics, stats, cm))
    return metrics, stats, {k: float(v) for k, v in cm.items()}


ROUTE_NAMES = {-1: "clean", -2: "duplicate", 0: "full"}


def evaluate_reusing(spec: Spec, prepared, images, labels, rates, keys):
    """The rates x trials evaluation with known answers skipped and clean prefixes shared.

    Args:
      spec: the static description; ``spec.staged`` only when ``can_stage`` holds; ``spec.clean``
        to evaluate the clean model (and skip unchanged trials).
      prepared, images, labels: prepared variables and inputs (engine.prepare).
      rates: (R,) or (R, S) float32; keys: (R, T) typed keys.
    Returns:
      (metrics {name: (R, T)}, stats {name: (R, T)}, clean metric dict or {}, routes: a dict of
      how many trials took each route: 'full', 'cut1', ..., 'clean', 'duplicate').
    """
    R, T = keys.shape
    out, stats, kind = jax.device_get(_program_jit(spec, prepared, images, labels, rates, keys))
    kind = np.asarray(kind)[1:]
    routes = {ROUTE_NAMES.get(int(k), f"cut{int(k)}"): int(np.sum(kind == k)) for k in np.unique(kind)}
    metrics = {k: np.asarray(v)[1:].reshape(R, T) for k, v in out.items()}
    stats = {k: np.asarray(v)[1:].reshape(R, T) for k, v in stats.items()}
    cm = {k: float(np.asarray(v)[0]) for k, v in out.items()} if spec.clean else {}
    return metrics, stats, cm, routes
