"""`wardtap --help` and `wardtap status` start without loading what they do not use.

Every command's module is imported only when that command runs (appliance.cli), and the
status command draws with rich only when it has a status to draw. A technician typing
`wardtap status` on a Pi waits for nothing else. The time itself is measured in bench/
(bench_scale.py startup), not asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

HEAVY = ("numpy", "sqlite_utils", "rich", "fastpath", "paho", "cryptography",
         "appliance.replay", "appliance.review", "appliance.outputs", "appliance.daemon")

PROBE = (
    "import contextlib, io, json, sys\n"
    "from appliance.cli import main\n"
    "out, err = io.StringIO(), io.StringIO()\n"
    "with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
    "    try:\n"
    "        code = main(sys.argv[1:])\n"
    "    except SystemExit as exc:\n"
    "        code = exc.code\n"
    "print(json.dumps({'code': code, 'out': out.getvalue(), 'err': err.getvalue(),\n"
    "                  'modules': sorted(sys.modules)}))\n"
)


def loaded(*argv: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)]


def test_help_lists_every_command_and_imports_none_of_them() -> None:
    result = loaded("--help")
    assert result["code"] == 0
    assert "replay" in result["out"] and "status" in result["out"]
    assert heavy(result["modules"]) == []


def test_status_of_a_stopped_daemon_imports_nothing_heavy(tmp_path: Path) -> None:
    for argv in (["status", "--socket", str(tmp_path / "none.sock")],
                 ["status", "--json", "--socket", str(tmp_path / "none.sock")]):
        result = loaded(*argv)
        assert result["code"] == 2
        assert "wardtap is not running" in result["err"]
        assert heavy(result["modules"]) == []


def test_a_plain_replay_does_not_load_the_store_or_numpy() -> None:
    # No --db, --syslog, --eve, --dissect: nothing reads the store or an event array.
    result = loaded("replay", str(ROOT / "tests" / "data" / "realward.pcap"), "--json")
    assert result["code"] == 0
    assert [m for m in result["modules"]
            if m.split(".")[0] in ("numpy", "sqlite_utils", "rich")] == []
