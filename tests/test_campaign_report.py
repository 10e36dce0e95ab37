"""Campaign tables and plot labels: every value printed in full (floats in %g form), columns as
wide as their longest entry. No model, no JAX computation: records are written by hand."""
import numpy as np

from jaxfault.campaign.report import format_table, format_value, plot_records, point_label
from jaxfault.core.stats import mean_ci


def record(method, acc=0.8951, rate=1.2e-3, **fields):
    return {"config": {"method": method, **fields}, "accuracy_mean": acc, "accuracy_std": 0.0123,
            "accuracy_min": acc - 0.05, "fault_rate_mean": rate, "accuracy": [acc - 0.01, acc, acc + 0.01]}


def test_format_value_never_cuts_numbers():
    assert format_value(0.01) == "0.01"
    assert format_value(1e-5) == "1e-05"
    assert format_value(0.1 + 0.2) == "0.3"
    assert format_value(np.float32(0.03)) == "0.03"
    assert format_value(np.int64(64)) == "64"
    assert format_value(True) == "True"
    assert format_value([1e-4, 0.5]) == "[0.0001,0.5]"
    assert format_value("memory_array") == "memory_array"


def test_table_prints_every_field_in_full_and_aligned():
    recs = [record("sparrow", scheme="sparrow", ber=1e-05, zero_to_one=0.01, block_size=64),
            record("neuralfuse", ber=0.0123456, ber0=0.5, bits=8, placement="memory_array"),
            record("my-long-fault-model-name", dev_var=np.float32(0.3), write_var=0.03, mask_p=0.05)]
    table = format_table(recs)
    lines = table.splitlines()
    assert len(lines) == 4
    for token in ("scheme=sparrow", "ber=1e-05", "zero_to_one=0.01", "block_size=64", "ber=0.0123456",
                  "placement=memory_array", "dev_var=0.3", "write_var=0.03", "mask_p=0.05",
                  "my-long-fault-model-name"):
        assert token in table, token
    # every key=value pair reads back as the number it stands for
    for r, line in zip(recs, lines[1:]):
        for k, v in r["config"].items():
            if k != "method" and not isinstance(v, str):
                assert f"{k}={format_value(v)}" in line
                assert np.isclose(float(format_value(v)), float(v), rtol=1e-6)
    # the accuracy column sits under its header on every row: no label pushed it along
    end = lines[0].index("acc mean") + len("acc mean")
    for r, line in zip(recs, lines[1:]):
        assert line[end - 6:end] == f"{r['accuracy_mean']:.4f}"
    assert len({len(line) for line in lines}) == 1, "rows of different widths: a column was not padded"
    assert "1.200e-03" in lines[1]
    # every accuracy carries its interval (computed from the trials when the record has none) and trial count
    lo, hi = mean_ci(recs[0]["accuracy"])
    assert f"[{lo:.4f}, {hi:.4f}]" in lines[1] and " 3 " in lines[1]
    stored = {**recs[0], "accuracy_summary": {"ci_lo": 0.5, "ci_hi": 0.9, "n": 40}, "stop": "width"}
    assert "[0.5000, 0.9000]" in format_table([stored]) and "40 (width)" in format_table([stored])


def test_point_label_skips_method():
    assert point_label({"method": "sparrow", "ber": 0.001, "scheme": "none"}) == "ber=0.001, scheme=none"


def test_plot_labels_use_the_same_formatting(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.axes

    labels = []
    real = matplotlib.axes.Axes.errorbar

    yerrs = []

    def spy(self, *args, **kwargs):
        labels.append(kwargs.get("label"))
        yerrs.append(kwargs.get("yerr"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy)
    recs = [record("swim", dev_var=d, write_var=0.1 + 0.2, mask_p=m, selection="magnitude")
            for d in (0.1, 0.3) for m in (0.01, 0.05)]
    recs += [record("swim", dev_var=d, write_var=0.03, mask_p=0.05, selection="magnitude") for d in (0.1, 0.3)]
    plot_records(recs, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000
    assert all("0.30000000000000004" not in lab for lab in labels)
    assert "mask_p=0.01 write_var=0.3" in labels and "mask_p=0.05 write_var=0.03" in labels
    # the error bars are the mean's interval (asymmetric), not the std
    lo, hi = mean_ci(recs[0]["accuracy"])
    assert any(np.allclose(np.asarray(e)[:, 0], [100 * (0.8951 - lo), 100 * (hi - 0.8951)]) for e in yerrs)
