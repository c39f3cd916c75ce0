"""Every mistake gets a sentence: all `wardtap` subcommands walked with bad values.

tests/cliwalk.py builds the cases from the parsers themselves (every option that takes a
value, every positional, each given a list of wrong-for-most values) plus the issue's own
examples, and runs them in two processes of their own. No case may end in a traceback
(an exception out of main(), or main()'s "internal error" line for one), a failing case
says so in exactly one `wardtap: error:` line, and the named cases say what went wrong.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

SHARDS = 2


def test_no_traceback_from_any_subcommand_with_bad_values(tmp_path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, str(ROOT / "tests" / "cliwalk.py"),
                               str(tmp_path / f"walk{n}"), f"{n}/{SHARDS}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=ROOT) for n in range(SHARDS)]
    results, named = [], {}
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
        doc = json.loads(out)
        results += doc["results"]
        named = {int(k): v for k, v in doc["named"].items()}
    print(f"{len(results)} cases walked")
    assert len(results) > 1500
    tracebacks = [r for r in results if r["error"] or "Traceback" in r["stderr"]
                  or "internal error" in r["stderr"]]
    assert not tracebacks, "\n".join(
        f"{' '.join(r['argv'])}: {r['error'] or r['stderr'][-300:]}" for r in tracebacks[:20])
    unclear = [r for r in results if r["code"] not in (0, None) and sum(
        line.startswith("wardtap: error: ") for line in r["stderr"].splitlines()) != 1
        and not (r["argv"][:2] == ["integrity", "verify"] and r["code"] == 1
                 and "MANIFEST" not in r["stderr"])]
    assert not unclear, "\n".join(f"{' '.join(r['argv'])} -> {r['code']}: {r['stderr'][:300]!r}"
                                  for r in unclear[:20])
    by_case = {r["n"]: r for r in results}
    for n, needle in named.items():
        r = by_case[n]
        assert r["code"] == 2 and needle in r["stderr"], (r["argv"], r["stderr"])
