"""Policy lint: valid rules that allow more than they seem to are named, with their lines;
`wardtap policy check --strict` refuses them; an empty policy is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_wardtap

from appliance.errors import PolicyError
from appliance.policy.lint import lint
from appliance.policy.model import check_usable, parse_policy
from demoward.ward import DEMO_POLICY

HEAD = '[policy]\nname = "t"\n[groups.a]\nip = ["10.1.0.0/16"]\n[groups.b]\nip = ["10.2.0.0/16"]\n'


def _codes(rules: str, head: str = HEAD) -> list[tuple[str, str, int | None]]:
    return [(f.code, f.where, f.line) for f in lint(parse_policy(head + rules, "t.toml"))]


def test_the_demo_policy_is_clean() -> None:
    assert lint(parse_policy(DEMO_POLICY)) == []


@pytest.mark.parametrize("rules, expected", [
    ('[[rules]]\nname = "r"\nfrom = "any"\nto = "any"\n',
     [("all-ports", "rules.r", 7), ("any-any", "rules.r", 7)]),
    ('[[rules]]\nname = "r"\nfrom = "a"\nto = "0.0.0.0/0"\nproto = "tcp"\nports = [443]\n',
     [("internet-wide", "rules.r", 7)]),
    ('[[rules]]\nname = "r"\nfrom = "a"\nto = "::/0"\nproto = "udp"\nports = ["1-65535"]\n',
     [("all-ports", "rules.r", 7), ("internet-wide", "rules.r", 7)]),
    ('[[rules]]\nname = "r"\nfrom = "a"\nto = "10.9.9.9/8"\nproto = "tcp"\nports = [22]\n',
     [("host-bits", "rules.r", 7)]),
    ('[[rules]]\nname = "r"\nfrom = "a"\nto = "b"\nproto = "tcp"\n',
     [("all-ports", "rules.r", 7)]),
    ('[[rules]]\nname = "r1"\nfrom = "a"\nto = "b"\nproto = "tcp"\nports = [443]\n'
     '[[rules]]\nname = "r2"\nfrom = ["a"]\nto = "b"\nproto = "tcp"\nports = ["443"]\n',
     [("duplicate", "rules.r2", 13)]),
    ('[[rules]]\nname = "wide"\nfrom = ["a", "b"]\nto = "b"\nproto = "tcp"\nports = ["1-1024"]\n'
     '[[rules]]\nname = "narrow"\nfrom = "a"\nto = "b"\nproto = "tcp"\nports = [443]\n',
     [("shadowed", "rules.narrow", 13)]),
    ('[[rules]]\nname = "one-way"\nfrom = "a"\nto = "b"\nproto = "tcp"\nports = [443]\n'
     '[[rules]]\nname = "both"\nfrom = "a"\nto = "b"\nproto = "tcp"\nports = [443]\n'
     'initiate = "either"\n',
     [("contradicts", "rules.one-way", 7)]),
    ('[[rules]]\nname = "a-to-b"\nfrom = "a"\nto = "b"\nproto = "tcp"\nports = [443]\n'
     '[[rules]]\nname = "b-to-a"\nfrom = "b"\nto = "a"\nproto = "tcp"\nports = [443]\n',
     []),                                       # different conversations: nothing to say
], ids=["any-any", "internet-v4", "internet-v6-all-ports", "host-bits", "all-ports",
        "duplicate", "shadowed", "contradicts", "distinct"])
def test_findings_name_the_rule_and_its_line(rules: str, expected: list[tuple]) -> None:
    assert _codes(rules) == expected


def test_group_findings_and_no_rules() -> None:
    head = '[policy]\nname = "t"\n[groups.w]\nip = ["10.0.0.1/8", "0.0.0.0/1"]\n'
    assert _codes("", head) == [("no-rules", "rules", None),
                                ("host-bits", "groups.w", 3), ("internet-wide", "groups.w", 3)]


def test_empty_policies_are_refused_and_rule_less_ones_need_learn_mode() -> None:
    for text in ("", "# a comment\n\n   # and another\n"):
        with pytest.raises(PolicyError, match="the policy is empty"):
            parse_policy(text, "empty.toml")
    policy = parse_policy('[policy]\nname = "nothing"\n', "nothing.toml")
    check_usable(policy, "learn")
    for mode in ("monitor", "enforce"):
        with pytest.raises(PolicyError, match=f"no \\[\\[rules\\]\\]: in {mode} mode"):
            check_usable(policy, mode)


def test_versions_and_names_are_bounded() -> None:
    with pytest.raises(PolicyError, match=r"\[policy.version\]: must be a whole number from 0"):
        parse_policy(f"[policy]\nversion = {2**63 - 1}\n")
    with pytest.raises(PolicyError, match=r"\[policy.name\]"):
        parse_policy(f'[policy]\nname = "{"n" * 200}"\n')
    assert parse_policy('[policy]\nname = "t\\u001b[2J"\n').name == "t\x1b[2J"   # as given


def test_many_rules_sharing_endpoints_stay_within_the_budget(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import appliance.policy.lint as lint_module

    rules = "".join(f'[[rules]]\nname = "r{i}"\nfrom = "any"\nto = "a"\nproto = "tcp"\n'
                    f"ports = [{i + 1}]\n" for i in range(300))
    monkeypatch.setattr(lint_module, "LINT_BUDGET", 5000)
    incomplete = [where for code, where, _ in _codes(rules) if code == "lint-incomplete"]
    assert incomplete == ["rules.r16"]          # 16 rules x 299 candidates, then it stops


def test_policy_check_warns_and_strict_refuses(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(HEAD + '[[rules]]\nname = "r"\nfrom = "any"\nto = "any"\n')
    result = run_wardtap("policy", "check", str(path))
    assert result.returncode == 0, result.stderr
    assert f"wardtap: warning: {path}:7 [rules.r] any-any: " in result.stderr
    assert "1 rules, 2 warning(s)" in result.stdout
    strict = run_wardtap("policy", "check", "--strict", str(path))
    assert strict.returncode == 2
    assert strict.stderr.splitlines()[-1] == f"wardtap: error: {path}: 2 warning(s) and --strict"


def test_policy_check_shows_a_hostile_name_escaped(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[policy]\nname = "t\\u001b[2J\\u001b[31mOK"\n[[rules]]\nfrom = "10.0.0.1"\n'
                    'to = "10.0.0.2"\nproto = "tcp"\nports = [1]\n')
    result = run_wardtap("policy", "check", str(path))
    assert result.returncode == 0 and "\x1b" not in result.stdout
    assert "t\\x1b[2J\\x1b[31mOK" in result.stdout
