"""The fuzz harness: what every target shares, and how one is run.

A target is one small file, `tests/fuzz/fuzz_<name>.py`: it imports what it fuzzes inside
`instrumented(...)` (so libFuzzer sees Python branch coverage), defines
`TestOneInput(data: bytes)` that raises only on a real bug (a crash, a wrong answer), and
ends with `main(TestOneInput)`. Its seed corpus is `tests/fuzz/corpus/<name>/` (any files).
`bench/bench_fuzz.py` runs every target for a stated time; `tests/fuzz/test_fuzz_targets.py`
runs each briefly as part of the suite; both find targets by that file name, so adding one
needs nothing else.

An input taking more than HANG_S seconds counts as a hang (libFuzzer's -timeout), which is a
failure like a crash: everything from outside must be handled in time linear in its size.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FUZZ_DIR = ROOT / "tests" / "fuzz"
CORPUS_DIR = FUZZ_DIR / "corpus"
HANG_S = 1
MAX_LEN = 64 * 1024


def targets() -> dict[str, Path]:
    """name -> target file, for every tests/fuzz/fuzz_<name>.py."""
    return {p.stem.removeprefix("fuzz_"): p for p in sorted(FUZZ_DIR.glob("fuzz_*.py"))}


def instrumented(*modules: str) -> contextlib.AbstractContextManager[Any]:
    """Import these packages with atheris's coverage instrumentation (inside a `with`)."""
    import atheris

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return atheris.instrument_imports(include=list(modules))


def main(test_one_input: Callable[[bytes], None]) -> None:
    """Run a target under libFuzzer with the command line's options."""
    import atheris

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


@dataclass
class Run:
    """What one libFuzzer run of a target did."""

    name: str
    returncode: int
    executions: int
    seconds: float
    crashes: list[str] = field(default_factory=list)    # artifact files: crash-, timeout-, oom-
    tail: str = ""

    @property
    def clean(self) -> bool:
        return self.returncode == 0 and not self.crashes


_EXECS = re.compile(r"stat::number_of_executed_units:\s*(\d+)")
_TIME = re.compile(r"Done (\d+) runs in (\d+) second")


def run(name: str, *, seconds: float | None = None, runs: int | None = None,
        workdir: Path | None = None, seed: int = 1, nice: int = 0,
        extra: tuple[str, ...] = ()) -> Run:
    """Run target `name` for `seconds` or `runs`, new inputs in a scratch corpus (the seed
    corpus is read, never written); artifacts go to `workdir`."""
    path = targets()[name]
    with _scratch(workdir) as work:
        corpus = work / f"corpus-{name}"
        corpus.mkdir(parents=True, exist_ok=True)
        seeds = CORPUS_DIR / name
        cmd = [sys.executable, str(path), str(corpus), *([str(seeds)] if seeds.is_dir() else []),
               f"-timeout={HANG_S}", f"-max_len={MAX_LEN}", f"-seed={seed}",
               "-print_final_stats=1", "-rss_limit_mb=2048",
               f"-artifact_prefix={work}/{name}-", *extra]
        if seconds is not None:
            cmd.append(f"-max_total_time={max(1, int(seconds))}")
        if runs is not None:
            cmd.append(f"-runs={runs}")
        if nice:
            cmd = ["nice", "-n", str(nice), *cmd]
        budget = (seconds or 0) + 120 + (runs or 0) / 50
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work, timeout=budget)
        out = proc.stdout + proc.stderr
        execs = _EXECS.search(out)
        took = _TIME.search(out)
        crashes = sorted(str(p) for p in work.glob(f"{name}-*")
                         if p.name.split("-", 1)[1].startswith(("crash", "timeout", "oom",
                                                                 "leak")))
        return Run(name, proc.returncode, int(execs.group(1)) if execs else 0,
                   float(took.group(2)) if took else 0.0, crashes,
                   "\n".join(out.splitlines()[-40:]))


@contextlib.contextmanager
def _scratch(workdir: Path | None) -> Iterator[Path]:
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        yield workdir
        return
    with tempfile.TemporaryDirectory(prefix="wardtap-fuzz-") as tmp:
        yield Path(tmp)
