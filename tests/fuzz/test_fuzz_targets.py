"""Every fuzz target (tests/fuzz/fuzz_*.py) runs briefly from its seed corpus: no crash,
no input over a second. The long runs are bench/bench_fuzz.py."""

from __future__ import annotations

import pytest
from fuzzkit import run, targets

# the decoder's target is run by tests/fastpath/test_fuzz.py with its own seeds and checks
SHORT_RUNS = {"decode": 0}
DEFAULT_RUNS = 1500


@pytest.mark.parametrize("name", [n for n in targets() if SHORT_RUNS.get(n, 1)])
def test_target_runs_clean(name: str) -> None:
    result = run(name, runs=SHORT_RUNS.get(name, DEFAULT_RUNS), seed=1)
    assert result.clean, f"{name} failed (exit {result.returncode}, {result.crashes}):\n" \
                         f"{result.tail}"
    assert result.executions >= SHORT_RUNS.get(name, DEFAULT_RUNS)
