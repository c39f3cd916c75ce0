"""The console's actions (POST): log-in, commands, policy rollout, accounts. Each audited.

Roles are checked on the server by `handler(role)` before anything runs: operator for
modes, identify and inventory refresh; admin for policies and accounts. Every action, its
targets and every appliance's answer land in the audit log, refused ones included.
"""

from __future__ import annotations

import secrets
import urllib.parse
from typing import Any

from starlette.responses import RedirectResponse
from starlette.routing import Route

from appliance.errors import WardtapError
from appliance.fleet import accounts, queries, rollout
from appliance.fleet.accounts import audit
from appliance.fleet.web.app import COOKIE, LOGIN_COOKIE, SECURITY_HEADERS, Ctx, handler

MODES = ("learn", "monitor", "enforce", "bypass")


def _cookie(ctx: Ctx, response: Any, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="strict",
                        secure=ctx.console.config.tls, path="/")


def _safe_next(target: str) -> str:
    """Only a path on this console (never another site) after logging in."""
    parsed = urllib.parse.urlsplit(target)
    if parsed.scheme or parsed.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


@handler(None)
def login_page(ctx: Ctx) -> Any:
    token = ctx.request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
    response = ctx.console.render(ctx, "login.html", login_csrf=token, error=None,
                                  next=_safe_next(ctx.arg("next", "/")))
    _cookie(ctx, response, LOGIN_COOKIE, token, 3600)
    return response


@handler(None)
def login(ctx: Ctx) -> Any:
    expected = ctx.request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not secrets.compare_digest(ctx.field("csrf", limit=100), expected):
        audit(ctx.db, "login_refused", client=ctx.client, outcome="refused",
              detail="log-in form without its CSRF token")
        return ctx.console.render(ctx, "login.html", 403, login_csrf=expected or "",
                                  error="The log-in form expired; reload the page.", next="/")
    username = ctx.field("username", limit=64)
    try:
        token, session = accounts.log_in(ctx.db, username, ctx.field("password", limit=1024),
                                         ctx.client)
    except accounts.AccountError as exc:
        status = 429 if "too many" in str(exc) else 401
        return ctx.console.render(ctx, "login.html", status, login_csrf=expected,
                                  error=str(exc), next=_safe_next(ctx.field("next", "/")))
    response = RedirectResponse(_safe_next(ctx.field("next", "/")), status_code=303,
                                headers=SECURITY_HEADERS)
    _cookie(ctx, response, COOKIE, token, None)
    response.delete_cookie(LOGIN_COOKIE, path="/")
    return response


@handler("viewer")
def logout(ctx: Ctx) -> Any:
    assert ctx.session is not None
    accounts.log_out(ctx.db, ctx.session)
    audit(ctx.db, "logout", username=ctx.session.username, role=ctx.session.role,
          client=ctx.client, outcome="ok")
    response = RedirectResponse("/login", status_code=303, headers=SECURITY_HEADERS)
    response.delete_cookie(COOKIE, path="/")
    return response


def _who(ctx: Ctx) -> dict[str, Any]:
    assert ctx.session is not None
    return {"username": ctx.session.username, "role": ctx.session.role, "client": ctx.client}


def _issuer(ctx: Ctx) -> str:
    return f"{ctx.user}@wardtap-console"


def _result(ctx: Ctx, heading: str, answers: dict[str, dict[str, Any]] | None,
            back: str, error: str | None = None) -> Any:
    return ctx.console.render(ctx, "result.html", 200 if error is None else 409,
                              heading=heading, answers=answers or {}, back=back, error=error)


def _target(ctx: Ctx) -> tuple[str, str]:
    site, name = ctx.request.path_params["site"], ctx.request.path_params["appliance"]
    if queries.appliance(ctx.db, site, name) is None:
        raise WardtapError(f"no appliance {site}/{name}")
    return site, name


@handler("operator")
def command(ctx: Ctx) -> Any:
    """mode / identify / inventory refresh for one appliance."""
    site, name = _target(ctx)
    back = f"/appliances/{site}/{name}"
    action = ctx.field("action", limit=32)
    args: dict[str, Any] = {}
    if action == "mode":
        mode = ctx.field("mode", limit=16)
        if mode not in MODES:
            return _result(ctx, "Mode", None, back, f"mode must be one of {', '.join(MODES)}")
        args = {"mode": mode}
    elif action == "identify":
        args = {"seconds": 600}
    elif action != "inventory":
        return _result(ctx, "Command", None, back, f"unknown action {action!r}")
    return _send(ctx, action, args, [(site, name)], back, f"{action} {args or ''}".strip())


def _send(ctx: Ctx, name: str, args: dict[str, Any], targets: list[tuple[str, str]],
          back: str, detail: str) -> Any:
    labels = [f"{s}/{a}" for s, a in targets]
    try:
        answers = ctx.console.commander.send(targets, name, args, _issuer(ctx))
    except WardtapError as exc:
        audit(ctx.db, name, **_who(ctx), targets=labels, detail=detail, outcome="not sent",
              answers={"error": str(exc)})
        return _result(ctx, f"{name}: not sent", None, back, str(exc))
    ok = all(a.get("ok") for a in answers.values())
    audit(ctx.db, name, **_who(ctx), targets=labels, detail=detail,
          outcome="ok" if ok else "failed", answers=answers)
    return _result(ctx, f"{name} sent", answers, back)


@handler("admin")
def fetch_proposal(ctx: Ctx) -> Any:
    """Ask the appliance for the policy it has learned so far (and its running one)."""
    site, name = _target(ctx)
    back = f"/policies/{site}/{name}"
    try:
        answers = ctx.console.commander.send([(site, name)], "propose", {}, _issuer(ctx))
    except WardtapError as exc:
        audit(ctx.db, "propose", **_who(ctx), targets=[f"{site}/{name}"],
              outcome="not sent", answers={"error": str(exc)})
        return _result(ctx, "propose: not sent", None, back, str(exc))
    answer = answers[f"{site}/{name}"]
    summary = {k: v for k, v in answer.items() if k not in ("policy", "current")}
    outcome = "ok" if answer.get("ok") and isinstance(answer.get("policy"), str) else "failed"
    if outcome == "ok":
        try:
            rollout.store_proposal(ctx.db, site, name, answer["policy"], answer.get("current"),
                                   f"{answer.get('conversations')} conversations")
        except WardtapError as exc:
            outcome, summary = "failed", {**summary, "ok": False, "error": str(exc)}
    audit(ctx.db, "propose", **_who(ctx), targets=[f"{site}/{name}"], outcome=outcome,
          answers={f"{site}/{name}": summary})
    if outcome != "ok":
        return _result(ctx, "propose failed", {f"{site}/{name}": summary}, back)
    return RedirectResponse(back, status_code=303, headers=SECURITY_HEADERS)


@handler("admin")
def approve(ctx: Ctx) -> Any:
    """Approve the reviewed text (exactly the one shown: its SHA-256 must match)."""
    site, name = _target(ctx)
    back = f"/policies/{site}/{name}"
    text = ctx.field("policy").replace("\r\n", "\n")   # forms send line breaks as CRLF
    shown = ctx.field("sha256", limit=64)
    try:
        digest = rollout.sha256(text)
        if digest != shown:
            raise WardtapError("the policy changed since it was shown; review it again")
        rid = rollout.approve(ctx.db, site, name, text, ctx.user)
    except WardtapError as exc:
        audit(ctx.db, "policy_approve", **_who(ctx), targets=[f"{site}/{name}"],
              outcome="refused", detail=str(exc))
        return _result(ctx, "Approval refused", None, back, str(exc))
    audit(ctx.db, "policy_approve", **_who(ctx), targets=[f"{site}/{name}"], outcome="ok",
          detail=f"rollout {rid}: policy sha256 {digest} approved (pilot {name})")
    return RedirectResponse(back, status_code=303, headers=SECURITY_HEADERS)


@handler("admin")
def advance(ctx: Ctx) -> Any:
    rid = int(ctx.request.path_params["rid"])
    stage = ctx.field("stage", limit=32)
    try:
        r = rollout.get_rollout(ctx.db, rid)
    except WardtapError as exc:
        return _result(ctx, "Rollout", None, "/policies", str(exc))
    back = f"/policies/{r['site']}/{r['pilot']}"
    try:
        answers = rollout.advance(ctx.db, ctx.console.commander, rid, stage, _issuer(ctx))
    except WardtapError as exc:
        audit(ctx.db, f"rollout_{stage}", **_who(ctx), targets=[r["site"]],
              detail=f"rollout {rid} ({r['sha256'][:12]})", outcome="not sent",
              answers={"error": str(exc)})
        return _result(ctx, f"Rollout {rid}: {stage} not done", None, back, str(exc))
    ok = all(a.get("ok") for a in answers.values())
    audit(ctx.db, f"rollout_{stage}", **_who(ctx), targets=sorted(answers),
          detail=f"rollout {rid}: policy sha256 {r['sha256']}",
          outcome="ok" if ok else "failed", answers=answers)
    return _result(ctx, f"Rollout {rid}: {stage}", answers, back)


@handler("admin")
def users_page(ctx: Ctx) -> Any:
    return ctx.console.render(ctx, "users.html", users=accounts.users(ctx.db),
                              roles=accounts.ROLES, error=None)


@handler("admin")
def users_change(ctx: Ctx) -> Any:
    action = ctx.field("action", limit=16)
    name = ctx.field("username", limit=64)
    try:
        if action == "add":
            accounts.add_user(ctx.db, name, ctx.field("role", limit=16),
                              ctx.field("password", limit=1024))
        elif action == "role":
            accounts.set_role(ctx.db, name, role=ctx.field("role", limit=16))
        elif action in ("disable", "enable"):
            if name == ctx.user:
                raise WardtapError("you cannot disable your own account")
            accounts.set_role(ctx.db, name, disabled=action == "disable")
        elif action == "password":
            accounts.set_password(ctx.db, name, ctx.field("password", limit=1024))
        else:
            raise WardtapError(f"unknown action {action!r}")
    except WardtapError as exc:
        audit(ctx.db, f"user_{action}"[:32], **_who(ctx), targets=[name], outcome="refused",
              detail=str(exc))
        return ctx.console.render(ctx, "users.html", 400, users=accounts.users(ctx.db),
                                  roles=accounts.ROLES, error=str(exc))
    detail = f"role {ctx.field('role', limit=16)}" if action in ("add", "role") else ""
    audit(ctx.db, f"user_{action}", **_who(ctx), targets=[name], outcome="ok", detail=detail)
    return RedirectResponse("/users", status_code=303, headers=SECURITY_HEADERS)


ROUTES = [
    Route("/login", login_page, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/appliances/{site}/{appliance}/command", command, methods=["POST"]),
    Route("/policies/{site}/{appliance}/propose", fetch_proposal, methods=["POST"]),
    Route("/policies/{site}/{appliance}/approve", approve, methods=["POST"]),
    Route("/rollouts/{rid:int}", advance, methods=["POST"]),
    Route("/users", users_page, methods=["GET"]),
    Route("/users", users_change, methods=["POST"]),
]
