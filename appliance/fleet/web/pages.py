"""The console's read-only pages and exports (any logged-in role)."""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Any

from starlette.responses import Response
from starlette.routing import Route

from appliance.fleet import queries, rollout
from appliance.fleet.accounts import audit_rows
from appliance.fleet.web import plot
from appliance.fleet.web.app import SECURITY_HEADERS, Ctx, handler

FLEET_PAGE = 250          # appliances per page of the fleet page (sorted across all)
WINDOWS = {"1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400, "all": None}


def _int(text: str, default: int, lo: int, hi: int) -> int:
    try:
        return max(lo, min(hi, int(float(text))))
    except ValueError:
        return default


def _since(ctx: Ctx, default: str = "24h") -> tuple[str, float]:
    window = ctx.arg("window", default)
    if window not in WINDOWS:
        window = default
    secs = WINDOWS[window]
    return window, (time.time() - secs if secs else 0.0)


@handler("viewer")
def fleet(ctx: Ctx) -> Any:
    site = ctx.arg("site") or None
    sort = ctx.arg("sort", "site")
    desc = ctx.arg("desc") == "1"
    rows = queries.fleet_overview(ctx.db, site=site, sort=sort, descending=desc,
                                  stale_after=ctx.console.config.stale_after)
    malformed = queries.malformed_total(ctx.db)
    totals: dict[str, int] = {}
    for r in rows:
        totals[r["status"]] = totals.get(r["status"], 0) + 1
    pages = max(1, -(-len(rows) // FLEET_PAGE))
    page = _int(ctx.arg("page", "0"), 0, 0, pages - 1)
    return ctx.console.render(ctx, "fleet.html", rows=rows[page * FLEET_PAGE:
                                                           (page + 1) * FLEET_PAGE],
                              total=len(rows), totals=sorted(totals.items()), page=page,
                              pages=pages, site=site or "",
                              sites=queries.sites(ctx.db), sort=sort, desc=desc,
                              sorts=queries.FLEET_SORTS, malformed=malformed,
                              collectors=queries.collectors(ctx.db))


@handler("viewer")
def appliance(ctx: Ctx) -> Any:
    site, name = ctx.request.path_params["site"], ctx.request.path_params["appliance"]
    row = queries.appliance(ctx.db, site, name)
    if row is None:
        return ctx.console.render(ctx, "error.html", 404, heading="Unknown appliance",
                                  message=f"No appliance {site}/{name} in the fleet database.")
    now = time.time()
    span = queries.data_span(ctx.db, site, name)
    latest = int(now) if span is None or span[1] >= now - 86400 else span[1]
    start = _int(ctx.arg("start"), latest - 86400, 0, 2**40)
    end = _int(ctx.arg("end"), latest, 0, 2**40)
    if end <= start:
        start, end = end - 3600, end
    if end - start > 400 * 86400:
        start = end - 400 * 86400
    step = ctx.arg("step") if ctx.arg("step") in ("minute", "hour") else \
        plot.choose_step(start, end)
    if step == "minute" and end - start > 2 * 86400:
        step = "hour"                       # at most 2,880 bars
    rows = queries.timeline(ctx.db, site, name, start, end, step)
    chart = plot.build(rows, start, end, step)
    return ctx.console.render(
        ctx, "appliance.html", a=row, site=site, name=name, chart=chart,
        zoom=plot.zoom_links(start, end, latest), span=span,
        devices=queries.devices_of(ctx.db, site, name),
        events=queries.recent_events(ctx.db, site, name, limit=50),
        malformed=queries.malformed_recent(ctx.db, 10, site, name),
        totals={k: sum(int(r[k] or 0) for r in rows) for k in ("allowed", "denied",
                                                                "violations", "events")})


def _device_args(ctx: Ctx) -> tuple[str, str, str]:
    field = ctx.arg("field", "any")
    return ctx.arg("q", "", 120), field if field in queries.DEVICE_FIELDS else "any", \
        ctx.arg("site")


@handler("viewer")
def devices(ctx: Ctx) -> Any:
    q, field, site = _device_args(ctx)
    page = _int(ctx.arg("page", "0"), 0, 0, 10_000)
    rows = queries.search_devices(ctx.db, q, field, site or None, limit=101, offset=page * 100)
    return ctx.console.render(ctx, "devices.html", rows=rows[:100], more=len(rows) > 100,
                              q=q, field=field, site=site, page=page,
                              fields=queries.DEVICE_FIELDS, sites=queries.sites(ctx.db))


_EXPORT_COLS = ("site", "appliance", "mac", "vendor", "class", "confidence", "names", "ipv4",
                "ipv6", "vlan", "first_seen", "last_seen", "violations")


def csv_safe(value: Any) -> str:
    """A cell a spreadsheet will not run as a formula."""
    text = "" if value is None else (value if isinstance(value, str) else
                                     json.dumps(value) if isinstance(value, list) else str(value))
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _csv(rows: list[dict[str, Any]], cols: tuple[str, ...], name: str) -> Response:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for r in rows:
        w.writerow([csv_safe(r.get(c)) for c in cols])
    return Response(buf.getvalue(), media_type="text/csv; charset=utf-8", headers={
        **SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="{name}"'})


def _json(data: Any, name: str) -> Response:
    return Response(json.dumps(data, indent=1, default=str), media_type="application/json",
                    headers={**SECURITY_HEADERS,
                             "Content-Disposition": f'attachment; filename="{name}"'})


@handler("viewer")
def devices_export(ctx: Ctx) -> Any:
    q, field, site = _device_args(ctx)
    rows = queries.search_devices(ctx.db, q, field, site or None, limit=200_000)
    fmt = ctx.request.path_params["fmt"]
    if fmt == "csv":
        return _csv(rows, _EXPORT_COLS, "wardtap-devices.csv")
    return _json([{**{c: r.get(c) for c in _EXPORT_COLS}, "reported": r["body"]} for r in rows],
                 "wardtap-devices.json")


@handler("viewer")
def violations(ctx: Ctx) -> Any:
    window, since = _since(ctx)
    site, name = ctx.arg("site"), ctx.arg("appliance")
    groups = queries.violation_groups(ctx.db, since, site or None, name or None)
    return ctx.console.render(ctx, "violations.html", groups=groups, window=window,
                              windows=list(WINDOWS), since=since, site=site, name=name,
                              sites=queries.sites(ctx.db))


@handler("viewer")
def violation_flows(ctx: Ctx) -> Any:
    window, since = _since(ctx)
    key = {k: ctx.arg(k) for k in ("site", "appliance", "device", "rule", "reason")}
    flows = queries.violation_flows(ctx.db, key["site"], key["appliance"], key["device"],
                                    key["rule"], key["reason"], since)
    return ctx.console.render(ctx, "flows.html", flows=flows, key=key, window=window)


@handler("viewer")
def policies(ctx: Ctx) -> Any:
    rows = queries.fleet_overview(ctx.db, stale_after=ctx.console.config.stale_after)
    proposals = {(p["site"], p["appliance"]): p for p in
                 ctx.db.rows("SELECT site, appliance, fetched FROM proposals")}
    return ctx.console.render(ctx, "policies.html", rows=rows, proposals=proposals,
                              rollouts=rollout.rollouts(ctx.db),
                              next_stage=rollout.NEXT_STAGE)


@handler("viewer")
def policy_detail(ctx: Ctx) -> Any:
    site, name = ctx.request.path_params["site"], ctx.request.path_params["appliance"]
    row = queries.appliance(ctx.db, site, name)
    if row is None:
        return ctx.console.render(ctx, "error.html", 404, heading="Unknown appliance",
                                  message=f"No appliance {site}/{name} in the fleet database.")
    prop = rollout.proposal(ctx.db, site, name)
    running = rollout.policy_text(ctx.db, row.get("policy_sha256")) or \
        (prop or {}).get("current")
    diff, next_text, error = None, None, None
    if prop and prop.get("learned"):
        try:
            diff = rollout.diff_words(running, prop["learned"])[0]
            version = int(row.get("policy_version") or 0) + 1
            next_text = rollout.as_version(prop["learned"], row.get("policy_name") or
                                           f"{site}-{name}", version)
        except Exception as exc:  # noqa: BLE001  (shown: an unreadable stored proposal)
            error = str(exc)
    return ctx.console.render(ctx, "policy.html", a=row, site=site, name=name, prop=prop,
                              running=running, diff=diff, next_text=next_text, error=error,
                              rollouts=rollout.rollouts(ctx.db, site),
                              next_stage=rollout.NEXT_STAGE)


def _audit_args(ctx: Ctx) -> dict[str, Any]:
    window, since = _since(ctx, "all")
    return {"text": ctx.arg("q", "", 120), "action": ctx.arg("action", "", 64),
            "username": ctx.arg("user", "", 64), "since": since or None, "window": window}


@handler("viewer")
def audit(ctx: Ctx) -> Any:
    args = _audit_args(ctx)
    window = args.pop("window")
    rows = audit_rows(ctx.db, **args)
    actions = [r[0] for r in ctx.db.query("SELECT DISTINCT action FROM audit ORDER BY action")]
    return ctx.console.render(ctx, "audit.html", rows=rows, q=args["text"],
                              action=args["action"], user=args["username"], window=window,
                              windows=list(WINDOWS), actions=actions)


@handler("viewer")
def audit_export(ctx: Ctx) -> Any:
    args = _audit_args(ctx)
    args.pop("window")
    rows = audit_rows(ctx.db, limit=100_000, **args)
    if ctx.request.path_params["fmt"] == "csv":
        for r in rows:
            r["answers"] = json.dumps(r["answers"], default=str)
            r["time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(r["ts"]))
        return _csv(rows, ("id", "time", "ts", "username", "role", "client", "action",
                           "targets", "detail", "outcome", "answers"), "wardtap-audit.csv")
    return _json(rows, "wardtap-audit.json")


@handler(None)
def health(ctx: Ctx) -> Any:
    """For a load balancer: 200 when database and broker are reachable, else 503."""
    problems = ctx.console.health()
    return Response(json.dumps({"ok": not problems}),
                    media_type="application/json", status_code=200 if not problems else 503)


ROUTES = [
    Route("/", fleet),
    Route("/appliances/{site}/{appliance}", appliance),
    Route("/devices", devices),
    Route("/devices.{fmt:str}", devices_export),
    Route("/violations", violations),
    Route("/violations/flows", violation_flows),
    Route("/policies", policies),
    Route("/policies/{site}/{appliance}", policy_detail),
    Route("/audit", audit),
    Route("/audit.{fmt:str}", audit_export),
    Route("/health", health),
]
