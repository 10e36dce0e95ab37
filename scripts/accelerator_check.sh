#!/usr/bin/env bash
# Check jaxfault on a machine with an accelerator: the default test suite (parallel-safe on one
# GPU), every benchmark in bench/ and the main job, written to one markdown report
# (default bench/accelerator_report_<device>_<date>.md). Exit code non-zero if any step failed.
#
#   bash scripts/accelerator_check.sh [--quick] [--report FILE] [--only tests,bench,main] [--workers N]
#
# --quick runs a small subset (also on a CPU). All the logic is in bench/accelerator_check.py;
# set PYTHON to choose the interpreter (default: python3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec "${PYTHON:-python3}" -m bench.accelerator_check "$@"
