"""Device classes from readable rules: appliance/data/device-classes.toml.

A device's evidence is a mapping key -> values (see appliance.inventory.devices). Each rule names a
class, a score and conditions; a rule matches when all its conditions match, a condition when
any of the device's values for its key matches any of its patterns (case-insensitive shell
patterns). Scores of one class combine as independent observations (1 - prod(1 - s)).

`ClassRules.decide` picks the class with hysteresis: a device keeps its class until another
class leads by `switch_margin`; the best score of the other classes lowers the confidence
instead of flipping the class. Every decision carries the rules and evidence behind it.
"""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance.common.tomlfile import TomlLines
from appliance.errors import WardtapError

RULES_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data",
                          "device-classes.toml")
UNKNOWN = "unknown"


class ClassRulesError(WardtapError):
    """The device-class rule file is not valid."""


@dataclass(frozen=True)
class Rule:
    name: str
    cls: str
    score: float
    conditions: tuple[tuple[str, tuple[re.Pattern[str], ...], tuple[str, ...]], ...]
    unless: tuple[tuple[str, tuple[re.Pattern[str], ...], tuple[str, ...]], ...] = ()

    @property
    def maker_only(self) -> bool:
        """The rule says only who made the device (its MAC's vendor)."""
        return len(self.conditions) == 1 and self.conditions[0][0] == "vendor"

    def match(self, facts: Mapping[str, Iterable[str]]) -> list[tuple[str, str]] | None:
        """The (key, value) pairs that satisfied every condition, or None."""
        hits: list[tuple[str, str]] = []
        for key, patterns, _ in self.conditions:
            value = _first_match(facts.get(key, ()), patterns)
            if value is None:
                return None
            hits.append((key, value))
        for key, patterns, _ in self.unless:
            if _first_match(facts.get(key, ()), patterns) is not None:
                return None
        return hits


def _first_match(values: Iterable[str], patterns: tuple[re.Pattern[str], ...]) -> str | None:
    for value in values:
        low = value.lower()
        for pattern in patterns:
            if pattern.fullmatch(low):
                return value
    return None


@dataclass
class Decision:
    cls: str
    confidence: float
    score: float
    scores: dict[str, float]
    matched: list[dict[str, Any]] = field(default_factory=list)   # rules of the chosen class
    contradicting: list[dict[str, Any]] = field(default_factory=list)
    kept: bool = False          # hysteresis kept the previous class against a higher score
    roles: list[str] = field(default_factory=list)   # server roles that scored


class ClassRules:
    """The parsed rule file."""

    def __init__(self, rules: list[Rule], classes: dict[str, str],
                 unknown_below: float = 0.4, switch_margin: float = 0.25,
                 contradiction: float = 0.5, path: str = RULES_PATH,
                 server_classes: frozenset[str] = frozenset(),
                 doc: dict[str, Any] | None = None) -> None:
        self.rules = rules
        self.classes = classes
        self.unknown_below = unknown_below
        self.switch_margin = switch_margin
        self.contradiction = contradiction
        self.path = path
        # roles one machine often has together (DHCP and DNS on one server): they never
        # contradict each other, and every one that scores is listed as a role
        self.server_classes = server_classes
        self.doc = doc or {}           # the whole file: [[models]], [makers], [dataflows]

    @classmethod
    def load(cls, path: str | None = None) -> ClassRules:
        """The rule file at `path`, else $WARDTAP_CLASSES, else the one shipped with wardtap."""
        path = path or os.environ.get("WARDTAP_CLASSES") or RULES_PATH
        try:
            with open(path, "rb") as fh:
                text = fh.read().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ClassRulesError(f"{path}: cannot read: {exc}") from None
        return parse_rules(text, path)

    def scores(self, facts: Mapping[str, Iterable[str]]
               ) -> tuple[dict[str, float], dict[str, list[dict[str, Any]]]]:
        keep: dict[str, float] = {}
        matched: dict[str, list[dict[str, Any]]] = {}
        found = [(rule, hits) for rule in self.rules
                 if (hits := rule.match(facts)) is not None]
        # a maker that builds several kinds of device says little about any one of them:
        # its MAC rules count 1/n each when they match n classes
        maker_classes = {rule.cls for rule, _ in found if rule.maker_only}
        for rule, hits in found:
            score = rule.score / len(maker_classes) if rule.maker_only else rule.score
            keep[rule.cls] = keep.get(rule.cls, 1.0) * (1.0 - score)
            matched.setdefault(rule.cls, []).append(
                {"rule": rule.name, "score": round(score, 4),
                 "evidence": [{"key": k, "value": v} for k, v in hits]})
        return {c: round(1.0 - k, 4) for c, k in keep.items()}, matched

    def decide(self, facts: Mapping[str, Iterable[str]], current: str | None = None
               ) -> Decision:
        scores, matched = self.scores(facts)
        best = max(scores, key=lambda c: (scores[c], c), default=UNKNOWN)
        best_score = scores.get(best, 0.0)
        chosen = best if best_score >= self.unknown_below else UNKNOWN
        kept = False
        if current and current != UNKNOWN and current != chosen:
            cur_score = scores.get(current, 0.0)
            if cur_score >= self.unknown_below and best_score - cur_score < self.switch_margin:
                chosen, kept = current, True
        if chosen == UNKNOWN:
            return Decision(UNKNOWN, 0.0, 0.0, scores,
                            contradicting=[m for ms in matched.values() for m in ms],
                            roles=self.roles(scores))
        score = scores[chosen]
        allies = self.server_classes if chosen in self.server_classes else frozenset()
        rival = max((s for c, s in scores.items() if c != chosen and c not in allies),
                    default=0.0)
        confidence = round(score * (1.0 - self.contradiction * rival), 3)
        return Decision(chosen, confidence, score, scores, matched.get(chosen, []),
                        [m for c, ms in matched.items() if c != chosen and c not in allies
                         for m in ms], kept, self.roles(scores))

    def roles(self, scores: Mapping[str, float]) -> list[str]:
        """Every server role that scores at least `unknown_below`, best first."""
        return sorted((c for c, s in scores.items()
                       if c in self.server_classes and s >= self.unknown_below),
                      key=lambda c: (-scores[c], c))


def parse_rules(text: str, path: str = RULES_PATH) -> ClassRules:
    lines = TomlLines(text)

    def fail(message: str, line: int | None) -> ClassRulesError:
        return ClassRulesError(f"{path}{':' + str(line) if line else ''}: {message}")

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise fail(f"TOML syntax: {exc}", None) from None
    settings = doc.get("settings", {})
    classes = doc.get("classes", {})
    lists = doc.get("lists", {})
    if not isinstance(classes, dict) or not classes:
        raise fail("[classes] must list the classes", lines.table("[classes]"))
    if UNKNOWN not in classes:
        raise fail(f'[classes] must include "{UNKNOWN}"', lines.table("[classes]"))
    rules: list[Rule] = []
    names: set[str] = set()
    for nth, spec in enumerate(doc.get("rules", [])):
        line = lines.table("[[rules]]", nth)
        if not isinstance(spec, dict):
            raise fail("a rule must be a table", line)
        name = spec.get("name")
        cls = spec.get("class")
        score = spec.get("score")
        if not isinstance(name, str) or not name or name in names:
            raise fail("every rule needs a unique name", line)
        names.add(name)
        if cls not in classes or cls == UNKNOWN:
            raise fail(f"rule {name!r}: class {cls!r} is not one of [classes] "
                       f"({', '.join(c for c in classes if c != UNKNOWN)})", line)
        if not isinstance(score, int | float) or isinstance(score, bool) or not 0 < score < 1:
            raise fail(f"rule {name!r}: score must be a number between 0 and 1", line)
        conditions = _conditions({k: v for k, v in spec.items()
                                  if k not in ("name", "class", "score", "unless")},
                                 lists, name, line, fail)
        if not conditions:
            raise fail(f"rule {name!r} has no conditions", line)
        unless_spec = spec.get("unless", {})
        if not isinstance(unless_spec, dict):
            raise fail(f"rule {name!r}: unless must be a table of conditions", line)
        unless = _conditions(unless_spec, lists, name, line, fail)
        rules.append(Rule(name, str(cls), float(score), conditions, unless))
    rules += _model_rules(doc, lists, classes, lines, fail)
    servers = settings.get("server_classes", [])
    if not isinstance(servers, list) or any(c not in classes for c in servers):
        raise fail("settings.server_classes must list classes of [classes]",
                   lines.table("[settings]"))
    return ClassRules(rules, {str(k): str(v) for k, v in classes.items()},
                      float(settings.get("unknown_below", 0.4)),
                      float(settings.get("switch_margin", 0.25)),
                      float(settings.get("contradiction", 0.5)), path,
                      frozenset(str(c) for c in servers), doc)


MODEL_FIELDS = ("make", "model", "class", "score", "match", "version", "advisory_products",
                "cpe", "note")


def _model_rules(doc: dict[str, Any], lists: dict[str, Any], classes: dict[str, Any],
                 lines: TomlLines, fail: Any) -> list[Rule]:
    """A [[models]] entry that names a class is also a rule: the model says what it is."""
    out: list[Rule] = []
    for nth, spec in enumerate(doc.get("models", [])):
        line = lines.table("[[models]]", nth)
        if not isinstance(spec, dict) or not isinstance(spec.get("make"), str) \
                or not isinstance(spec.get("model"), str):
            raise fail("a model needs make and model (strings)", line)
        unknown = set(spec) - set(MODEL_FIELDS)
        if unknown:
            raise fail(f"model {spec['model']!r}: unknown field(s) {', '.join(sorted(unknown))}"
                       f" (allowed: {', '.join(MODEL_FIELDS)})", line)
        match = spec.get("match")
        if not isinstance(match, dict) or not match:
            raise fail(f"model {spec['model']!r}: match must map evidence keys to patterns",
                       line)
        conditions = _conditions(match, lists, spec["model"], line, fail)
        for key, regex in (spec.get("version") or {}).items():
            try:
                re.compile(str(regex))
            except re.error as exc:
                raise fail(f"model {spec['model']!r}: version for {key} is not a valid "
                           f"regular expression: {exc}", line) from None
        cls = spec.get("class")
        if cls is None:
            continue
        score = spec.get("score", 0.9)
        if cls not in classes or cls == UNKNOWN:
            raise fail(f"model {spec['model']!r}: class {cls!r} is not one of [classes]", line)
        if not isinstance(score, int | float) or isinstance(score, bool) or not 0 < score < 1:
            raise fail(f"model {spec['model']!r}: score must be a number between 0 and 1",
                       line)
        for cond in conditions:          # any of the listed keys identifies the model
            out.append(Rule(f"model {spec['make']} {spec['model']} ({cond[0]})", str(cls),
                            float(score), (cond,)))
    return out


def _conditions(spec: dict[str, Any], lists: dict[str, Any], name: str, line: int | None,
                fail: Any) -> tuple[tuple[str, tuple[re.Pattern[str], ...], tuple[str, ...]],
                                    ...]:
    out = []
    for key, raw in spec.items():
        values = raw if isinstance(raw, list) else [raw]
        patterns: list[str] = []
        for value in values:
            if not isinstance(value, str) or not value:
                raise fail(f"rule {name!r}: {key} must list strings", line)
            if value.startswith("@"):
                named = lists.get(value[1:])
                if not isinstance(named, list):
                    raise fail(f"rule {name!r}: no list {value[1:]!r} in [lists]", line)
                patterns += [str(v) for v in named]
            else:
                patterns.append(value)
        compiled = tuple(re.compile(fnmatch.translate(p.lower()), re.S) for p in patterns)
        out.append((str(key), compiled, tuple(patterns)))
    return tuple(out)
