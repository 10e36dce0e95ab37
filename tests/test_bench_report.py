"""bench.run_all's report: the generated part is replaced on every run, the hand-written notes
(from the marker line on) are carried over unchanged."""
from bench.run_all import NOTES_MARKER, compose_report


def test_notes_by_hand_survive_a_new_report():
    info = {"date": "2026-11-24", "cpu": "test"}
    first = compose_report(info, ["| `bench.a` | ok | 3 |"], ["### bench.a\n\n```\nold output\n```\n"])
    assert NOTES_MARKER not in first
    notes = f"{NOTES_MARKER}\n\n## Measured by hand\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    edited = first + "\n" + notes
    second = compose_report({"date": "2026-11-25", "cpu": "test"}, ["| `bench.a` | ok | 4 |"],
                            ["### bench.a\n\n```\nnew output\n```\n"], edited)
    assert "new output" in second and "old output" not in second and "2026-11-25" in second
    assert second.endswith(notes) and second.count(NOTES_MARKER) == 1
    # a third run keeps them again, once
    third = compose_report(info, [], [], second)
    assert third.endswith(notes) and third.count(NOTES_MARKER) == 1
