"""CSAF 2.0 advisories (real CISA ICSMA files, tests/data/csaf) matched against the demo
ward's inventory: every device whose make and model an advisory names is matched, with
version ranges deciding "affected" and "possibly affected (version unknown)"; same maker,
other product never matches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, run_wardtap

from appliance.inventory.advisories import (
    AdvisoryError,
    load_file,
    match_device,
    parse_csaf,
    version_status,
)
from appliance.inventory.classes import ClassRules
from demoward.ward import DemoWard, write_demo_ward

CSAF = ROOT / "tests" / "data" / "csaf"
ICSMA = sorted(str(p) for p in CSAF.glob("icsma-*.json"))

# demo device -> the advisories that name its make and model, and the expected status
EXPECTED = {
    "pump-01": {"ICSMA-20-296-02": "affected"},                          # SpaceCom L80
    "pump-02": {"ICSMA-20-296-02": "affected"},
    "pump-03": {"ICSMA-20-296-02": "possibly affected (version unknown)"},
    "pump-04": {"ICSMA-20-170-04": "possibly affected (version not comparable)"},
    "pump-05": {"ICSMA-20-170-04": "possibly affected (version not comparable)"},
    "pump-06": {"ICSMA-17-017-02": "affected", "ICSMA-20-317-01": "affected"},  # 9.19.2
    "mon-bed01": {"ICSMA-18-156-01": "possibly affected (version unknown)"},
    "mon-bed02": {"ICSMA-18-156-01": "possibly affected (version unknown)"},
    "mon-bed03": {"ICSMA-18-156-01": "possibly affected (version unknown)"},
    "mon-bed04": {"ICSMA-18-156-01": "possibly affected (version unknown)"},
    "mon-bed05": {"ICSMA-20-023-01": "possibly affected (version unknown)"},   # B650
    "mon-bed06": {"ICSMA-20-023-01": "possibly affected (version unknown)"},
    "central": {"ICSMA-18-233-01": "possibly affected (version unknown)",
                "ICSMA-21-322-02": "possibly affected (version unknown)"},     # PIC iX
}
# same maker, another product: must never match (MX40, ultrasound, Welch Allyn)
NEVER = {"ICSMA-17-255-01", "ICSMA-20-177-01", "ICSMA-20-049-02", "ICSMA-24-151-02"}


@pytest.fixture(scope="module")
def ward(tmp_path_factory: pytest.TempPathFactory) -> DemoWard:
    return write_demo_ward(tmp_path_factory.mktemp("ward") / "ward.pcap", packets=20000)


@pytest.fixture(scope="module")
def matched(ward: DemoWard, tmp_path_factory: pytest.TempPathFactory,
            tshark: str) -> tuple[Path, dict[str, dict[str, Any]], str]:
    db = tmp_path_factory.mktemp("store") / "wardtap.db"
    r = run_wardtap("replay", ward.path, "--dissect", "--db", str(db), timeout=180)
    assert r.returncode == 0, r.stderr
    imported = run_wardtap("advisories", "import", *ICSMA, "--db", str(db))
    assert imported.returncode == 0, imported.stderr
    r = run_wardtap("devices", "--db", str(db), "--json")
    return db, {d["mac"]: d for d in json.loads(r.stdout)}, imported.stdout


def test_every_demo_device_an_advisory_names_is_matched(
        ward: DemoWard, matched: tuple[Path, dict[str, dict[str, Any]], str]) -> None:
    _, devices, _ = matched
    by_name = {d.name: devices[d.mac] for d in ward.devices}
    got = {name: {a["id"]: a["status"] for a in dev["advisories"]}
           for name, dev in by_name.items() if dev["advisories"]}
    assert got == EXPECTED
    for dev in by_name.values():
        for a in dev["advisories"]:
            # matched by product, never by the maker alone; the CVSS and fix come along
            assert "matches '" in a["why"] and a["cvss"] and a["remediation"], a
            assert a["id"] not in NEVER


def test_devices_without_a_known_model_match_nothing(
        ward: DemoWard, matched: tuple[Path, dict[str, dict[str, Any]], str]) -> None:
    _, devices, _ = matched
    for d in ward.devices:
        if devices[d.mac]["model"] is None:
            assert devices[d.mac]["advisories"] == [], d.name


def test_import_reports_new_matches_and_why_shows_them(
        ward: DemoWard, matched: tuple[Path, dict[str, dict[str, Any]], str]) -> None:
    db, devices, imported = matched
    assert imported.startswith(f"{len(ICSMA)} advisories imported (0 already stored), "
                               f"{sum(len(v) for v in EXPECTED.values())} new device matches")
    again = run_wardtap("advisories", "import", *ICSMA, "--db", str(db))
    assert again.stdout.startswith(f"0 advisories imported ({len(ICSMA)} already stored), "
                                   "0 new device matches")
    pump = next(d for d in ward.devices if d.name == "pump-06")
    why = run_wardtap("devices", "--db", str(db), "--why", pump.mac).stdout
    assert "make        BD  model Alaris 8015 PC unit  software 9.19.2" in why
    assert "ICSMA-20-317-01  affected  CVSS 6.5" in why
    assert "9.19.2 within '<= 9.33.1'" in why
    table = run_wardtap("devices", "--db", str(db), "--csv").stdout.splitlines()
    row = next(line for line in table if line.startswith(pump.mac))
    assert "ICSMA-20-317-01 (affected)" in row and "BD,Alaris 8015 PC unit,9.19.2" in row
    listing = run_wardtap("advisories", "list", "--db", str(db), "--json")
    rows = {r["id"]: r for r in json.loads(listing.stdout)}
    assert rows["ICSMA-20-317-01"]["devices"] == [f"{pump.mac} (affected)"]
    assert rows["ICSMA-17-255-01"]["devices"] == []


def test_version_ranges_as_cisa_writes_them() -> None:
    assert version_status("<= 9.33.1", "9.19.2")[0] == "affected"
    assert version_status("<= 9.33.1", "9.40")[0] == "not affected"
    assert version_status("<= U61 |<= L81", "L80")[0] == "affected"
    assert version_status("<= U61 |<= L81", "L82")[0] == "not affected"     # U61: other line
    assert version_status("2.X", "2.1")[0] == "affected"
    assert version_status("2.X", "3.0")[0] == "not affected"
    assert version_status(">= 2.0 | <= 3.0", "3.5")[0] == "not affected"
    assert version_status("A10 < A11", "A11")[0] == "not affected"
    assert version_status("vers:all/*", None)[0] == "affected"
    assert version_status("<= 9.33.1", None)[0] == "possibly affected (version unknown)"
    assert version_status("Rev B-M", "9.1")[0] == "possibly affected (version not comparable)"


def test_a_cpe_names_the_product_and_its_versions() -> None:
    """The BSI advisory gives CPEs (CISA's ICSMA files do not)."""
    adv = load_file(str(CSAF / "bsi-2022-0001.json"))[0]
    device = {"make": "CSAF Tools", "model": "CVRF-CSAF-Converter",
              "cpe": "cpe:2.3:a:csaf-tools:cvrf-csaf-converter", "advisory_products": []}
    hit = match_device(dict(device, software_version="1.0.0-dev2"), [adv], {})
    assert [(a["id"], a["status"]) for a in hit] == [("BSI-2022-0001", "affected")]
    assert hit[0]["why"].startswith("CPE cpe:/a:csaf-tools:cvrf-csaf-converter")
    assert match_device(dict(device, software_version="1.0.0"), [adv], {}) == []
    unknown = match_device(dict(device, software_version=None), [adv], {})
    assert unknown[0]["status"] == "possibly affected (version unknown)"
    other = dict(device, cpe="cpe:2.3:a:csaf-tools:another-tool", software_version="1.0.0-dev2")
    assert match_device(other, [adv], {}) == []


def test_a_maker_alone_never_matches() -> None:
    rules = ClassRules.load()
    makers = rules.doc["makers"]
    advisories = [load_file(p)[0] for p in ICSMA]
    # Philips advisories in the set name monitors, PACS-side and ultrasound products: none
    # of them is this one, so the maker alone gives nothing
    other = {"make": "Philips", "model": "SureSigns VS3", "software_version": None,
             "advisory_products": ["*suresigns*vs3*"]}
    assert match_device(other, advisories, makers) == []
    # an empty product list falls back to the model's own name, never to the vendor
    bare = {"make": "GE Healthcare", "model": "CARESCAPE R860", "software_version": None}
    assert match_device(bare, advisories, makers) == []
    pump = {"make": "Baxter", "model": "Sigma Spectrum", "software_version": None,
            "advisory_products": ["sigma spectrum"]}
    assert {a["id"] for a in match_device(pump, advisories, makers)} == {"ICSMA-20-170-04"}


def test_bad_advisory_files_are_one_line_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    old = tmp_path / "cvrf.json"
    old.write_text(json.dumps({"document": {"csaf_version": "1.2"}}))
    db = tmp_path / "wardtap.db"
    for path, message in ((bad, "not JSON"), (old, "csaf_version 1.2; CSAF 2.0 is supported")):
        r = run_wardtap("advisories", "import", ICSMA[0], str(path), "--db", str(db))
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    listing = run_wardtap("advisories", "list", "--db", str(db), "--json")
    assert json.loads(listing.stdout or "[]") == []        # nothing stored from a bad batch
    with pytest.raises(AdvisoryError, match="tracking.id"):
        parse_csaf({"document": {"csaf_version": "2.0", "tracking": {}}})
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_a_running_inventory_picks_up_imported_advisories(
        ward: DemoWard, matched: tuple[Path, dict[str, dict[str, Any]], str],
        tmp_path: Path) -> None:
    """The daemon's snapshot rereads the advisories when the store's change: a new match is
    an advisory_match event for the outputs (the fleet among them)."""
    from appliance.inventory.identify import Identification
    from appliance.inventory.persist import import_advisory
    from appliance.outputs.store import Store

    db = tmp_path / "copy.db"
    shutil.copy(matched[0], db)
    with Store(str(db)) as store:
        store.db.execute("DELETE FROM advisories")
        store.db.execute("UPDATE inventory SET advisories = '[]'")
        ident = Identification(store=store)
        assert ident.snapshot([]) == []
        adv, text = load_file(str(CSAF / "icsma-20-317-01.json"))
        assert import_advisory(store, adv, text, "icsma-20-317-01.json")
        events = ident.snapshot([])
    pump = next(d for d in ward.devices if d.name == "pump-06")
    assert [(e["type"], e["mac"], e["advisory"], e["status"]) for e in events] == [
        ("advisory_match", pump.mac, "ICSMA-20-317-01", "affected")]
