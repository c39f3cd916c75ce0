"""Hostile files from outside, through the real command line: a policy, a daemon
configuration, a MUD file, a provisioning file and a pin map that are nested thousands deep,
carry thousand-part dotted keys, NaN, NUL bytes or are far too large each end in one clear
error line and exit 2, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_wardtap

DEEP_TOML = "[policy]\nname = 'deep'\nx = " + "[" * 3000 + "]" * 3000 + "\n"
DOTTED_TOML = "[policy]\nname = 'dotted'\n" + "a" + ".a" * 20_000 + " = 1\n"
HEADERS_TOML = "".join("[" + ".".join(["t"] * i) + "]\n" for i in range(1, 400))
INLINE_TOML = "x = " + "{a = " * 5000 + "1" + "}" * 5000 + "\n"
NAN_TOML = "[policy]\nname = 'nan'\nversion = 1\nweight = nan\n"
NUL_TOML = "[policy]\nname = 'a\0b'\n"
HUGE_TOML = "# " + "x" * (2 << 20) + "\n"

POLICY_CASES = {
    "deep-array": (DEEP_TOML, "line 3: nested more than 32 levels deep"),
    "dotted-key": (DOTTED_TOML, "line 3: a dotted key of more than 32 parts"),
    "deep-headers": (HEADERS_TOML, "a dotted key of more than 32 parts"),
    "deep-inline-table": (INLINE_TOML, "line 1: nested more than 32 levels deep"),
    "nan": (NAN_TOML, "line 4: 'nan' is not a finite number"),
    "nul-byte": (NUL_TOML, "TOML syntax"),
    "huge": (HUGE_TOML, "more than the 1,048,576 bytes allowed for a policy file"),
    "empty": ("", "the policy is empty"),
}


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize("case", list(POLICY_CASES))
def test_hostile_policy_files(tmp_path: Path, case: str) -> None:
    text, message = POLICY_CASES[case]
    path = tmp_path / "policy.toml"
    path.write_text(text)
    more = (("policy", "diff", str(path), str(path)), ("policy", "test", str(path), str(path)))
    for args in (("policy", "check", str(path)), *(more if case == "deep-array" else ())):
        result = run_wardtap(*args, timeout=60)
        assert result.returncode == 2, (args, result.stderr)
        line = _one_line(result)
        assert line.startswith(f"wardtap: error: {path}") and message in line, line


@pytest.mark.parametrize("text, message", [
    (DEEP_TOML.replace("[policy]", "[appliance]"), "nested more than 32 levels deep"),
    (DOTTED_TOML.replace("[policy]", "[appliance]"), "a dotted key of more than 32 parts"),
    ('[datapath]\ntype = "inline"\nbridge = "br0"\nstall_ms = nan\n',
     "line 4: 'nan' is not a finite number"),
    ("[appliance]\n" + "# " + "x" * (300 << 10),
     "more than the 262,144 bytes allowed for a configuration file"),
], ids=["deep", "dotted-key", "nan", "oversized"])
def test_hostile_daemon_configuration(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "wardtap.toml"
    path.write_text(text)
    result = run_wardtap("run", "--config", str(path), timeout=60)
    assert result.returncode == 2
    assert message in _one_line(result)


@pytest.mark.parametrize("data, message", [
    (b'{"ietf-mud:mud": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested more than 64"),
    (b'{"ietf-mud:mud": {"mud-version": NaN}}', "NaN is not a finite number"),
    (b'{"ietf-mud:mud": {}, "ietf-mud:mud": {}}', "appears twice"),
    (b"\xff\xfe{}", "not UTF-8 text"),
    (b" " * (2 << 20), "more than the 1,048,576 bytes allowed for a MUD file"),
    (b'{"ietf-mud:mud": {"mud-version": 1, "mud-url": "https://[pump.example/x"}}',
     "ietf-mud:mud.mud-url: 'https://[pump.example/x' is not a URL"),    # found by fuzzing
], ids=["deep", "nan", "duplicate-key", "not-utf8", "oversized", "bad-url"])
def test_hostile_mud_files(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "device.mud.json"
    path.write_bytes(data)
    result = run_wardtap("policy", "import-mud", str(path), timeout=60)
    assert result.returncode == 2
    line = _one_line(result)
    assert line.startswith(f"wardtap: error: {path}: ") and message in line, line


@pytest.mark.parametrize("text, message", [
    (DEEP_TOML.replace("[policy]", "[appliance]"), "nested more than 32 levels deep"),
    (DOTTED_TOML.replace("[policy]", "[appliance]"), "a dotted key of more than 32 parts"),
], ids=["deep", "dotted-key"])
def test_hostile_provisioning_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "wardtap-provision.toml"
    path.write_text(text)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "appliance.system.provision", "check",
                             str(path)], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert message in _one_line(result)


def test_hostile_pin_map(tmp_path: Path) -> None:
    path = tmp_path / "pinmap.toml"
    path.write_text("schema = 1\nleds = " + "[" * 5000 + "]" * 5000 + "\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), WARDTAP_PINMAP=str(path))
    code = ("from appliance.panel.pins import load_pinmap\n"
            "from appliance.errors import WardtapError\n"
            "try:\n    load_pinmap()\nexcept WardtapError as exc:\n    print(exc)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert "nested more than 32 levels deep" in result.stdout


def test_replay_refuses_a_rule_less_policy_for_enforce(tmp_path: Path) -> None:
    from demoward.ward import write_demo_ward

    write_demo_ward(str(tmp_path / "ward.pcap"), packets=1000)
    policy = tmp_path / "p.toml"
    policy.write_text("[policy]\nname = 'nothing'\n")
    result = run_wardtap("replay", str(tmp_path / "ward.pcap"), "--policy", str(policy),
                         "--mode", "enforce", timeout=60)
    assert result.returncode == 2
    assert "no [[rules]]: in enforce mode it would deny every conversation" in \
        _one_line(result)
    learn = run_wardtap("replay", str(tmp_path / "ward.pcap"), "--policy", str(policy),
                        "--mode", "learn", "--json", timeout=60)
    assert learn.returncode == 0 and json.loads(learn.stdout)["packets"] == 1000


def test_a_mud_file_with_control_characters_imports_as_a_valid_policy(tmp_path: Path) -> None:
    """Found by fuzzing: DEL and ESC in a MUD file's text ended up raw in the policy's
    comments and strings, which TOML forbids; now they are escapes and the policy loads."""
    text = (ROOT / "tests" / "data" / "infusion-pump.mud.json").read_text()
    mud = tmp_path / "pump.json"
    mud.write_text(text.replace("urn:ietf:params:mud:dns",
                                "urn:ietf:pa\\u007frams:mud:dns\\u001b[2J"))
    out = tmp_path / "imported.toml"
    result = run_wardtap("policy", "import-mud", str(mud), "-o", str(out), timeout=60)
    assert result.returncode == 0, result.stderr
    written = out.read_text()
    assert "\x7f" not in written and "\x1b" not in written and "\\x7f" in written
    check = run_wardtap("policy", "check", str(out), timeout=60)
    assert check.returncode == 0, check.stderr
