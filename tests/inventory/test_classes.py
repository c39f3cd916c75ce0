"""Device classes from the readable rule file: scores, confidence, hysteresis, bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.inventory.classes import ClassRules, ClassRulesError, parse_rules
from appliance.inventory.devices import Inventory

RULES = ClassRules.load()


def test_the_issue_example_pump_vendor_and_tls_to_pump_server() -> None:
    for vendor in ("B.Braun Melsungen AG", "Baxter International Inc",
                   "Becton Dickinson and Company"):
        d = RULES.decide({"vendor": [vendor], "tls.sni": ["pumpserver.hosp.example"]})
        assert d.cls == "infusion pump" and d.confidence >= 0.9, (vendor, d)
        assert [m["rule"] for m in d.matched] == [
            "infusion pump maker's MAC", "infusion pump maker's MAC and TLS to a pump server"]
    vendor_only = RULES.decide({"vendor": ["B.Braun Melsungen AG"]})
    assert vendor_only.cls == "infusion pump" and vendor_only.confidence == 0.5


def test_too_little_evidence_is_unknown() -> None:
    d = RULES.decide({"vendor": ["Raspberry Pi Trading Ltd"], "tls.sni": ["emr.hosp.example"],
                      "flow.client": ["tcp/443"]})
    assert d.cls == "unknown" and d.confidence == 0.0


def test_contradiction_lowers_confidence_and_hysteresis_keeps_the_class() -> None:
    monitor = {"vendor": ["GE Healthcare"], "hl7.app": ["CARESCAPE"], "hl7.sends": ["ORU^R01"]}
    first = RULES.decide(monitor)
    assert first.cls == "patient monitor"
    # the same MAC now also opens a DICOM association: contradictory evidence
    mixed = dict(monitor, **{"dicom.role": ["SCU"]})
    second = RULES.decide(mixed, current=first.cls)
    assert second.cls == "patient monitor"               # not flipped
    assert second.confidence < first.confidence          # but less sure
    assert second.contradicting and second.contradicting[0]["rule"]
    # a class that leads by the switch margin wins
    weak = {"vendor": ["Hewlett Packard"], "flow.server": ["tcp/9100"]}
    assert RULES.decide(weak).cls == "printer"
    strong = dict(weak, **{"lldp.capability": ["bridge"], "lldp.system_desc": ["ProCurve"],
                           "flow.server": []})
    switched = RULES.decide(strong, current="printer")
    assert switched.cls == "network gear" and not switched.kept


def test_hysteresis_in_the_inventory_does_not_flap() -> None:
    inv = Inventory(RULES)
    mac = "44:4b:5d:12:08:a1"
    rec = {"ts": 1.0, "smac": mac, "dmac": "00:09:fb:3c:40:02", "src": "10.1.1.5",
           "dst": "10.1.1.10", "ev": [["src", "hl7.app", "CARESCAPE", "hl7 MSH-3", "ip"],
                                      ["src", "hl7.sends", "ORU^R01", "hl7 MSH-9", "ip"]]}
    inv.observe_records([rec])
    events = inv.classify()
    assert [e["class"] for e in events if e["type"] == "device_classified"
            and e["mac"] == mac] == ["patient monitor"]
    confident = inv.devices[mac].confidence
    classes = []
    for _ in range(3):   # contradicting evidence arrives, then the monitor's again, repeatedly
        inv.observe_records([dict(rec, ev=[["src", "dicom.role", "SCU", "dicom", "ip"]])])
        classes += [e["class"] for e in inv.classify() if e["type"] == "device_classified"]
        inv.observe_records([rec])
        classes += [e["class"] for e in inv.classify() if e["type"] == "device_classified"]
    assert classes == []                                  # no flapping
    assert inv.devices[mac].cls == "patient monitor"
    assert inv.devices[mac].confidence < confident


def test_router_keeps_only_link_local_evidence() -> None:
    inv = Inventory(RULES)
    mac = "00:26:cb:4a:10:01"
    inv.observe_records([{"ts": 1.0, "smac": mac, "dmac": "00:12:21:5e:a0:11",
                          "src": "10.20.0.15", "dst": "10.40.104.11",
                          "ev": [["src", "tls.cert_subject", "CN=pumpserver", "tls", "ip"]]}])
    inv.observe_devices([{"index": 0, "mac": mac, "ipv4": "10.20.0.15", "ipv6": None,
                          "multi_ip": True, "vlan": None, "first_seen": 1.0, "last_seen": 2.0,
                          "packets_sent": 10, "bytes_sent": 1000, "packets_received": 5,
                          "bytes_received": 500, "flows": 2, "violations": 0}])
    inv.observe_records([{"ts": 2.0, "smac": mac, "dmac": "ff:ff:ff:ff:ff:ff",
                          "src": "10.40.1.1", "dst": "255.255.255.255",
                          "ev": [["src", "dhcp.role", "relay", "dhcp", "link"]]}])
    inv.classify()
    dev = inv.devices[mac]
    assert dev.router and ("tls.cert_subject", "CN=pumpserver") not in dev.evidence
    assert ("dhcp.role", "relay") in dev.evidence
    assert set(dev.ips) == {"10.40.1.1"}                  # its own, not the servers behind it
    assert dev.cls == "network gear"


def test_rule_file_errors_name_the_line(tmp_path: Path) -> None:
    good = Path(RULES.path).read_text()
    bad = good.replace('class = "printer"\nname = "serves printing',
                       'class = "printers"\nname = "serves printing')
    with pytest.raises(ClassRulesError, match=r"device-classes.toml:\d+: .*'printers'"):
        parse_rules(bad, RULES.path)
    with pytest.raises(ClassRulesError, match="no list 'nope'"):
        parse_rules(good.replace('vendor = ["@pump_makers"]\n', 'vendor = ["@nope"]\n', 1),
                    RULES.path)
    with pytest.raises(ClassRulesError, match="score must be"):
        parse_rules(good.replace("score = 0.5\n", "score = 5\n", 1), RULES.path)
    path = tmp_path / "rules.toml"
    path.write_text(good + '\n[[rules]]\nclass = "IoT"\nname = "mine"\nscore = 0.9\n'
                    '"mdns.model" = ["*thermostat*"]\n')
    assert ClassRules.load(str(path)).decide({"mdns.model": ["Ward Thermostat"]}).cls == "IoT"


@pytest.mark.parametrize(("facts", "cls"), [
    ({"dicom.role": ["SCP"], "dicom.receives": ["C-STORE-RQ"]}, "image archive"),
    ({"dicom.role": ["SCP"], "dicom.receives": ["C-FIND-RQ"], "flow.server": ["tcp/104"]},
     "image archive"),
    ({"hl7.receives": ["ADT^A01"], "flow.server": ["tcp/2575"]}, "HL7 interface engine"),
    ({"hl7.app": ["EPIC^EMR"], "hl7.receives": ["ORU^R01"]}, "HL7 interface engine"),
    ({"dhcp.role": ["server"]}, "DHCP server"),
    ({"flow.server": ["udp/53"]}, "DNS server"),
    ({"flow.server": ["udp/123"]}, "NTP server"),
    ({"flow.server": ["tcp/389", "tcp/88", "udp/88"]}, "directory server"),
    ({"flow.server": ["tcp/445"]}, "file server"),
])
def test_servers_and_infrastructure_have_classes(facts: dict[str, list[str]], cls: str) -> None:
    d = RULES.decide(facts)
    assert d.cls == cls and d.confidence >= 0.5, d
    assert cls in d.roles


def test_server_roles_do_not_contradict_each_other() -> None:
    d = RULES.decide({"dhcp.role": ["server"], "flow.server": ["udp/53", "udp/123"]})
    assert d.cls == "DHCP server" and d.confidence == 0.9 and d.contradicting == []
    assert d.roles == ["DHCP server", "DNS server", "NTP server"]
    # a central station's application is not an interface engine
    central = RULES.decide({"hl7.app": ["PIIC-IX"], "hl7.receives": ["ORU^R01"],
                            "flow.server": ["tcp/2575"]})
    assert central.cls == "central station" and "HL7 interface engine" not in central.roles


def test_a_maker_of_several_kinds_adds_little_to_any_one() -> None:
    """GE Healthcare builds monitors and imaging: its MAC alone is not enough for either."""
    d = RULES.decide({"vendor": ["GE Healthcare"]})
    assert d.cls == "unknown"
    assert d.scores["patient monitor"] == 0.2 and d.scores["imaging modality"] == 0.175
    one_kind = RULES.decide({"vendor": ["Siemens Healthineers"]})
    assert one_kind.scores["imaging modality"] == 0.35


def test_models_name_make_model_and_class() -> None:
    from appliance.inventory.models import ModelCatalogue

    catalogue = ModelCatalogue(RULES.doc)
    found = catalogue.identify({"dhcp.vendor_class": ["Alaris 8015 9.19.2"]})
    assert found is not None
    assert (found.make, found.model, found.version) == ("BD", "Alaris 8015 PC unit", "9.19.2")
    d = RULES.decide({"dhcp.vendor_class": ["Alaris 8015"]})
    assert d.cls == "infusion pump" and d.confidence >= 0.9
    assert catalogue.identify({"dhcp.vendor_class": ["MSFT 5.0"]}) is None


def test_a_bad_model_entry_names_its_line(tmp_path: Path) -> None:
    text = RULES_TEXT + '\n[[models]]\nmake = "X"\nmodel = "Y"\nmatch = { "a" = ["b"] }\n' \
        'version = { "a" = "(?P<version" }\n'
    with pytest.raises(ClassRulesError, match=r"model 'Y': version for a is not a valid "
                       r"regular expression"):
        parse_rules(text, "rules.toml")


RULES_TEXT = Path(RULES.path).read_text()
