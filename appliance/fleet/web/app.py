"""The console's web application (Starlette): routing, sessions, CSRF, roles, health.

Every page goes through `handler(role)`: it finds the session behind the cookie (or sends
the browser to the log-in page), checks the role on the server, and for a POST checks the
request's Origin (or Referer) and its CSRF token before anything runs. The page's own work
runs in a worker thread with one database connection from the pool. When the database or
the broker is away, every page says so (a banner, or a 503 page) and the next request tries
again, so the console recovers by itself.

Pages are rendered on the server with Jinja2 (autoescaping on: nothing an appliance
reports or a user types is ever markup) and no JavaScript; the Content-Security-Policy
forbids scripts altogether.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import WardtapError
from appliance.fleet.accounts import Session, role_at_least, session_for
from appliance.fleet.db import DatabaseError, Pool
from appliance.fleet.rollout import Commander

log = logging.getLogger("wardtap.console")

COOKIE = "wardtap_session"
LOGIN_COOKIE = "wardtap_login"
HERE = os.path.dirname(os.path.abspath(__file__))
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass
class ConsoleConfig:
    db: str
    broker: Any = None                     # BrokerSettings or None
    key: str | None = None                 # the fleet signing key (admin actions)
    tls: bool = False
    title: str = "wardtap fleet"
    stale_after: float = 900.0


@dataclass
class Ctx:
    """What a page handler gets: the request, its session, its form, the database."""

    request: Any
    session: Session | None
    form: dict[str, str]
    db: Any
    console: Console
    client: str
    notes: list[str] = field(default_factory=list)

    @property
    def user(self) -> str:
        return self.session.username if self.session else "-"

    def arg(self, name: str, default: str = "", limit: int = 200) -> str:
        value = self.request.query_params.get(name, default)
        return str(value)[:limit].replace("\x00", "")    # no NUL reaches the database

    def field(self, name: str, default: str = "", limit: int = 200_000) -> str:
        return str(self.form.get(name, default))[:limit].replace("\x00", "")


class Forbidden(Exception):
    pass


class Console:
    """The application's state: configuration, the database pool, the MQTT commander."""

    def __init__(self, config: ConsoleConfig) -> None:
        import jinja2
        from starlette.templating import Jinja2Templates

        self.config = config
        self.pool = Pool(config.db)
        self.commander = Commander(config.broker, config.key)
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.join(HERE, "templates")),
                                 autoescape=True, undefined=jinja2.ChainableUndefined)
        from appliance.fleet.web import filters

        env.filters.update(filters.FILTERS)
        self.templates = Jinja2Templates(env=env)

    def health(self) -> list[str]:
        problems = []
        if self.pool.error:
            problems.append(f"database unreachable since "
                            f"{time.strftime('%H:%M:%S', time.localtime(self.pool.error_since))}"
                            f": {self.pool.error}")
        if self.commander.error:
            problems.append(f"broker: {self.commander.error}; commands cannot be sent")
        return problems

    def render(self, ctx: Ctx, template: str, status: int = 200, /, **values: Any) -> Any:
        values.update(session=ctx.session, problems=self.health(), notes=ctx.notes,
                      now=time.time(), title=self.config.title, path=ctx.request.url.path,
                      can=lambda role: bool(ctx.session and role_at_least(ctx.session.role,
                                                                           role)))
        response = self.templates.TemplateResponse(ctx.request, template, values,
                                                   status_code=status)
        response.headers.update(SECURITY_HEADERS)
        return response


def client_of(request: Any) -> str:
    return request.client.host if request.client else "?"


def _same_origin(request: Any) -> bool:
    """A POST must come from one of our own pages (Origin, else Referer, must be us)."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source:
        return False
    parsed = urllib.parse.urlsplit(source)
    return bool(parsed.netloc) and parsed.netloc == request.headers.get("host", "")


def handler(role: str | None = "viewer") -> Callable[[Callable[[Ctx], Any]],
                                                      Callable[[Any], Awaitable[Any]]]:
    """Wrap a page function `fn(ctx)`: session, role, CSRF, database, errors."""
    def wrap(fn: Callable[[Ctx], Any]) -> Callable[[Any], Awaitable[Any]]:
        async def endpoint(request: Any) -> Any:
            from starlette.concurrency import run_in_threadpool

            form: dict[str, str] = {}
            if request.method == "POST":
                try:
                    data = await request.form(max_files=0, max_fields=100,
                                              max_part_size=512 * 1024)
                except Exception:  # noqa: BLE001  (a broken form is the client's mistake)
                    return _plain(400, "unreadable form")
                form = {k: v for k, v in data.items() if isinstance(v, str)}
            return await run_in_threadpool(_run, request, fn, role, form)
        endpoint.__name__ = fn.__name__
        return endpoint
    return wrap


def _plain(status: int, text: str) -> Any:
    from starlette.responses import PlainTextResponse

    return PlainTextResponse(text + "\n", status_code=status, headers=SECURITY_HEADERS)


def _run(request: Any, fn: Callable[[Ctx], Any], role: str | None,
         form: dict[str, str]) -> Any:
    from starlette.responses import RedirectResponse

    console: Console = request.app.state.console
    ctx = Ctx(request, None, form, None, console, client_of(request))
    post = request.method == "POST"
    if post and not _same_origin(request):
        log.warning("refused a cross-site POST to %s from %s", request.url.path, ctx.client)
        return _plain(403, "refused: this request did not come from a console page "
                      "(cross-site request)")
    try:
        with console.pool.connection() as db:
            ctx.db = db
            ctx.session = session_for(db, request.cookies.get(COOKIE))
            if role is not None:
                if ctx.session is None:
                    if post:
                        return _plain(403, "refused: not logged in (or the session expired)")
                    target = urllib.parse.quote(request.url.path)
                    return RedirectResponse(f"/login?next={target}", status_code=303)
                if post and not secrets.compare_digest(form.get("csrf", ""),
                                                       ctx.session.csrf):
                    _audit_refusal(ctx, "bad or missing CSRF token")
                    return _plain(403, "refused: bad or missing CSRF token (reload the page)")
                if not role_at_least(ctx.session.role, role):
                    _audit_refusal(ctx, f"needs the {role} role")
                    return console.render(ctx, "error.html", 403, heading="Not allowed",
                                          message=f"This needs the {role} role; you are "
                                                  f"{ctx.session.role}.")
            return fn(ctx)
    except DatabaseError as exc:
        ctx.db = None
        return console.render(ctx, "error.html", 503, heading="Database unreachable",
                              message=str(exc))
    except WardtapError as exc:
        ctx.db = None
        return console.render(ctx, "error.html", 400, heading="Refused", message=str(exc))


def _audit_refusal(ctx: Ctx, why: str) -> None:
    from appliance.fleet.accounts import audit

    assert ctx.session is not None
    audit(ctx.db, "refused", username=ctx.session.username, role=ctx.session.role,
          client=ctx.client, detail=f"{ctx.request.method} {ctx.request.url.path}: {why}",
          outcome="refused")
