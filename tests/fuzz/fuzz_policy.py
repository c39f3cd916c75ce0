"""atheris target: the policy loader (bounded TOML, validation, lint, compile).

Any bytes: decoded as UTF-8 (errors replaced, as a file that is not UTF-8 is refused before
this), parsed, validated, linted and compiled. A PolicyError is the expected answer to bad
input; anything else (RecursionError, KeyError, ...) or an input taking over a second is a
bug. A policy that loads must survive its own rendering: lint and compile run on it.

    python tests/fuzz/fuzz_policy.py CORPUS_DIR tests/fuzz/corpus/policy -runs=20000
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzzkit import instrumented, main  # noqa: E402

with instrumented("appliance", "tomllib"):
    from appliance.errors import PolicyError
    from appliance.policy.lint import lint
    from appliance.policy.model import check_usable, compile_policy, parse_policy


def TestOneInput(data: bytes) -> None:  # noqa: N802  (libFuzzer's name)
    text = data.decode("utf-8", "replace")
    try:
        policy = parse_policy(text, "fuzz.toml")
    except PolicyError:
        return
    for finding in lint(policy):
        assert finding.code and finding.message, finding
    try:
        check_usable(policy, "enforce")
    except PolicyError:
        pass
    try:
        compiled = compile_policy(policy)
    except PolicyError:
        return
    assert compiled is not None


if __name__ == "__main__":
    main(TestOneInput)
