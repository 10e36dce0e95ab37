"""Training and clean evaluation of decoder language models over byte-token corpora.

Any Flax module whose ``apply(variables, tokens)`` returns logits of shape (batch, length, vocab)
works: the library's GPT-2 and Llama families, or a user's own. The loss is the mean next-token
cross-entropy (natural log); perplexity is its exponential.

Training draws each step's batch of windows at uniformly random offsets of the training stream,
from the PRNG key of that step (``fold_in(data_key, step)``), so a run is a pure function of its
seed. Adam with a linear warm-up and cosine decay, gradient norm clipped at 1; weights are trained
and stored in float32 (fault models that store bf16 words truncate them when they prepare).
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxfault.core.errors import JaxfaultError, check
from jaxfault.core.precision import precision_scope
from jaxfault.core.progress import progress

PyTree = Any


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-token negative log-likelihood (natural log) of integer targets under logits, computed in
    float32 whatever the logits' dtype."""
    logits = logits.astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets)


def lm_loss(model, params: PyTree, inputs: jax.Array, targets: jax.Array, extra: dict | None = None) -> jax.Array:
    """Mean next-token cross-entropy of model on (inputs, targets) of shape (B, L)."""
    logits = model.apply({"params": params, **(extra or {})}, inputs)
    return token_nll(logits, targets).mean()


def sample_windows(key: jax.Array, tokens: np.ndarray, batch_size: int, length: int) -> np.ndarray:
    """(batch_size, length + 1) windows of a token stream at offsets drawn uniformly from key."""
    n = int(tokens.shape[0]) - length - 1
    check(n >= 1, f"the training text ({tokens.shape[0]} tokens) is shorter than one window of {length + 1}")
    starts = np.asarray(jax.random.randint(key, (batch_size,), 0, n + 1))
    return tokens[starts[:, None] + np.arange(length + 1)[None, :]]


def make_clean_nll_fn(model, batch_size: int = 16) -> Callable:
    """fn(variables, inputs, targets) -> (sum of token NLLs, token count) over (N, L) arrays in
    fixed batches under lax.scan (the last batch padded and masked)."""
    check(batch_size >= 1, f"batch_size must be >= 1, got {batch_size!r}")

    def fn(variables, inputs, targets):
        n = inputs.shape[0]
        bs = min(batch_size, n)
        nb = -(-n // bs)
        pad = nb * bs - n
        x = jnp.pad(inputs, ((0, pad), (0, 0))).reshape(nb, bs, -1)
        y = jnp.pad(targets, ((0, pad), (0, 0)), constant_values=-1).reshape(nb, bs, -1)

        def body(acc, xy):
            xb, yb = xy
            nll = token_nll(model.apply(variables, xb), jnp.maximum(yb, 0))
            return acc + jnp.sum(jnp.where(yb >= 0, nll, 0.0)), None

        total, _ = jax.lax.scan(body, jnp.float32(0.0), (x, y))
        return total, jnp.float32(n * inputs.shape[1])

    return fn


def perplexity(model, variables: PyTree, inputs, targets, *, batch_size: int = 16,
               precision: str = "highest") -> dict:
    """Clean next-token metrics of a model on (N, L) inputs/targets.

    Args:
      model, variables: a Flax module with apply(variables, tokens) -> logits, and its variables.
      inputs, targets: int arrays of shape (N, L).
      batch_size: windows per forward pass.
      precision: float32 matmul precision (jaxfault.core.precision).
    Returns:
      {'nll': mean token NLL in nats, 'perplexity': exp(nll), 'tokens': N * L}.
    """
    fn = make_clean_nll_fn(model, batch_size)
    with precision_scope(precision):
        total, count = jax.jit(fn)(variables, jnp.asarray(inputs), jnp.asarray(targets))
    nll = float(total) / float(count)
    return {"nll": nll, "perplexity": math.exp(nll) if nll < 700 else math.inf, "tokens": int(count)}


def train_language_model(model, train_tokens: np.ndarray, val_inputs: np.ndarray, val_targets: np.ndarray, *,
                         steps: int, batch_size: int, seq_len: int, learning_rate: float, key: jax.Array,
                         warmup: int | None = None, eval_every: int | None = None, precision: str = "default",
                         log: Callable[[str], None] = print) -> tuple[PyTree, list[dict]]:
    """Train a decoder language model from scratch on a token stream.

    Args:
      model: Flax module, apply(variables, tokens (B, L)) -> logits (B, L, V).
      train_tokens: 1-D int array, the training stream.
      val_inputs, val_targets: (N, L) validation windows, evaluated every eval_every steps and at the end.
      steps, batch_size, seq_len: optimisation steps, windows per step, tokens per window.
      learning_rate: peak Adam learning rate (linear warm-up over `warmup` steps, cosine decay to 0).
      key: typed PRNG key; 'init' and 'data' streams are folded from it.
      precision: float32 matmul precision of the training steps ('default': the backend's fast mode).
      log: where progress lines go.
    Returns:
      (variables {'params': ...} in float32, history: one dict per evaluation with step, train
      loss, validation nll/perplexity and elapsed seconds).
    """
    for name, v in (("steps", steps), ("batch_size", batch_size), ("seq_len", seq_len)):
        check(isinstance(v, (int, np.integer)) and v >= 1, f"{name} must be a positive integer, got {v!r}")
    check(math.isfinite(learning_rate) and learning_rate > 0, f"learning_rate must be > 0, got {learning_rate!r}")
    train_tokens = np.asarray(train_tokens, np.int32)
    warmup = max(1, min(steps // 10, 100)) if warmup is None else int(warmup)
    eval_every = eval_every or max(1, steps // 5)
    k_init, k_data = jax.random.split(key)
    dummy = jnp.zeros((1, seq_len), jnp.int32)
    params = model.init(k_init, dummy)["params"]
    n_params = sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup, max(steps, warmup + 1), 0.0)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=0.01))
    opt_state = tx.init(params)

    @jax.jit
    def step_fn(params, opt_state, batch):
        loss, grads = jax.value_and_grad(lambda p: lm_loss(model, p, batch[:, :-1], batch[:, 1:]))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    log(f"training a {n_params:,}-parameter decoder: {steps} steps x {batch_size} windows x {seq_len} tokens "
        f"({train_tokens.size:,} training tokens, {val_inputs.size:,} validation tokens)")
    history: list[dict] = []
    t0 = time.perf_counter()
    losses = []
    bar = progress(total=steps, desc="train", unit="step")
    with precision_scope(precision):
        for s in range(steps):
            batch = sample_windows(jax.random.fold_in(k_data, s), train_tokens, batch_size, seq_len)
            params, opt_state, loss = step_fn(params, opt_state, jnp.asarray(batch))
            losses.append(loss)
            bar.update(1)
            if (s + 1) % eval_every == 0 or s + 1 == steps:
                train_loss = float(np.mean(jax.device_get(losses)))
                losses = []
                if not math.isfinite(train_loss):
                    bar.close()
                    raise JaxfaultError(f"training diverged at step {s + 1} (loss {train_loss}); "
                                        f"lower the learning rate")
                val = perplexity(model, {"params": params}, val_inputs, val_targets, precision=precision)
                history.append({"step": s + 1, "train_loss": train_loss, "val_nll": val["nll"],
                                "val_perplexity": val["perplexity"], "seconds": time.perf_counter() - t0})
                bar.set_postfix(train_loss=f"{train_loss:.3f}", val_ppl=f"{val['perplexity']:.3f}")
    bar.close()
    return {"params": jax.device_get(params)}, history


# ------------------------------------------------------------------------------------ model families
LM_FAMILIES = ("gpt2", "llama")


def lm_model_config(family: str, *, vocab_size: int, layers: int, width: int, heads: int, seq_len: int) -> dict:
    """Hugging Face-style configuration fields of a small decoder of a family (tied embeddings;
    Llama with as many key/value heads as heads and a SwiGLU width of 8/3 x width rounded to 8)."""
    check(family in LM_FAMILIES, f"unknown language-model family {family!r}; choose one of {', '.join(LM_FAMILIES)}")
    for name, v in (("layers", layers), ("width", width), ("heads", heads), ("seq_len", seq_len)):
        check(isinstance(v, (int, np.integer)) and v >= 1, f"{name} must be a positive integer, got {v!r}")
    check(width % heads == 0, f"width ({width}) must be a multiple of heads ({heads})")
    if family == "gpt2":
        return {"vocab_size": vocab_size, "n_positions": seq_len, "n_embd": width, "n_layer": layers,
                "n_head": heads, "tie_word_embeddings": True}
    return {"vocab_size": vocab_size, "hidden_size": width, "intermediate_size": -(-8 * width // 3 // 8) * 8,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": heads,
            "max_position_embeddings": seq_len, "tie_word_embeddings": True}


def build_language_model(family: str, config: dict):
    """The Flax module of a family ('gpt2' or 'llama') from its configuration fields."""
    from jaxfault.models import GPT2, Llama

    check(family in LM_FAMILIES, f"unknown language-model family {family!r}; choose one of {', '.join(LM_FAMILIES)}")
    cls = GPT2 if family == "gpt2" else Llama
    try:
        return cls(**config)
    except TypeError as e:
        raise JaxfaultError(f"bad {family} configuration: {e}") from None


def load_language_model(path) -> tuple[Any, dict, dict]:
    """(model, variables, config) of a language-model checkpoint written by the zoo
    (kind 'language_model'), its arrays checked against the model's parameter shapes."""
    from jaxfault.training.checkpoints import load_checkpoint

    ck = load_checkpoint(path, kind="language_model")
    for field in ("family", "model_config", "seq_len"):
        if field not in ck.config:
            raise JaxfaultError(f"language-model checkpoint {ck.path} lacks {field!r} in its metadata")
    model = build_language_model(ck.config["family"], ck.config["model_config"])
    seq = int(ck.config["seq_len"])
    expected = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, seq), jnp.int32)))
    if jax.tree_util.tree_structure(dict(expected)) != jax.tree_util.tree_structure(ck.variables) or any(
            a.shape != b.shape for a, b in zip(jax.tree_util.tree_leaves(expected),
                                               jax.tree_util.tree_leaves(ck.variables))):
        raise JaxfaultError(f"checkpoint {ck.path} does not match its {ck.config['family']} configuration "
                            f"(parameters differ)")
    return model, ck.variables, ck.config


# ------------------------------------------------------------------------------------ summaries
def order_statistic_interval(n: int, q: float = 0.5, level: float = 0.95) -> tuple[int, int]:
    """0-based ranks (lo, hi) of the sorted sample whose values bracket the q-quantile with
    probability >= level, for any continuous or discrete distribution: the number of draws below
    the quantile is Binomial(n, q), and lo/hi are its level-central binomial quantiles (clipped to
    the sample; with few trials the interval is the whole sample range)."""
    from math import comb

    check(n >= 1, "an interval needs at least one trial")
    cdf, acc = [], 0.0
    for k in range(n + 1):
        acc += comb(n, k) * q ** k * (1 - q) ** (n - k)
        cdf.append(acc)
    a = (1 - level) / 2
    lo = max([k for k in range(n + 1) if cdf[k] <= a] or [0])          # P(B <= lo) <= a
    hi = min([k for k in range(n + 1) if cdf[k] >= 1 - a] or [n])      # P(B <= hi) >= 1 - a
    return max(0, min(lo, n - 1)), max(0, min(hi, n - 1))


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score 95 % interval of a binomial proportion."""
    check(n >= 1, "an interval needs at least one trial")
    p = successes / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def summarize_trials(metrics: dict) -> dict:
    """Summary over trials of a language-model evaluation that stays meaningful when some trials
    diverge (inf perplexity): order statistics instead of means.

    Args:
      metrics: per-trial arrays (T,) of the language_model task: 'perplexity', 'nll', 'top1',
        'nonfinite_tokens', 'diverged'.
    Returns:
      {'trials', 'perplexity': {median, median_ci95 [lo, hi] (order-statistic interval), q10, q90,
      min, max}, 'top1': {median, median_ci95, mean}, 'diverged': {fraction, ci95 (Wilson)} of trials
      with non-finite logits, 'infinite': the same for trials whose perplexity is inf (non-finite
      logits, or finite logits so far apart that a target's probability underflows to 0),
      'nonfinite_tokens': {total, max}}; inf where a statistic falls on such a trial, never NaN.
    """
    ppl = np.sort(np.asarray(metrics["perplexity"], np.float64).ravel())
    n = ppl.size
    lo, hi = order_statistic_interval(n)
    q = lambda p: float(ppl[min(n - 1, max(0, math.ceil(p * n) - 1))])  # noqa: E731 - inverted-CDF quantile
    top1 = np.sort(np.asarray(metrics["top1"], np.float64).ravel())
    div = np.asarray(metrics["diverged"]).ravel() > 0
    inf = np.isinf(ppl)
    nf = np.asarray(metrics["nonfinite_tokens"], np.float64).ravel()
    return {"trials": int(n),
            "perplexity": {"median": q(0.5), "median_ci95": [float(ppl[lo]), float(ppl[hi])], "q10": q(0.1),
                           "q90": q(0.9), "min": float(ppl[0]), "max": float(ppl[-1])},
            "top1": {"median": float(top1[min(n - 1, math.ceil(0.5 * n) - 1)]),
                     "median_ci95": [float(top1[lo]), float(top1[hi])], "mean": float(top1.mean())},
            "diverged": {"fraction": float(div.mean()), "ci95": list(wilson_interval(int(div.sum()), n))},
            "infinite": {"fraction": float(inf.mean()), "ci95": list(wilson_interval(int(inf.sum()), n))},
            "nonfinite_tokens": {"total": float(nf.sum()), "max": float(nf.max())}}


# ------------------------------------------------------------------------------------ evaluation data
DEFAULT_EVAL_WINDOWS = 32


def is_language_model(checkpoint) -> bool:
    """True when a folder holds a language model: a zoo checkpoint of kind 'language_model' or a
    Hugging Face folder (config.json); False for None and for other checkpoints."""
    from pathlib import Path

    if checkpoint is None:
        return False
    p = Path(checkpoint)
    if (p / "config.json").is_file():
        return True
    from jaxfault.training.checkpoints import META_FILE, read_metadata

    return (p / META_FILE).is_file() and read_metadata(p).get("kind") == "language_model"


def scores_language_model(task, checkpoint) -> bool:
    """True when a run is scored as a language model: task 'language_model', or no task and a
    checkpoint that holds one (is_language_model); the rule of every CLI and config with a task."""
    return task == "language_model" or (task is None and is_language_model(checkpoint))


def hf_folder_digest(folder) -> str:
    """16 hex digits identifying a Hugging Face folder's model: its config.json and the names and
    sizes of its safetensors files (from_hf reads and checks the tensors themselves)."""
    import hashlib
    from pathlib import Path

    folder = Path(folder)
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for f in sorted(folder.glob("*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]
