"""Breakdown plots: small pie slices grouped into "other", every slice named once (legend beside
the pie), one colour per slice. Hand-written rows, no model: fast."""
import numpy as np

from jaxfault.energy.analysis import BREAKDOWN_PLOTS, PIE_OTHER_BELOW, pie_slices, plot_breakdown


def test_pie_slices_group_small_ones():
    vals, labels = pie_slices([50, 30, 10, 4, 2, 2, 1, 1], list("abcdefgh"))
    assert labels[:4] == ["a", "b", "c", "d"] and labels[4].startswith("other (4")
    np.testing.assert_allclose(vals, [50, 30, 10, 4, 6])
    # a single small slice keeps its name (an "other" of one is no grouping)
    vals, labels = pie_slices([60, 39, 1], ["x", "y", "z"])
    assert labels == ["x", "y", "z"] and vals.sum() == 100
    # nothing small: unchanged
    assert pie_slices([1, 1, 1], ["p", "q", "r"])[1] == ["p", "q", "r"]
    assert PIE_OTHER_BELOW == 0.03


def test_plot_breakdown_legend_names_each_slice(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.axes

    legends = []
    real = matplotlib.axes.Axes.legend

    def spy(self, *args, **kwargs):
        if len(args) == 2:
            legends.append((list(args[1]), [w.get_facecolor() for w in args[0]]))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "legend", spy)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(21):  # ResNet-18-like: many layers, a few tiny ones
        t = {"computation": 1.0, "weights": 1.0, "inputs": 1.0, "psums": 1.0} if i % 5 == 0 else \
            {k: float(rng.uniform(5, 20)) for k in ("computation", "weights", "inputs", "psums")}
        data = t["weights"] + t["inputs"] + t["psums"]
        rows.append({"name": f"BasicBlock_{i}/Conv_0", **t, "DRAM": data / 2, "GLB": data / 4, "NoC": data / 8,
                     "RF": data / 8, "total": t["computation"] + data})
    paths = plot_breakdown(rows, tmp_path, "net")
    assert sorted(p.name for p in paths) == sorted(BREAKDOWN_PLOTS)
    assert all(p.stat().st_size > 1000 for p in paths)
    by_layer = next(names for names, _ in legends if any(n.startswith("BasicBlock_1/") for n in names))
    assert by_layer[-1].startswith("other (5")            # the five tiny layers, grouped
    assert all("%" in n for n in by_layer)               # every legend entry carries its share
    colours = next(c for names, c in legends if names is by_layer)
    assert len({tuple(c) for c in colours}) == len(colours)  # no two slices share a colour
