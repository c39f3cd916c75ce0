"""atheris target: the RFC 8520 MUD importer (bounded JSON, the MUD reader, the draft
policy it writes).

Any bytes as a MUD file: a MudError is the expected answer to bad input. A profile that is
read becomes a draft policy, rendered as text; that text must load as a policy (the importer
writes what `wardtap policy check` accepts), and lint and compile must cope with it.

    python tests/fuzz/fuzz_mud.py CORPUS_DIR tests/fuzz/corpus/mud -runs=20000
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzzkit import instrumented, main  # noqa: E402

with instrumented("appliance"):
    from appliance.errors import PolicyError
    from appliance.policy.lint import lint
    from appliance.policy.model import compile_policy, parse_policy
    from appliance.policy.mud import MudError, parse_mud
    from appliance.policy.muddraft import device_selectors, mud_draft
    from appliance.policy.writer import render

DEVICE = device_selectors(["00:1a:2b:00:00:01"], [], ["10.4.1.10"], [])


def TestOneInput(data: bytes) -> None:  # noqa: N802  (libFuzzer's name)
    try:
        profile = parse_mud(data, "fuzz.json")
    except MudError:
        return
    try:
        draft = mud_draft(profile, DEVICE, {}, None)
    except MudError:
        return
    text = render(draft)
    policy = parse_policy(text, "fuzz-import.toml")     # must load: a bug if it raises
    lint(policy)
    try:
        compile_policy(policy)
    except PolicyError:
        pass                                            # over the table limits: said so


if __name__ == "__main__":
    main(TestOneInput)
