"""Console accounts, sessions, log-in limits and the audit log, in the fleet database.

- Roles, each including the one before: viewer (read), operator (modes, identify,
  inventory refresh), admin (policies, accounts).
- Passwords are hashed with Argon2id (argon2-cffi); there is no default account and no
  default password: the first admin is made with `wardtap fleet user add NAME --role admin`.
- A session is a random 256-bit token in an HttpOnly cookie; the database keeps only its
  SHA-256, with an idle timeout and an absolute lifetime, and its own CSRF token. Logging out
  deletes it, so a copied (replayed) cookie stops working; an invented one never worked.
- Wrong passwords are audited and limited per account and per client address: after
  MAX_FAILURES within WINDOW_S further attempts are refused (without checking the password)
  until the window has passed.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from appliance.errors import WardtapError

if TYPE_CHECKING:
    from appliance.fleet.db import Database

ROLES = ("viewer", "operator", "admin")
IDLE_TIMEOUT_S = 30 * 60
MAX_SESSION_S = 12 * 3600
MAX_FAILURES = 5
WINDOW_S = 15 * 60
MIN_PASSWORD = 12


class AccountError(WardtapError):
    pass


def _hasher() -> Any:
    try:
        from argon2 import PasswordHasher
    except ImportError:
        raise AccountError("argon2-cffi is not installed: pip install 'wardtap[console]'") \
            from None
    return PasswordHasher()


def role_at_least(role: str, needed: str) -> bool:
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


def check_username(name: str) -> str:
    if not (1 <= len(name) <= 64) or not all(c.isalnum() or c in "._-@" for c in name):
        raise AccountError(f"user name {name!r}: use 1-64 letters, digits, '.', '_', '-', '@'")
    return name


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"the password must have at least {MIN_PASSWORD} characters")


def add_user(db: Database, name: str, role: str, password: str) -> None:
    check_username(name)
    if role not in ROLES:
        raise AccountError(f"role {role!r}: one of {', '.join(ROLES)}")
    check_password(password)
    digest = _hasher().hash(password)
    with db.transaction():
        if db.query("SELECT 1 FROM users WHERE username = ?", (name,)):
            raise AccountError(f"user {name!r} exists already")
        db.execute("INSERT INTO users (username, role, password_hash, created) "
                   "VALUES (?, ?, ?, ?)", (name, role, digest, time.time()))


def set_password(db: Database, name: str, password: str) -> None:
    check_password(password)
    digest = _hasher().hash(password)
    with db.transaction():
        if not db.query("SELECT 1 FROM users WHERE username = ?", (name,)):
            raise AccountError(f"no user {name!r}")
        db.execute("UPDATE users SET password_hash = ? WHERE username = ?", (digest, name))
        db.execute("DELETE FROM sessions WHERE username = ?", (name,))


def set_role(db: Database, name: str, role: str | None = None,
             disabled: bool | None = None) -> None:
    if role is not None and role not in ROLES:
        raise AccountError(f"role {role!r}: one of {', '.join(ROLES)}")
    with db.transaction():
        if not db.query("SELECT 1 FROM users WHERE username = ?", (name,)):
            raise AccountError(f"no user {name!r}")
        if role is not None:
            db.execute("UPDATE users SET role = ? WHERE username = ?", (role, name))
        if disabled is not None:
            db.execute("UPDATE users SET disabled = ? WHERE username = ?", (int(disabled), name))
        db.execute("DELETE FROM sessions WHERE username = ?", (name,))


def users(db: Database) -> list[dict[str, Any]]:
    return db.rows("SELECT username, role, created, disabled, last_login FROM users "
                   "ORDER BY username")


@dataclass
class Session:
    username: str
    role: str
    csrf: str
    token_hash: str
    expires: float


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def throttled(db: Database, username: str, client: str, now: float | None = None) -> float:
    """Seconds until another attempt is allowed (0: allowed now)."""
    now = time.time() if now is None else now
    since = now - WINDOW_S
    worst = 0.0
    for column, value in (("username", username), ("client", client)):
        rows = db.query(f"SELECT count(*), min(ts) FROM login_failures WHERE {column} = ? "
                        "AND ts >= ?", (value, since))
        count, first = rows[0]
        if count >= MAX_FAILURES and first is not None:
            worst = max(worst, first + WINDOW_S - now)
    return max(0.0, worst)


def log_in(db: Database, username: str, password: str, client: str) -> tuple[str, Session]:
    """(cookie token, session) for a right password; AccountError (audited) otherwise."""
    now = time.time()
    wait = throttled(db, username, client, now)
    if wait > 0:
        audit(db, "login_refused", username=username[:64], client=client,
              outcome="throttled", detail=f"too many failed attempts; {wait:.0f} s to wait")
        raise AccountError(f"too many failed attempts: try again in {wait:.0f} s")
    rows = db.rows("SELECT username, role, password_hash, disabled FROM users "
                   "WHERE username = ?", (username,))
    ok = False
    if rows and not rows[0]["disabled"]:
        from argon2.exceptions import InvalidHashError, VerificationError

        try:
            ok = _hasher().verify(rows[0]["password_hash"], password)
        except (VerificationError, InvalidHashError):
            ok = False
    else:
        _hasher().hash(password)            # the same time for unknown names
    if not ok:
        with db.transaction():
            db.execute("INSERT INTO login_failures (ts, username, client) VALUES (?, ?, ?)",
                       (now, username[:64], client))
            db.execute("DELETE FROM login_failures WHERE ts < ?", (now - 2 * WINDOW_S,))
        audit(db, "login_failed", username=username[:64], client=client, outcome="refused",
              detail="unknown user, disabled or wrong password")
        raise AccountError("wrong user name or password")
    user = rows[0]
    token = secrets.token_urlsafe(32)
    session = Session(user["username"], user["role"], secrets.token_urlsafe(32),
                      _token_hash(token), now + MAX_SESSION_S)
    with db.transaction():
        db.execute("INSERT INTO sessions (token_hash, username, csrf, created, last_used, "
                   "expires, client) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (session.token_hash, session.username, session.csrf, now, now,
                    session.expires, client))
        db.execute("UPDATE users SET last_login = ? WHERE username = ?", (now, username))
        db.execute("DELETE FROM sessions WHERE expires < ? OR last_used < ?",
                   (now, now - IDLE_TIMEOUT_S))
    audit(db, "login", username=session.username, role=session.role, client=client,
          outcome="ok")
    return token, session


def session_for(db: Database, token: str | None, now: float | None = None) -> Session | None:
    """The live session behind a cookie, its idle timer renewed; None if unknown or old."""
    if not token or len(token) > 128:
        return None
    now = time.time() if now is None else now
    rows = db.rows("SELECT s.token_hash, s.username, s.csrf, s.expires, s.last_used, u.role, "
                   "u.disabled FROM sessions s JOIN users u ON u.username = s.username "
                   "WHERE s.token_hash = ?", (_token_hash(token),))
    if not rows:
        return None
    r = rows[0]
    if r["disabled"] or r["expires"] < now or r["last_used"] < now - IDLE_TIMEOUT_S:
        db.execute("DELETE FROM sessions WHERE token_hash = ?", (r["token_hash"],))
        return None
    if now - r["last_used"] > 30:
        db.execute("UPDATE sessions SET last_used = ? WHERE token_hash = ?",
                   (now, r["token_hash"]))
    return Session(r["username"], r["role"], r["csrf"], r["token_hash"], r["expires"])


def log_out(db: Database, session: Session) -> None:
    db.execute("DELETE FROM sessions WHERE token_hash = ?", (session.token_hash,))


def audit(db: Database, action: str, *, username: str | None = None, role: str | None = None,
          client: str | None = None, targets: list[str] | None = None, detail: str = "",
          outcome: str = "", answers: dict[str, Any] | None = None) -> None:
    """One row of the audit log: who, when, what, to which appliances, each one's answer."""
    db.execute("INSERT INTO audit (ts, username, role, client, action, targets, detail, "
               "outcome, answers) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
               (time.time(), username, role, client, action,
                " ".join(targets or [])[:4000], detail[:4000], outcome[:64],
                json.dumps(answers, default=str)[:65536] if answers else None))


def audit_rows(db: Database, text: str = "", action: str = "", username: str = "",
               since: float | None = None, limit: int = 500) -> list[dict[str, Any]]:
    from appliance.fleet.queries import like_pattern

    conds: list[str] = []
    params: list[Any] = []
    if text:
        conds.append("(lower(targets) LIKE ? ESCAPE '\\' OR lower(detail) LIKE ? ESCAPE '\\' "
                     "OR lower(answers) LIKE ? ESCAPE '\\')")
        params += [like_pattern(text)] * 3
    if action:
        conds.append("action = ?")
        params.append(action)
    if username:
        conds.append("username = ?")
        params.append(username)
    if since is not None:
        conds.append("ts >= ?")
        params.append(since)
    where = ("WHERE " + " AND ".join(conds)) if conds else ""
    rows = db.rows(f"SELECT * FROM audit {where} ORDER BY id DESC LIMIT ?", (*params, limit))
    for r in rows:
        try:
            r["answers"] = json.loads(r["answers"]) if r["answers"] else {}
        except ValueError:
            r["answers"] = {}
    return rows
