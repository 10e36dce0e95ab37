"""jaxfault side by side with PyTorchFI on the same weights, in one process (optional; never in the suite).

    pip install torch==2.13.0 && pip install --no-deps pytorchfi==0.6.0   (bench/requirements-peers.txt)
    python -m bench.peers [--instances 20] [--bers 1e-5,1e-4] [--limit N] [--compile-cache]

The cached default LeNet (float32) is ported to a torch nn.Sequential (conv kernels HWIO -> OIHW,
dense kernels transposed, the first dense kernel's rows permuted from flax's (H, W, C) flattening
to torch's (C, H, W)); the port is checked first: the clean predictions of both on the test images
must agree.

Workloads (conv/dense weights only, biases untouched, as PyTorchFI injects):

* **bit flips**: every bit of the float32 weights flips independently with probability BER.
  jaxfault: ``jaxfault.bit_flips()``. PyTorchFI: ``weight_error_models.multi_weight_inj``, which
  visits every weight of the injected layers and corrupts it with probability ``sdc_p``, calling
  a user function for its new value. With ``sdc_p = 1 - (1 - BER)^32`` and a function that flips
  K >= 1 distinct uniformly chosen bits, K drawn from Binomial(32, BER) conditioned on K >= 1, the
  law of the flipped bits is exactly jaxfault's (independent Bernoulli(BER) bits).
* **stuck-at**: weights stored as bf16 words, each of the 16 cells stuck with probability BER, at
  1 with probability q (else 0); the arithmetic is float32 (jaxfault: ``hbm_faults(scheme="none")``
  with ``compute_dtype="float32"``; PyTorchFI: the same per-weight law as above over 16 cells, on
  the bf16-truncated weights).

Per workload and BER: seconds per faulty instance (jaxfault's first call, compilation and clean
pass included, and a second, warm call), the ratio to PyTorchFI, the mean accuracies, and whether
the two accuracy distributions agree (Welch's t-test and the Mann-Whitney U test, two-sided; a
p-value above 0.01 is read as agreement). Then the exact-recompute floor at the routes jaxfault's
trials took (``route_floor``): what no exact evaluation with XLA's kernels can undercut on this
machine even with nothing to compile, and so the largest ratio to PyTorchFI it can reach. Both tools draw their own faults (different random
streams, same law). Prints ``uptime`` first: timings on a shared machine vary with its load.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import time
from importlib.metadata import version

import numpy as np

BIT_WIDTH = {"bitflip": 32, "stuck-at": 16}


# ------------------------------------------------------------------------------ the port
def torch_lenet(params):
    """The default LeNet5 as a torch nn.Sequential holding the flax parameters (float32)."""
    import torch
    import torch.nn as nn

    p = {k: {n: np.asarray(v, np.float32) for n, v in d.items()} for k, d in params.items()}
    net = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, 2),
                        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Flatten(),
                        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    denses = [m for m in net if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for m, name in zip(convs, ("Conv_0", "Conv_1")):
            m.weight.copy_(torch.from_numpy(p[name]["kernel"].transpose(3, 2, 0, 1).copy()))
            m.bias.copy_(torch.from_numpy(p[name]["bias"]))
        k0 = p["Dense_0"]["kernel"].reshape(5, 5, 16, 120).transpose(2, 0, 1, 3).reshape(400, 120)
        for m, k, b in zip(denses, (k0, p["Dense_1"]["kernel"], p["Dense_2"]["kernel"]),
                           (p[f"Dense_{i}"]["bias"] for i in range(3))):
            m.weight.copy_(torch.from_numpy(k.T.copy()))
            m.bias.copy_(torch.from_numpy(b))
    return net.eval()


def torch_logits(net, images_nchw, batch_size: int = 1000):
    import torch

    with torch.no_grad():
        return torch.cat([net(images_nchw[i:i + batch_size]) for i in range(0, len(images_nchw), batch_size)])


def torch_top1(net, images_nchw, labels, batch_size: int = 1000) -> float:
    return float((torch_logits(net, images_nchw, batch_size).argmax(-1) == labels).float().mean())


# ------------------------------------------------------------------------------ the PyTorchFI side
def corrupt_function(workload: str, ber: float, rng: np.random.Generator, zero_to_one: float):
    """PyTorchFI injection function(weight tensor, index) -> new value: the conditional law of a
    weight's faulty cells given that it has at least one (see the module docstring)."""
    import torch

    width = BIT_WIDTH[workload]
    k = np.arange(1, width + 1)
    from scipy.stats import binom

    pk = binom.pmf(k, width, ber)
    pk = pk / pk.sum()

    def function(data, location):
        value = np.float32(data[location].item())
        word = np.array([value], np.float32).view(np.uint32)[0]
        n = rng.choice(k, p=pk)
        cells = rng.choice(width, size=n, replace=False)
        for c in cells:
            bit = np.uint32(1) << np.uint32(c + 32 - width)      # bf16 cells are the upper 16 bits
            if workload == "bitflip":
                word ^= bit
            elif rng.random() < zero_to_one:
                word |= bit
            else:
                word &= ~bit
        return torch.tensor(np.array([word], np.uint32).view(np.float32)[0])

    return function


def pytorchfi_instances(net, images, labels, workload: str, ber: float, instances: int, seed: int,
                        zero_to_one: float):
    """Accuracy and seconds of each faulty instance through PyTorchFI: the multi-weight law of
    its ``weight_error_models.multi_weight_inj`` (every weight of the injected layers selected
    independently with probability sdc_p; drawn here with numpy at once rather than a Python
    loop, the same law and faster), injected by ``declare_weight_fi`` (a deepcopy of the model
    with the selected weights replaced by the function's values), then the corrupted copy
    evaluated."""
    import torch.nn as nn
    from pytorchfi.core import fault_injection

    width = BIT_WIDTH[workload]
    layer_types = [nn.Conv2d, nn.Linear]
    pfi = fault_injection(net, batch_size=1000, input_shape=[1, 28, 28], layer_types=layer_types)
    shapes = [tuple(m.weight.shape) for m in net.modules() if isinstance(m, tuple(layer_types))]
    rng = np.random.default_rng(seed)
    sdc_p = -np.expm1(width * np.log1p(-ber))
    accs, secs, faulty_weights = [], [], []
    for _ in range(instances):
        t0 = time.perf_counter()
        where = [[], [], [], [], []]
        for layer, shape in enumerate(shapes):
            for idx in np.argwhere(rng.random(shape) < sdc_p):
                full = list(idx) + [None] * (4 - len(idx))
                for d, v in enumerate([layer] + [None if v is None else int(v) for v in full]):
                    where[d].append(v)
        bad = pfi.declare_weight_fi(layer_num=where[0], k=where[1], dim1=where[2], dim2=where[3], dim3=where[4],
                                    function=corrupt_function(workload, ber, rng, zero_to_one))
        accs.append(torch_top1(bad, images, labels))
        secs.append(time.perf_counter() - t0)
        faulty_weights.append(len(where[0]))
    return np.asarray(accs), np.asarray(secs), float(np.mean(faulty_weights))


# ------------------------------------------------------------------------------ the jaxfault side
def jaxfault_instances(model, variables, images, labels, workload: str, ber: float, instances: int, seed: int,
                       zero_to_one: float):
    """Accuracies, first-call seconds (compilation and clean pass included), warm seconds and the
    trials per route of one jaxfault evaluation of `instances` faulty instances."""
    import jax

    import jaxfault

    if workload == "bitflip":
        fm, extra = jaxfault.bit_flips(), {"reuse": True}
    else:
        fm, extra = jaxfault.hbm_faults(scheme="none", zero_to_one=zero_to_one), {"compute_dtype": "float32", "reuse": True}
    keys = jax.random.split(jax.random.key(seed), instances)
    first = jaxfault.evaluate(model, variables, images, labels, fm, [ber], keys, **extra)
    warm = jaxfault.evaluate(model, variables, images, labels, fm, [ber], keys, **extra)
    assert np.array_equal(first.accuracy, warm.accuracy)
    return first.accuracy[0], first.seconds, warm.seconds, first.work, first.stats


def route_floor(model, variables, images, labels, routes: dict) -> tuple[float, dict]:
    """The least time per instance that an exact evaluation with this route mix can take with
    XLA's kernels on this machine, compilation excluded: the warm time (best of 3) of the clean
    pass through the stages, plus, per trial, the time of its route: the whole model's forward
    pass ('full') or the stages from cut k ('cutk'), scored; copies ('clean', 'duplicate') cost
    nothing. Returns (seconds per instance, {route: warm seconds})."""
    import jax
    import jax.numpy as jnp

    from jaxfault.engine.stages import model_stages

    params = variables["params"]
    bs = 1000 if len(labels) % 1000 == 0 else len(labels)           # the engine's batch size
    x = jnp.asarray(images).reshape((-1, bs) + tuple(np.shape(images)[1:]))
    y = jnp.asarray(labels).reshape((-1, bs))
    stages = model_stages(model, variables, x.dtype)

    def batched(f):            # f(params, h, labels) per batch of bs images, as the engine runs them
        return lambda p, h: jnp.sum(jax.lax.map(lambda hy: f(p, *hy), (h, y)), axis=0)

    score = lambda logits, yb: jnp.sum(jnp.argmax(logits, -1) == yb)  # noqa: E731

    def best(f, *args):
        f = jax.jit(f)
        jax.block_until_ready(f(*args))
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            jax.block_until_ready(f(*args))
            times.append(time.perf_counter() - t0)
        return min(times)

    acts = [x]
    for st in stages[:-1]:
        acts.append(jax.jit(lambda p, h, fn=st.fn: jax.lax.map(lambda b: fn(p, b), h))(params, acts[-1]))

    def from_cut(k):
        def f(p, h, yb):
            for st in stages[k:]:
                h = st.fn(p, h)
            return score(h, yb)
        return batched(f)

    def clean_pass(p, h):
        def one(hy):
            hb, yb = hy
            outs = []
            for st in stages[:-1]:
                hb = st.fn(p, hb)
                outs.append(hb)
            return score(stages[-1].fn(p, hb), yb), outs
        return jax.lax.map(one, (h, y))

    cost = {"clean pass": best(clean_pass, params, x),
            "full": best(batched(lambda p, h, yb: score(model.apply({"params": p}, h), yb)), params, x)}
    for k in range(1, len(stages)):
        cost[f"cut{k}"] = best(from_cut(k), params, acts[k])
    n = sum(routes.values())
    total = cost["clean pass"] + sum(c * cost[r] for r, c in routes.items() if r in cost)
    return total / n, cost


def agreement(a, b) -> str:
    from scipy.stats import mannwhitneyu, ttest_ind

    t = ttest_ind(a, b, equal_var=False).pvalue
    u = mannwhitneyu(a, b, alternative="two-sided").pvalue
    verdict = "agree" if min(t, u) > 0.01 else "DIFFER"
    return f"Welch p {t:.2f}, Mann-Whitney p {u:.2f}: {verdict}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", type=int, default=20, help="faulty instances per BER (default: 20)")
    ap.add_argument("--bers", default="1e-5,1e-4", help="comma-separated BERs (default: 1e-5,1e-4)")
    ap.add_argument("--workloads", default="bitflip,stuck-at", help="bitflip, stuck-at or both (default: both)")
    ap.add_argument("--zero-to-one", type=float, default=0.01, help="stuck-at: share stuck at 1 (default: 0.01)")
    ap.add_argument("--limit", type=int, default=None, help="first N test images only (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile-cache", action="store_true",
                    help="turn on jaxfault's persistent compilation cache (a second run loads its programs)")
    a = ap.parse_args(argv)
    import torch

    import jax
    import jax.numpy as jnp
    import pytorchfi  # noqa: F401 - fail early when the peer is missing

    from jaxfault.core.bits import bf16_round_trip
    from jaxfault.training.zoo import load_classifier_and_data

    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    if a.compile_cache:
        import jaxfault

        print(f"persistent compilation cache: {jaxfault.enable_compile_cache()}")
    path, model, variables, images, labels, _ = load_classifier_and_data(None, a.limit, log=lambda *x: None)
    images = np.asarray(images, np.float32)
    labels_np = np.asarray(labels)
    x_t = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    y_t = torch.from_numpy(labels_np.astype(np.int64))
    print(f"LeNet5 {path}: {len(labels_np)} test images; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), pytorchfi {version('pytorchfi')}, "
          f"jax {jax.__version__} ({jax.default_backend()}), {os.cpu_count()} CPUs")

    # the port: clean predictions must agree
    for name, params in (("float32", variables["params"]),
                         ("bf16-truncated kernels", {k: {n: (bf16_round_trip(w) if n == "kernel" else w)
                                                         for n, w in d.items()} for k, d in variables["params"].items()})):
        net = torch_lenet(params)
        lt = torch_logits(net, x_t).numpy()
        lj = np.asarray(jax.jit(lambda v, x: model.apply(v, x))({"params": params}, jnp.asarray(images)))
        differ = int(np.sum(lt.argmax(-1) != lj.argmax(-1)))
        print(f"port check ({name}): {differ} of {len(labels_np)} predictions differ, max |logit difference| "
              f"{np.abs(lt - lj).max():.1e}")
        if differ:
            raise SystemExit("error: the ported model does not agree with the JAX model")

    bers = [float(b) for b in a.bers.split(",")]
    rows = []
    for workload in a.workloads.split(","):
        params = variables["params"]
        if workload == "stuck-at":
            params = {k: {n: (bf16_round_trip(w) if n == "kernel" else w) for n, w in d.items()}
                      for k, d in params.items()}
        net = torch_lenet(params)
        for ber in bers:
            acc_j, first_s, warm_s, work, stats = jaxfault_instances(model, variables, images, labels_np, workload,
                                                                     ber, a.instances, a.seed, a.zero_to_one)
            acc_p, secs_p, weights_p = pytorchfi_instances(net, x_t, y_t, workload, ber, a.instances, a.seed, a.zero_to_one)
            n = a.instances
            pfi_s = float(secs_p.mean())
            rows.append((workload, ber, first_s / n, warm_s / n, pfi_s))
            print(f"{workload:8s} BER {ber:.0e}, {n} instances: PyTorchFI {pfi_s:.3f} s/instance | jaxfault first call "
                  f"{first_s / n:.3f} s/instance ({pfi_s / (first_s / n):.1f}x faster), warm {warm_s / n:.3f} "
                  f"({pfi_s / (warm_s / n):.1f}x); faulty cells/instance: jaxfault {float(np.mean(stats['n_faults'])):.1f}, "
                  f"faulty weights/instance: PyTorchFI {weights_p:.1f}; "
                  f"routes {work}")
            floor, cost = route_floor(model, variables, images, labels_np, work)
            print(f"         exact-recompute floor at these routes (warm, compilation excluded): {floor:.3f} s/instance, "
                  f"at most {pfi_s / floor:.1f}x PyTorchFI; warm s per route: "
                  + ", ".join(f"{r} {c:.3f}" for r, c in cost.items()))
            print(f"         top-1 mean: PyTorchFI {100 * acc_p.mean():.2f} +- {100 * acc_p.std():.2f} %, jaxfault "
                  f"{100 * acc_j.mean():.2f} +- {100 * acc_j.std():.2f} % (std over instances); {agreement(acc_p, acc_j)}")
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
