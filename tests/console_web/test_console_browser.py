"""The console in a real headless Chromium: what an admin does, end to end.

Log in, see the appliance, search a device, open and zoom the timeline, review the policy
diff, approve a staged rollout that the real `wardtap run` applies (pushed in monitor mode,
then enforced, then rolled back), and find every step in the audit log. Screenshots of the
main pages are saved as artefacts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By

from console_web.webkit import (
    HOSTILE_NAME,
    HOSTILE_SITE,
    NEIGHBOUR,
    PASSWORD,
    PILOT,
    SITE,
    Fleet,
    wait_for,
)

# one fleet (broker, PostgreSQL, appliance, console) and one browser: on one worker
pytestmark = pytest.mark.xdist_group("console_web")



def _shot(driver: Any, artifacts: Path, name: str) -> None:
    driver.save_screenshot(str(artifacts / f"{name}.png"))


def _gone(element: Any) -> bool:
    try:
        element.is_enabled()
        return False
    except WebDriverException:          # stale, or its document is being replaced
        return True


def _click(driver: Any, css: str) -> None:
    """Click a button that submits a form, and wait for the next page."""
    old = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.CSS_SELECTOR, css).click()
    wait_for(lambda: _gone(old), timeout=60, what=f"the page after clicking {css}")


def _answers(driver: Any) -> str:
    """The per-appliance answers of a command (the page's text if there are none)."""
    tables = driver.find_elements(By.CSS_SELECTOR, "table.answers")
    assert tables, _text(driver)
    return str(tables[0].text)


def _text(driver: Any) -> str:
    return str(driver.find_element(By.TAG_NAME, "body").text)


def test_admin_reviews_and_rolls_out_a_policy_in_a_browser(fleet: Fleet, browser: Any,
                                                           artifacts: Path) -> None:
    d, url = browser, fleet.console.url
    d.get(url + "/")
    assert "/login" in d.current_url                  # not logged in: the log-in page
    d.find_element(By.ID, "username").send_keys("admin")
    d.find_element(By.ID, "password").send_keys(PASSWORD["admin"])
    _click(d, "#login")
    wait_for(lambda: d.find_elements(By.ID, "fleet"), timeout=20, what="the fleet page")
    fleet_text = d.find_element(By.ID, "fleet").text
    assert f"{PILOT}" in fleet_text and "online" in fleet_text and "learn" in fleet_text
    _shot(d, artifacts, "fleet")

    # an operator's action: the appliance publishes its inventory now
    d.get(f"{url}/appliances/{SITE}/{PILOT}")
    _click(d, "button.refresh-inventory")
    assert "ok" in _answers(d) and "devices" in _answers(d)
    wait_for(lambda: fleet.query("SELECT count(*) FROM devices WHERE appliance = ?",
                                 (PILOT,))[0][0] > 5, timeout=30,
             what="the refreshed inventory in the fleet database")

    # a device search across the fleet
    d.get(url + "/devices")
    d.find_element(By.ID, "q").send_keys("braun")
    _click(d, "#search")
    results = d.find_element(By.ID, "device-results").text
    assert "B.Braun" in results and f"{SITE}/{PILOT}" in results, results
    _shot(d, artifacts, "devices")

    # the appliance page: its timeline plot, zoomed by a click on a bar
    d.find_element(By.LINK_TEXT, f"{SITE}/{PILOT}").click()
    wait_for(lambda: d.find_elements(By.ID, "timeline-plot"), what="the appliance page")
    d.get(d.find_element(By.LINK_TEXT, "all data").get_attribute("href"))
    plot = d.find_element(By.ID, "timeline-plot")
    assert plot.find_elements(By.CSS_SELECTOR, "rect")
    _shot(d, artifacts, "appliance")
    bars = d.find_elements(By.CSS_SELECTOR, "#timeline-plot a")
    assert bars
    href = bars[-1].get_dom_attribute("href")          # "?start=..&end=..&step=minute"
    d.get(d.current_url.split("?")[0] + href)
    assert "per minute" in _text(d)

    # the policy review: fetch what the appliance learned, read the diff in words
    d.get(f"{url}/policies/{SITE}/{PILOT}")
    _click(d, "#fetch-proposal")
    wait_for(lambda: d.find_elements(By.ID, "policy-diff"), timeout=30,
             what="the learned-vs-running diff")
    diff = d.find_element(By.ID, "policy-diff").text
    assert "policy diff: running (demo-ward-4b v1) -> learned" in diff
    assert "newly allowed conversations" in diff or "newly denied conversations" in diff
    _shot(d, artifacts, "policy-review")
    _click(d, "#approve")
    assert "approved" in d.find_element(By.ID, "rollouts").text

    # stage 1: push to the pilot in monitor mode; the real appliance applies it
    _click(d, "button.stage-pilot-monitor")
    answers = _answers(d)
    assert "FAILED" not in answers and "policy demo-ward-4b v2" in answers, answers
    _shot(d, artifacts, "rollout-pilot")
    wait_for(lambda: fleet.query("SELECT mode, policy_name, policy_version FROM appliances "
                                 "WHERE appliance = ?", (PILOT,)) ==
             [("monitor", "demo-ward-4b", 2)], timeout=30,
             what="the appliance to report the pushed policy in monitor mode")
    assert "version = 2" in (fleet.appliance_dir / "policy.toml").read_text()

    # stage 2: enforce on the pilot; then roll back to the previous policy and mode
    d.get(f"{url}/policies/{SITE}/{PILOT}")
    _click(d, "button.stage-pilot-enforce")
    assert "FAILED" not in _answers(d)
    wait_for(lambda: fleet.query("SELECT mode FROM appliances WHERE appliance = ?",
                                 (PILOT,)) == [("enforce",)], timeout=30, what="enforce")
    # stage 3: the rest of the site (its mode unchanged)
    d.get(f"{url}/policies/{SITE}/{PILOT}")
    _click(d, "button.stage-site")
    answers = _answers(d)
    assert f"{SITE}/{NEIGHBOUR}" in answers and "FAILED" not in answers, answers
    wait_for(lambda: fleet.query("SELECT mode, policy_version FROM appliances WHERE "
                                 "appliance = ?", (NEIGHBOUR,)) == [("learn", 2)],
             timeout=30, what="the rest of the site on the new policy")
    assert "site" in d.find_element(By.TAG_NAME, "body").text
    # roll back: every appliance reached gets its previous policy and mode
    d.get(f"{url}/policies/{SITE}/{PILOT}")
    _click(d, "button.danger")
    answers = _answers(d)
    assert "FAILED" not in answers and f"{SITE}/{NEIGHBOUR}" in answers, answers
    wait_for(lambda: fleet.query("SELECT appliance, mode, policy_version FROM appliances "
                                 "WHERE site = ? ORDER BY appliance", (SITE,)) ==
             [(PILOT, "learn", 1), (NEIGHBOUR, "learn", 1)], timeout=30,
             what="both appliances back on their previous policy and mode")

    # the audit log: who did what, to which appliance, and its answer
    d.get(url + "/audit")
    audit = d.find_element(By.ID, "audit").text
    for action in ("propose", "policy_approve", "rollout_pilot-monitor",
                   "rollout_pilot-enforce", "rollout_site", "rollout_rolled-back", "login"):
        assert action in audit, action
    assert f"{SITE}/{PILOT}" in audit and "admin (admin)" in audit
    _shot(d, artifacts, "audit")
    d.get(url + "/violations?window=all")
    _shot(d, artifacts, "violations")
    for name in ("fleet", "devices", "appliance", "policy-review", "audit", "violations"):
        assert (artifacts / f"{name}.png").stat().st_size > 10_000


def test_a_device_named_script_renders_as_text(fleet: Fleet, browser: Any,
                                               artifacts: Path) -> None:
    d, url = browser, fleet.console.url
    d.get(url + "/devices?q=script")
    if "/login" in d.current_url:
        d.find_element(By.ID, "username").send_keys("viewer")
        d.find_element(By.ID, "password").send_keys(PASSWORD["viewer"])
        _click(d, "#login")
        d.get(url + "/devices?q=script")
    results = d.find_element(By.ID, "device-results").text
    assert HOSTILE_NAME in results                      # shown as the literal text
    d.implicitly_wait(0)                                # absence: no need to wait for it
    try:
        assert not d.find_elements(By.CSS_SELECTOR, "#device-results script")
        d.get(f"{url}/appliances/{HOSTILE_SITE}/ward-9z")
        body = _text(d)
        assert HOSTILE_NAME in body and "make: Acme <i>" in body   # extra fields, as text
        assert not d.find_elements(By.CSS_SELECTOR, "main script, main td i")
    finally:
        d.implicitly_wait(10)
    _shot(d, artifacts, "hostile-device")
