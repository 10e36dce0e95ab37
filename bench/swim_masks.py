"""How much SWIM's write-verify mask depends on each part of the score: overlap of top-fraction masks.

python -m bench.swim_masks [--checkpoint DIR] [--mask-p 0.05] [--subset 4096]

Computes the Becker-LeCun curvature BL and the summed batch-mean gradient G once over the whole
training set, then compares the SM mask (s^2 * BL + 2 * s * G) with: second on the same buffer,
the quantile threshold rule, no gradient term, the earlier jaxfault scores (|BL| * s * alpha +
|w|/s and |BL|), and SM on the first --subset training images. Also prints, per layer, the median
share of the gradient term in the buffer.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxfault.cli import ArgumentParser, run_main
from jaxfault.core.errors import JaxfaultError, check_probability
from jaxfault.core.pytree import flatten_kernels, is_kernel
from jaxfault.swim.run import load_model
from jaxfault.swim.selection import (batch_mean_gradient_sum, layer_scale, loss_curvature, second_order_buffer,
                                     select_top_fraction, sensitivity_scores)


def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m bench.swim_masks", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--mask-p", type=float, default=0.05)
    p.add_argument("--subset", type=int, default=4096)
    args = p.parse_args(argv)
    mask_p = check_probability("--mask-p", args.mask_p)
    if args.subset <= 0:
        raise JaxfaultError(f"--subset must be positive, got {args.subset}")
    from jaxfault.data import load_dataset

    model, variables, config, _ = load_model(args.checkpoint)
    data = load_dataset(config["dataset"], value_range=config.get("value_range", "symmetric"))
    params = variables["params"]
    x, y = data.train_images, data.train_labels
    bl = loss_curvature(model, variables, x, y)
    g = batch_mean_gradient_sum(model, variables, x, y, batch_size=128)
    buf = second_order_buffer(params, bl, g)

    def top(scores, rule="count"):
        return np.asarray(flatten_kernels(select_top_fraction(scores, params, mask_p, threshold=rule)[0]))

    def earlier(fn):
        return jax.tree_util.tree_map_with_path(
            lambda path, w, c: fn(w, c) if is_kernel(path, w) else jnp.zeros_like(w), params, bl)

    ref = top(sensitivity_scores(params, "SM", buf))
    n = min(args.subset, len(x))
    sub = second_order_buffer(params, loss_curvature(model, variables, x[:n], y[:n]),
                              batch_mean_gradient_sum(model, variables, x[:n], y[:n], batch_size=128))
    variants = {
        "second (same buffer)": top(sensitivity_scores(params, "second", buf)),
        "SM, quantile threshold": top(sensitivity_scores(params, "SM", buf), "quantile"),
        "SM without gradient term (s^2 BL)": top(sensitivity_scores(params, "SM", second_order_buffer(params, bl))),
        "earlier SM (|BL| s alpha + |w|/s)": top(earlier(
            lambda w, c: jnp.abs(c) * layer_scale(w) * 1e6 + jnp.abs(w) / layer_scale(w))),
        "earlier second (|BL|)": top(earlier(lambda w, c: jnp.abs(c))),
        f"SM on the first {n} training images": top(sensitivity_scores(params, "SM", sub)),
    }
    print(f"{config.get('model')} on {data.name}: SM mask over {len(x)} training images, "
          f"{int(ref.sum())} of {ref.size} kernel weights")
    for name, m in variants.items():
        print(f"  {name:<42} overlap {100 * (m & ref).sum() / max(ref.sum(), 1):6.2f} %  ({int(m.sum())} weights)")
    for path, w in jax.tree_util.tree_flatten_with_path(params)[0]:
        if not is_kernel(path, w):
            continue
        layer = path[0].key
        s = layer_scale(w)
        grad_part = np.abs(2 * s * np.asarray(g[layer]["kernel"]))
        curv_part = np.abs(np.asarray(s ** 2 * bl[layer]["kernel"]))
        share = np.median(grad_part / np.maximum(grad_part + curv_part, 1e-30))
        print(f"  {layer:<8} median share of |2 s G| in |s^2 BL| + |2 s G|: {100 * share:.2f} %")
    return 0


if __name__ == "__main__":
    run_main(main)
