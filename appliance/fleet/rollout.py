"""Policies from the console: learned vs running, the diff in words, a staged rollout.

The console keeps every policy text it has seen in `policies` (by SHA-256): the running one
and the one learned so far, both from the appliance's `propose` answer, and every one it
pushed. A rollout is a row in `rollouts` that moves through stages, each an admin's
action, each signed with the fleet key and audited:

    approved       an admin reviewed the diff and approved this exact text (its SHA-256)
    pilot-monitor  pushed to one appliance, which is put in monitor mode (alerts only)
    pilot-enforce  that appliance enforces it
    site           pushed to the rest of the site (their modes unchanged)
    rolled-back    every appliance it reached gets its previous policy (allow_rollback,
                   signed) and its previous mode back

`Commander` is the console's MQTT side: one connection kept open in the background (so the
console starts and recovers while the broker is away), requests signed per appliance.
"""

from __future__ import annotations

import json
import re
import threading
import time
from typing import TYPE_CHECKING, Any

from appliance.errors import WardtapError

if TYPE_CHECKING:
    from appliance.contract.broker import BrokerSettings
    from appliance.fleet.db import Database

STAGES = ("approved", "pilot-monitor", "pilot-enforce", "site", "rolled-back")
NEXT_STAGE = {"approved": "pilot-monitor", "pilot-monitor": "pilot-enforce",
              "pilot-enforce": "site"}


class RolloutError(WardtapError):
    pass


class Commander:
    """Signed requests to appliances over one MQTT connection that reconnects by itself."""

    def __init__(self, settings: BrokerSettings | None, key_path: str | None) -> None:
        self.settings = settings
        self.key_path = key_path
        self.connected = threading.Event()
        self.error: str | None = None if settings else "no broker configured (--broker)"
        self._lock = threading.Lock()
        self.fc: Any = None

    def start(self) -> None:
        if self.settings is None:
            return
        from appliance.contract.broker import start
        from appliance.fleet.client import FleetClient

        self.fc = FleetClient(self.settings)
        self.fc.client.on_connect = self._on_connect
        self.fc.client.on_disconnect = self._on_disconnect
        self.error = f"connecting to the broker at {self.settings.url}"
        start(self.fc.client, self.settings)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    props: Any) -> None:
        if reason.is_failure:
            self.error = f"the broker refused the console: {reason}"
            return
        self.error = None
        self.connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                       props: Any) -> None:
        self.connected.clear()
        if self.settings is not None:
            self.error = f"the broker at {self.settings.url} is unreachable (retrying)"

    def close(self) -> None:
        if self.fc is not None:
            self.fc.close()

    def send(self, targets: list[tuple[str, str]], name: str, args: dict[str, Any],
             issuer: str, timeout: float = 15.0) -> dict[str, dict[str, Any]]:
        """{"site/appliance": answer} (a timeout is {"ok": false, "error": "no answer"})."""
        from appliance.contract.signing import load_private_key
        from appliance.fleet.client import SequenceCounter, signed_request

        if self.fc is None or not self.connected.is_set():
            raise RolloutError(self.error or "the broker is unreachable")
        if not self.key_path:
            raise RolloutError("no fleet signing key given to the console (--key)")
        key = load_private_key(self.key_path)
        counter = SequenceCounter(self.key_path + ".seq")
        with self._lock:
            results = self.fc.request(targets, lambda s, a: signed_request(
                key, counter, s, a, name, args, issuer=issuer), timeout)
        return {f"{s}/{a}": (answer if answer is not None else
                             {"ok": False, "error": f"no answer within {timeout:g} s"})
                for (s, a), answer in results.items()}


# -- policy texts ------------------------------------------------------------------------

def sha256(text: str) -> str:
    from appliance.policy.model import parse_policy

    return str(parse_policy(text).digest)


def remember(db: Database, text: str, source: str) -> str:
    """Keep a policy text (validated); its SHA-256 as the appliance reports it."""
    from appliance.policy.model import compile_policy, parse_policy

    policy = parse_policy(text)
    compile_policy(policy)
    db.execute("INSERT INTO policies (sha256, name, version, text, source, first_seen) "
               "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (sha256) DO NOTHING",
               (policy.digest, policy.name, policy.version, text, source, time.time()))
    return str(policy.digest)


def policy_text(db: Database, digest: str | None) -> str | None:
    if not digest:
        return None
    return db.scalar("SELECT text FROM policies WHERE sha256 = ?", (digest,))


def store_proposal(db: Database, site: str, appliance: str, learned: str,
                   current: str | None, detail: str = "") -> None:
    with db.transaction():
        learned_sha = remember(db, learned, "learned")
        current_sha = remember(db, current, "running") if current else None
        db.execute("INSERT INTO proposals (site, appliance, fetched, learned_sha256, "
                   "current_sha256, detail) VALUES (?, ?, ?, ?, ?, ?) "
                   "ON CONFLICT (site, appliance) DO UPDATE SET fetched = excluded.fetched, "
                   "learned_sha256 = excluded.learned_sha256, "
                   "current_sha256 = excluded.current_sha256, detail = excluded.detail",
                   (site, appliance, time.time(), learned_sha, current_sha, detail))


def proposal(db: Database, site: str, appliance: str) -> dict[str, Any] | None:
    rows = db.rows("SELECT * FROM proposals WHERE site = ? AND appliance = ?",
                   (site, appliance))
    if not rows:
        return None
    p = rows[0]
    p["learned"] = policy_text(db, p["learned_sha256"])
    p["current"] = policy_text(db, p["current_sha256"])
    return p


def diff_words(current: str | None, learned: str) -> tuple[str, dict[str, Any] | None]:
    """The change from the running policy to the learned one, in words (policy diff)."""
    from appliance.policy.model import parse_policy
    from appliance.review.diff import diff_policies, render_diff

    new = parse_policy(learned, "learned")
    if current is None:
        return ("the appliance runs no policy: every conversation below becomes allowed, "
                "everything else a violation\n" + learned, None)
    d = diff_policies(parse_policy(current, "running"), new)
    return render_diff(d), d


_HEADER_KEY = re.compile(r'^(name|version)\s*=.*$', re.MULTILINE)


def as_version(text: str, name: str, version: int) -> str:
    """`text` with its [policy] name and version set (the next version of a site's policy)."""
    head, sep, rest = text.partition("[policy]")
    if not sep:
        raise RolloutError("the learned policy has no [policy] table")
    table, tail_sep, tail = rest.partition("\n[")
    table = _HEADER_KEY.sub(lambda m: (f'name = {json.dumps(name)}' if m.group(1) == "name"
                                       else f"version = {version}"), table)
    return head + sep + table + tail_sep + tail


# -- rollouts ------------------------------------------------------------------------------

def approve(db: Database, site: str, pilot: str, text: str, approver: str) -> int:
    digest = remember(db, text, "approved")
    now = time.time()
    rows = db.query("INSERT INTO rollouts (site, pilot, sha256, previous, stage, approved_by, "
                    "approved, updated) VALUES (?, ?, ?, ?, 'approved', ?, ?, ?) RETURNING id",
                    (site, pilot, digest, "{}", approver, now, now))
    return int(rows[0][0])


def rollouts(db: Database, site: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    if site:
        rows = db.rows("SELECT * FROM rollouts WHERE site = ? ORDER BY id DESC LIMIT ?",
                       (site, limit))
    else:
        rows = db.rows("SELECT * FROM rollouts ORDER BY id DESC LIMIT ?", (limit,))
    for r in rows:
        r["previous"] = json.loads(r["previous"] or "{}")
    return rows


def get_rollout(db: Database, rollout_id: int) -> dict[str, Any]:
    rows = db.rows("SELECT * FROM rollouts WHERE id = ?", (rollout_id,))
    if not rows:
        raise RolloutError(f"no rollout {rollout_id}")
    r = rows[0]
    r["previous"] = json.loads(r["previous"] or "{}")
    return r


def _online(db: Database, site: str, now: float) -> dict[str, dict[str, Any]]:
    from appliance.fleet.queries import fleet_overview

    return {r["appliance"]: r for r in fleet_overview(db, now, site=site)
            if r["status"] in ("online", "degraded", "bypass")}


def advance(db: Database, commander: Commander, rollout_id: int, stage: str,
            issuer: str) -> dict[str, dict[str, Any]]:
    """Carry a rollout to `stage`; every appliance's answer (the caller audits them)."""
    r = get_rollout(db, rollout_id)
    if stage == "rolled-back":
        return _roll_back(db, commander, r, issuer)
    if NEXT_STAGE.get(r["stage"]) != stage:
        raise RolloutError(f"rollout {rollout_id} is at {r['stage']!r}: the next step is "
                           f"{NEXT_STAGE.get(r['stage'], 'none')!r}, not {stage!r}")
    text = policy_text(db, r["sha256"])
    if text is None:
        raise RolloutError(f"the approved policy {r['sha256'][:12]} is not in the database")
    online = _online(db, r["site"], time.time())
    site, pilot = r["site"], r["pilot"]
    previous = r["previous"]
    answers: dict[str, dict[str, Any]] = {}
    if stage == "pilot-monitor":
        if pilot not in online:
            raise RolloutError(f"{site}/{pilot} is not online: nothing sent")
        previous[pilot] = {"sha256": online[pilot]["policy_sha256"],
                           "mode": online[pilot]["mode"]}
        answers = commander.send([(site, pilot)], "policy", {"policy": text}, issuer)
        if answers[f"{site}/{pilot}"].get("ok"):
            answers.update({f"{k} (mode)": v for k, v in commander.send(
                [(site, pilot)], "mode", {"mode": "monitor"}, issuer).items()})
    elif stage == "pilot-enforce":
        if pilot not in online:
            raise RolloutError(f"{site}/{pilot} is not online: nothing sent")
        answers = commander.send([(site, pilot)], "mode", {"mode": "enforce"}, issuer)
    elif stage == "site":
        rest = sorted(a for a in online if a != pilot)
        if not rest:
            raise RolloutError(f"no other appliance of {site} is online")
        for a in rest:
            previous[a] = {"sha256": online[a]["policy_sha256"], "mode": online[a]["mode"]}
        answers = commander.send([(site, a) for a in rest], "policy", {"policy": text}, issuer)
    ok = all(a.get("ok") for a in answers.values())
    db.execute("UPDATE rollouts SET previous = ?, stage = ?, updated = ? WHERE id = ?",
               (json.dumps(previous), stage if ok else r["stage"], time.time(), rollout_id))
    return answers


def _roll_back(db: Database, commander: Commander, r: dict[str, Any],
               issuer: str) -> dict[str, dict[str, Any]]:
    answers: dict[str, dict[str, Any]] = {}
    for name, before in sorted(r["previous"].items()):
        target = [(r["site"], name)]
        text = policy_text(db, before.get("sha256"))
        if before.get("sha256") and text is None:
            answers[f"{r['site']}/{name}"] = {
                "ok": False, "error": "its previous policy was never seen by the console; "
                "push it by hand (wardtap fleet push-policy --allow-rollback)"}
        elif text is not None:
            answers.update(commander.send(target, "policy",
                                          {"policy": text, "allow_rollback": True}, issuer))
        if before.get("mode"):
            answers.update({f"{k} (mode)": v for k, v in commander.send(
                target, "mode", {"mode": before["mode"]}, issuer).items()})
    db.execute("UPDATE rollouts SET stage = 'rolled-back', updated = ? WHERE id = ?",
               (time.time(), r["id"]))
    return answers
