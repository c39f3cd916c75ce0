"""Hostile input and access control against the running console (a real HTTP client).

Roles are checked on the server; wrong passwords are limited and audited; forged,
replayed and cross-site requests are refused; search fields take SQL and HTML as text.
"""

from __future__ import annotations

import re

import httpx
import pytest

from appliance.fleet.accounts import MAX_FAILURES
from console_web.webkit import (
    HOSTILE_NAME,
    HOSTILE_SITE,
    PASSWORD,
    PILOT,
    SITE,
    Fleet,
    csrf_of,
    login,
)

# one fleet (broker, PostgreSQL, appliance, console) and one browser: on one worker
pytestmark = pytest.mark.xdist_group("console_web")



def _audit(fleet: Fleet, action: str) -> list[tuple]:
    return fleet.query("SELECT username, outcome, detail FROM audit WHERE action = ? "
                       "ORDER BY id", (action,))


def test_a_viewer_and_an_operator_cannot_approve_or_push(fleet: Fleet) -> None:
    url = fleet.console.url
    admin = login(url, "admin")
    page = admin.get(f"/policies/{SITE}/{PILOT}").text
    r = admin.post(f"/policies/{SITE}/{PILOT}/propose", data={"csrf": csrf_of(page)},
                   headers={"Origin": url})
    assert r.status_code in (303, 200), r.text
    rid = fleet.query("SELECT max(id) FROM rollouts")[0][0]
    for role in ("viewer", "operator"):
        client = login(url, role)
        page = client.get(f"/policies/{SITE}/{PILOT}").text
        assert 'id="approve"' not in page and "fetch-proposal" not in page
        token = csrf_of(page)                    # its own valid session and token
        text = re.search(r"<pre>(.*?)</pre>", page, re.S)
        for path, data in ((f"/policies/{SITE}/{PILOT}/approve",
                            {"policy": text.group(1) if text else "x", "sha256": "x"}),
                           (f"/rollouts/{rid or 1}", {"stage": "pilot-monitor"}),
                           (f"/policies/{SITE}/{PILOT}/propose", {}), ("/users", {
                               "action": "add", "username": "mallory", "role": "admin",
                               "password": "mallory-password-1"})):
            r = client.post(path, data={**data, "csrf": token}, headers={"Origin": url})
            assert r.status_code == 403, (role, path, r.status_code)
            assert "needs the admin role" in r.text
    refused = [row for row in _audit(fleet, "refused") if row[0] in ("viewer", "operator")]
    assert len(refused) >= 8
    assert not fleet.query("SELECT 1 FROM users WHERE username = 'mallory'")
    # an operator may set a mode; a viewer may not
    viewer = login(url, "viewer")
    page = viewer.get(f"/appliances/{SITE}/{PILOT}").text
    r = viewer.post(f"/appliances/{SITE}/{PILOT}/command",
                    data={"csrf": csrf_of(page), "action": "mode", "mode": "bypass"},
                    headers={"Origin": url})
    assert r.status_code == 403


def test_wrong_passwords_are_limited_and_audited(fleet: Fleet) -> None:
    url = fleet.console.url
    client = httpx.Client(base_url=url, timeout=30)
    token = csrf_of(client.get("/login").text)
    codes = []
    try:
        for _ in range(MAX_FAILURES + 1):
            r = client.post("/login", data={"csrf": token, "username": "operator",
                                            "password": "wrong password!"},
                            headers={"Origin": url})
            codes.append(r.status_code)
        assert codes[:MAX_FAILURES] == [401] * MAX_FAILURES and codes[-1] == 429
        # now even the right password is refused until the window passes
        r = client.post("/login", data={"csrf": token, "username": "operator",
                                        "password": PASSWORD["operator"]},
                        headers={"Origin": url})
        assert r.status_code == 429 and "too many failed attempts" in r.text
        failed = [x for x in _audit(fleet, "login_failed") if x[0] == "operator"]
        assert len(failed) >= MAX_FAILURES
        assert any(x[1] == "throttled" for x in _audit(fleet, "login_refused"))
    finally:
        fleet.query("DELETE FROM login_failures RETURNING 1")    # let later tests log in


def test_forged_replayed_and_cross_site_requests_are_refused(fleet: Fleet) -> None:
    url = fleet.console.url
    forged = httpx.Client(base_url=url, cookies={"wardtap_session": "A" * 43}, timeout=30)
    r = forged.get("/")
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    client = login(url, "admin")
    cookie = client.cookies.get("wardtap_session")
    page = client.get("/").text
    token = csrf_of(page)
    # cross-site: a right cookie and token, but sent from another site's page
    for headers in ({"Origin": "http://evil.example"}, {"Referer": "http://evil.example/x"},
                    {}):
        r = client.post("/users", data={"csrf": token, "action": "add", "username": "eve",
                                        "role": "admin", "password": "eve-password-123"},
                        headers=headers)
        assert r.status_code == 403 and "cross-site" in r.text
    r = client.post("/users", data={"csrf": "wrong", "action": "add", "username": "eve",
                                    "role": "admin", "password": "eve-password-123"},
                    headers={"Origin": url})
    assert r.status_code == 403 and "CSRF" in r.text
    assert not fleet.query("SELECT 1 FROM users WHERE username = 'eve'")
    # log out; the copied cookie is then worthless
    r = client.post("/logout", data={"csrf": token}, headers={"Origin": url})
    assert r.status_code == 303
    replay = httpx.Client(base_url=url, cookies={"wardtap_session": cookie}, timeout=30)
    r = replay.get("/audit")
    assert r.status_code == 303 and r.headers["location"].startswith("/login")


def test_injection_in_search_fields_is_only_text(fleet: Fleet) -> None:
    url = fleet.console.url
    client = login(url, "viewer")
    hostile = ["' OR 1=1 --", "'; DROP TABLE devices; --", "<script>alert(1)</script>",
               "%", "_", "\\", '" onmouseover="x', "\x00", "ward-4b' UNION SELECT * FROM users--"]
    for q in hostile:
        for path, params in (("/devices", {"q": q, "field": "any"}),
                             ("/devices", {"q": q, "field": "ip"}),
                             ("/devices", {"q": q, "field": q}),
                             ("/devices.csv", {"q": q}), ("/devices.json", {"q": q}),
                             ("/violations", {"appliance": q, "window": q, "site": q}),
                             ("/audit", {"q": q, "action": q, "user": q, "window": q}),
                             ("/", {"site": q, "sort": q}),
                             (f"/appliances/{SITE}/{PILOT}", {"start": q, "end": q,
                                                              "step": q})):
            r = client.get(path, params=params)
            assert r.status_code == 200, (path, q, r.text[:500])
            if r.headers["content-type"].startswith("text/html"):
                assert "<script>alert" not in r.text and 'onmouseover="x' not in r.text
            else:                               # exports are data: served as attachments
                assert r.headers["content-disposition"].startswith("attachment")
                assert r.headers["x-content-type-options"] == "nosniff"
    assert fleet.query("SELECT count(*) FROM devices")[0][0] > 0     # nothing dropped
    # LIKE wildcards are literal: "%" finds only the device whose name holds a "%"
    page = client.get("/devices", params={"q": "%"}).text
    assert "02:00:00:00:00:02" in page and "02:00:00:00:00:01" not in page
    page = client.get("/devices", params={"q": "<script>"}).text
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    assert HOSTILE_NAME not in page
    # a spreadsheet opening the export does not run a formula
    csv_text = client.get("/devices.csv", params={"q": "10.9.9"}).text
    assert "02:00:00:00:00:02" in csv_text and "'=HYPERLINK" in csv_text


def test_malformed_appliance_messages_are_counted_and_shown(fleet: Fleet) -> None:
    client = login(fleet.console.url, "viewer")
    assert "malformed messages from appliances were counted" in client.get("/").text
    page = client.get(f"/appliances/{HOSTILE_SITE}/ward-9z").text
    assert "Malformed messages (latest)" in page and "events: not valid JSON" in page
    assert "{not json" in page                           # the sample, as text
