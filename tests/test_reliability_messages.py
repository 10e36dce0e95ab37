"""What a newcomer reads: the run's time left, headline figures with their labels and units, usage
lines that work where they are shown, and charts that show every point (issue 26, items 4-4d)."""
import io

import numpy as np
import pytest

from jaxfault.core.progress import LogProgress, RunClock


class FakeTime:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_log_progress_gives_the_run_eta_early_and_then_periodically():
    out = io.StringIO()
    bar = LogProgress(total=100, desc="training", unit="step", file=out, interval=30.0, first=5.0)
    clock = FakeTime()
    bar._time, bar.t0, bar.next_at = clock, clock.now, clock.now + 5.0
    clock.now += 2
    bar.update(10)                                   # before the first line's time: silent
    clock.now += 3
    bar.update(10)                                   # 20 steps in 5 s: 80 left at 4 steps/s
    lines = out.getvalue().splitlines()
    assert lines[0] == "training: 0/100 step" and len(lines) == 2
    assert "20/100 step" in lines[1] and "ETA 20 s" in lines[1]
    clock.now += 10
    bar.update(10)                                   # within 30 s of the last line: silent
    assert len(out.getvalue().splitlines()) == 2
    clock.now += 20
    bar.update(10)
    assert "40/100" in out.getvalue().splitlines()[-1]
    bar.close()
    assert out.getvalue().splitlines()[-1].endswith("done")


def test_run_clock_reports_the_time_left_of_the_whole_run():
    clock = RunClock(4, "schemes")
    t = FakeTime()
    clock._time, clock.t0 = t, t.now
    t.now += 10
    assert clock.done() == " (1/4 schemes, 10 s elapsed, about 30 s left)"
    t.now += 100
    clock.exclude(90)                                # a phase of another kind is left out of the rate
    assert clock.done() == " (2/4 schemes, 20 s elapsed, about 20 s left)"
    t.now += 20
    clock.done(2)
    assert clock.left() == 0.0


def test_training_shows_one_progress_for_all_epochs(monkeypatch):
    """The bar (or log lines) of a classifier's training spans every epoch, so its ETA is the run's."""
    import jax

    import jaxfault.training as training
    from jaxfault.data import Dataset
    from jaxfault.models import create_model

    made = []
    real = training.progress

    def spy(*a, **k):
        made.append(k)
        return real(*a, **{**k, "disable": True})

    monkeypatch.setattr(training, "progress", spy)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (48, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, 48).astype(np.int32)
    ds = Dataset(name="synthetic", train_images=x, train_labels=y, test_images=x[:16], test_labels=y[:16],
                 num_classes=10, value_range="symmetric", source="synthetic")
    training.train_classifier(create_model("lenet", 10), ds, epochs=2, batch_size=16, key=jax.random.key(0),
                              log=lambda s: None)
    assert len(made) == 1 and made[0]["total"] == 2 * 3 and made[0]["unit"] == "step"


def nf_report():
    ci = lambda m: {"mean": m, "ci_lo": m - 0.01, "ci_hi": m + 0.01}  # noqa: E731
    return {"generator": "UNetS", "base_model": "lenet", "dataset": "fashion_mnist", "test_images": 100, "bits": 8,
            "placement": "memory_array", "layout": "torch", "models": 10,
            "clean": {"without": 0.8957, "with": 0.9029}, "clean_drop": 0.8957 - 0.9029,
            "results": [{"ber": 0.01, "perturbed_without": ci(0.7916), "perturbed_with": ci(0.8824),
                         "recovery": 0.0908, "recovery_ci": [0.05, 0.12]}]}


def test_neuralfuse_table_speaks_in_points_and_shows_the_base_drop():
    from jaxfault.neuralfuse.evaluate import format_table

    text = format_table(nf_report())
    assert "clean top-1 %: without G 89.57, with G 90.29 (+0.72 points with G)" in text
    row = text.splitlines()[3]
    assert "79.16 [78.16, 80.16]" in row and "10.41" in row and "+9.08 [+5.00, +12.00]" in row
    assert "base drop: points of top-1 the base model loses" in text and "drop -0" not in text


def test_tradeoff_table_says_what_relative_is_relative_to():
    from jaxfault.energy.tradeoff import format_legend

    rows = [{"family": "dram", "label": "sparrow B64", "operating_point": {"ber": 1e-3}, "accuracy_mean": 0.89,
             "accuracy_ci": [0.88, 0.9], "energy": 1.09e7, "relative_energy": 1.09, "pareto": True,
             "unit": "normalised energy per inference (MAC = 1), incl. refresh"}]
    text = format_legend(rows)
    assert "relative = energy / energy of unprotected 16-bit weights refreshed every 64 ms" in text
    assert "DRAM refresh: energy in normalised energy per inference" in text


def test_energy_table_labels_both_breakdowns_and_the_unit(capsys):
    from eval import energy
    from jaxfault.cli import run_main

    with pytest.raises(SystemExit) as e:
        run_main(energy.main, ["--model", "lenet", "--no-compile-cache"])     # --model names --network too
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "|-- by data type --|" in out and "|-- by memory level --|" in out
    assert "normalised so that one 16-bit MAC costs 1" in out and "lenet on input 28,28,1" in out


def test_usage_names_the_command_it_was_run_as(monkeypatch, capsys):
    from eval import sparrow

    monkeypatch.setattr("sys.argv", ["jaxfault sparrow", "--help"])
    assert sparrow.build_parser().format_usage().startswith("usage: jaxfault sparrow")
    monkeypatch.setattr("sys.argv", ["python -m eval.sparrow"])
    help_text = sparrow.build_parser().format_help()
    assert "usage: python -m eval.sparrow" in help_text
    flag = help_text[help_text.index("  --no-compile-cache"):][:200]
    assert "by default the cache is on" in " ".join(flag.split()) and "(default: off)" not in flag


def test_plan_chart_shows_every_configuration():
    from jaxfault.plan.report import score_axis

    confs = [{"score": {"mean": m, "p5": p}} for m, p in ((0.9, 0.89), (0.46, 0.068), (0.89, 0.88))]
    lo, hi = score_axis({"task": "classification", "configurations": confs})
    assert lo <= 6.8 - 1 + 1e-9 and hi >= 90
    # a language model's axis is perplexity: the lowest median at the bottom, collapsed ones capped
    lm = [{"score": {"median": 1 / 5.6, "p5": 1 / 6.0}}, {"score": {"median": 0.0, "p5": 0.0}},
          {"score": {"median": 1 / 77.0, "p5": 1 / 80.0}}]
    lo, hi = score_axis({"task": "language_model", "clean_score": 1 / 5.5, "configurations": lm})
    assert lo <= 5.6 and 16.5 <= hi <= 1.05 * 16.5 + 1e-9
