"""scripts/accelerator_check.sh: its quick CPU path writes one report naming the device and every
step with its exit code, and a failing step makes it exit non-zero."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "accelerator_check.sh"


def _run(args, tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)


def _step_rows(report: str) -> dict[str, str]:
    """{step name: exit code} from the report's step table."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| ([^|]+?) \| `[^`]*` \| (\S+)[^|]* \| [\d.]* \|$",
                                                         report, re.MULTILINE)}


@pytest.mark.slow
def test_quick_cpu_path_writes_one_report(tmp_path, default_cache):
    report = tmp_path / "report.md"
    res = _run(["--quick", "--report", str(report)], tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "no accelerator found" in res.stdout
    text = report.read_text()
    assert "| device kind | cpu |" in text and "| platform | cpu |" in text
    assert re.search(r"\| jax / jaxlib \| \d+\.\d+", text) and "| git commit |" in text and "| date | 20" in text
    assert "no accelerator was found" in text
    rows = _step_rows(text)
    assert rows == {"tests": "0", "bench.energy": "0", "main job": "0"}, text
    assert "passed: all 3 steps exited with 0" in text
    assert "python -m eval.sparrow --ber 1e-3 --out" in text and "--limit 200 --trials 2" in text
    assert "wrote " in text  # the main job's output tail
    out = re.search(r"--ber 1e-3 --out (\S+)", text).group(1)
    assert "jaxfault-accel-" in out and not Path(out).exists()  # a temporary folder, removed at the end


def test_failing_step_exits_nonzero_and_is_reported(tmp_path):
    report = tmp_path / "r.md"
    res = _run(["--report", str(report), "--step", "ok=python -c \"print('fine')\"",
                "--step", "bad=python -c \"import sys; print('boom'); sys.exit(3)\""], tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "FAILED steps: bad" in res.stderr
    text = report.read_text()
    assert _step_rows(text) == {"ok": "0", "bad": "3"}
    assert "FAILED: 1 of 2 steps" in text and "boom" in text and "fine" in text
    assert "| device kind |" in text


@pytest.mark.parametrize("args", [["--only", "tests,nope"], ["--step", "no-equals-sign"]])
def test_bad_arguments_exit_2(tmp_path, args):
    res = _run(args, tmp_path)
    assert res.returncode == 2 and "error:" in res.stderr
