"""atheris target: the fleet command verifier and the command table.

Byte 0 picks how the rest is used: even, as the raw MQTT payload (envelope, signature, JSON
bounds); odd, as the body of a request that this target signs with its own fixed test key, so
the checks behind a valid signature (version, target, seq, issued/expires, arguments) are
reached too. `Rejected` is the expected answer; an accepted command must carry finite times
and valid arguments, and the daemon's command table must answer it without raising.

    python tests/fuzz/fuzz_command.py CORPUS_DIR tests/fuzz/corpus/command -runs=20000
"""

from __future__ import annotations

import contextlib
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzzkit import instrumented, main  # noqa: E402

with instrumented("appliance"):
    from appliance.contract.commands import COMMANDS, CommandProcessor, Rejected
    from appliance.contract.signing import Verifier, sign
    from appliance.daemon.commands import Pending, dispatch

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

NOW = 1_800_000_000.0
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))    # a test key, nothing else


class _Accepting:
    def accept_seq(self, seq: int) -> int | None:
        return None


class _Daemon:
    """The DaemonControl a handler sees, doing nothing."""

    mode = "monitor"
    policy = None
    configured_mode = "monitor"
    policy_path = "/nonexistent/policy.toml"

    def status(self) -> dict[str, Any]:
        return {}

    def set_mode(self, mode: str) -> dict[str, Any]:
        return {"ok": mode in ("learn", "monitor", "enforce", "bypass")}

    def reload(self, strict: bool = False) -> dict[str, Any]:
        return {"ok": True}

    def push_policy(self, text: str, **flags: bool) -> dict[str, Any]:
        assert isinstance(text, str) and all(isinstance(v, bool) for v in flags.values())
        return {"ok": True}

    def propose(self) -> dict[str, Any]:
        return {"ok": True}

    def request_stop(self) -> None:
        pass

    def identify(self, seconds: float) -> dict[str, Any]:
        assert math.isfinite(seconds) and 0 < seconds <= 600, seconds
        return {"ok": True}

    def devices(self) -> list[dict[str, Any]]:
        return []

    def policy_info(self) -> None:
        return None

    def policy_file_change(self) -> contextlib.AbstractContextManager[object]:
        return contextlib.nullcontext()


PROCESSOR = CommandProcessor("st-marys", "ward4b-01", Verifier(KEY.public_key()), _Accepting(),
                             clock=lambda: NOW)
DAEMON = _Daemon()


def TestOneInput(data: bytes) -> None:  # noqa: N802  (libFuzzer's name)
    if not data:
        return
    payload = data[1:]
    if data[0] & 1:
        from appliance.common.bounded import BoundsError, load_json

        try:
            body = load_json(payload, max_bytes=1 << 16)
        except BoundsError:
            return
        if not isinstance(body, dict):
            return
        payload = sign(KEY, body)
    try:
        command = PROCESSOR.check(payload)
    except Rejected as exc:
        assert exc.reason and isinstance(exc.detail, str)
        return
    assert command.name in COMMANDS
    if command.signed:
        assert command.expires is not None and math.isfinite(command.expires)
        assert command.seq is not None and 0 < command.seq <= (NOW + 86400) * 1e6
    answer = dispatch(DAEMON, command.body())
    assert isinstance(answer, dict | Pending), answer


if __name__ == "__main__":
    main(TestOneInput)
