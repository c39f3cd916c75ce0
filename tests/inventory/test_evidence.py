"""Evidence the real tshark finds in each identifying protocol, and the classes it leads to."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import invcaptures as caps
import pytest
from invcaptures import evidence

from appliance.inventory.dissector import DECODE_AS, DissectConfig
from appliance.inventory.identify import Identification
from appliance.inventory.tshark import dissect_file
from appliance.replay.runner import Replayer


@pytest.fixture(scope="module")
def protocols_pcap(tmp_path_factory: pytest.TempPathFactory) -> str:
    return caps.write_protocols(tmp_path_factory.mktemp("captures") / "protocols.pcap")


@pytest.fixture(scope="module")
def protocol_records(protocols_pcap: str, tshark: str) -> list[dict[str, Any]]:
    """What the worker extracts from the protocol capture with the real tshark."""
    result = dissect_file(protocols_pcap, tshark, DECODE_AS)
    assert result["packets"] > 30 and result["unparsed"] == 0
    return list(result["records"])


@pytest.fixture(scope="module")
def identified(protocols_pcap: str, tshark: str) -> Iterator[dict[str, dict[str, Any]]]:
    """The protocol capture through the fast path, the Dissector and the Inventory."""
    replayer = Replayer()
    ident = Identification(DissectConfig(tshark=tshark, block=True))
    replayer.enable_identification(ident)
    try:
        replayer.run([protocols_pcap])
        ident.finish(replayer.devices(), timeout=60)
        yield {d["mac"]: d for d in ident.inventory.as_list()}
    finally:
        ident.close()


def test_dhcp_hostname_vendor_class_and_request_list(protocol_records: list[dict[str, Any]]
                                                     ) -> None:
    ws = evidence(protocol_records, caps.WS.mac)
    assert ws["dhcp.hostname"] == {"WS-NURSE1"}
    assert ws["dhcp.vendor_class"] == {"MSFT 5.0"}
    assert ws["dhcp.prl"] == {"1,3,6,15,31,33,43,44,46,47,119,121,249,252"}
    assert ws["ip.assigned"] == {caps.WS.ip}                 # from the relay's ACK
    assert evidence(protocol_records, caps.GW.mac)["dhcp.role"] == {"relay"}


def test_lldp_and_cdp(protocol_records: list[dict[str, Any]]) -> None:
    sw = evidence(protocol_records, caps.SWITCH_MAC)
    assert sw["lldp.system_name"] == {"sw-ward4b"}
    assert sw["lldp.system_desc"] == {"Cisco IOS Software, C2960X Software, Version 15.2(7)E8"}
    assert sw["lldp.capability"] == {"bridge"}               # enabled capabilities
    assert sw["ip.own"] == {"10.40.1.2"}                     # management address
    sw2 = evidence(protocol_records, caps.SWITCH2_MAC)
    assert sw2["cdp.device_id"] == {"sw-ward4c.hosp.example"}
    assert sw2["cdp.platform"] == {"cisco WS-C2960X-48FPD-L"}
    assert "switch" in sw2["cdp.capability"]


def test_mdns_and_ssdp(protocol_records: list[dict[str, Any]]) -> None:
    prn = evidence(protocol_records, caps.PRINTER.mac)
    assert prn["mdns.service"] == {"_ipp._tcp"}
    assert prn["mdns.instance"] == {"HP LaserJet M507 [5B2280]"}
    assert prn["mdns.model"] == {"HP LaserJet M507"}
    assert prn["mdns.name"] == {"NPI5B2280"}
    tv = evidence(protocol_records, caps.TV.mac)
    assert tv["ssdp.server"] == {"Linux/4.9 UPnP/1.0 Samsung-TV/1.0"}
    assert tv["ssdp.type"] == {"urn:schemas-upnp-org:device:MediaRenderer:1"}


def test_hl7_msh_over_mllp_and_nothing_about_the_patient(
        protocol_records: list[dict[str, Any]]) -> None:
    mon = evidence(protocol_records, caps.MONITOR.mac)
    assert mon["hl7.app"] == {"IntelliVue"}
    assert mon["hl7.facility"] == {"MON-BED01"}
    assert mon["hl7.sends"] == {"ORU^R01"}
    assert mon["hl7.receives"] == {"ACK^R01"}
    central = evidence(protocol_records, caps.CENTRAL.mac)
    assert central["hl7.app"] == {"PIIC-IX"}
    assert central["hl7.receives"] == {"ORU^R01"}
    sources = {s for r in protocol_records for _, k, _, s, _ in r["ev"] if k.startswith("hl7")}
    assert "hl7 MSH-3 (sending application)" in sources
    text = repr(protocol_records)
    assert "PATIENT" not in text and "TEST0001" not in text and "Heart rate" not in text


def test_dicom_association_ae_titles(protocol_records: list[dict[str, Any]]) -> None:
    us = evidence(protocol_records, caps.US.mac)
    assert us["dicom.ae"] == {"ACUSON_US01"}
    assert us["dicom.role"] == {"SCU"}
    assert us["dicom.sop_class"] == {"Ultrasound Image Storage"}
    assert us["dicom.implementation"] == {"ACUSON_SEQ_VA30"}
    # the PACS is behind the router: its evidence lands on the router's MAC, which the
    # inventory ignores for routed ("ip" scope) evidence
    answer = [r for r in protocol_records if r.get("src") == caps.PACS.ip
              and any(k == "dicom.ae" for _, k, _, _, _ in r["ev"])]
    assert answer and all(scope == "ip" for r in answer for *_, scope in r["ev"])


def test_tls_sni_and_reassembled_server_certificate(
        protocol_records: list[dict[str, Any]]) -> None:
    pump = evidence(protocol_records, caps.PUMP.mac)
    assert pump["tls.sni"] == {caps.PUMP_CERT_CN}
    assert len(next(iter(pump["tls.ja3"]))) == 32
    subject = f"CN={caps.PUMP_CERT_CN},O=Example Hospital,C=US"
    assert pump["peer.tls.cert_subject"] == {subject}       # the flight spans two segments


def test_http_user_agent_and_server(protocol_records: list[dict[str, Any]]) -> None:
    ws = evidence(protocol_records, caps.WS.mac)
    assert ws["http.user_agent"] == {"Mozilla/5.0 (Windows NT 10.0; Win64; x64)"}
    assert evidence(protocol_records, caps.PRINTER.mac)["http.server"] == {
        "HP HTTP Server; HP LaserJet M507"}


def test_each_device_gets_its_class(identified: dict[str, dict[str, Any]]) -> None:
    expected = {
        caps.WS.mac: "workstation", caps.SWITCH_MAC: "network gear",
        caps.SWITCH2_MAC: "network gear", caps.PRINTER.mac: "printer", caps.TV.mac: "IoT",
        caps.MONITOR.mac: "patient monitor", caps.CENTRAL.mac: "central station",
        caps.US.mac: "imaging modality", caps.PUMP.mac: "infusion pump",
    }
    got = {mac: identified[mac]["class"] for mac in expected}
    assert got == expected
    for mac in expected:
        d = identified[mac]
        assert d["confidence"] >= 0.6, d
        assert d["class_reasons"] and all(r["evidence"] for r in d["class_reasons"])


def test_inventory_fields(identified: dict[str, dict[str, Any]]) -> None:
    ws = identified[caps.WS.mac]
    assert ws["vendor"] == "Dell Inc."                       # Wireshark's manuf file
    assert ws["names"][0] == "WS-NURSE1"
    assert caps.WS.ip in {i["ip"] for i in ws["ips"]}
    assert {"dhcp", "http", "tcp/80 client", "tcp/9100 client"} <= set(ws["protocols"])
    assert {p["ip"] for p in ws["peers"]} >= {caps.PRINTER.ip}
    by_key = {(e["key"], e["value"]): e for e in ws["evidence"]}
    hostname = by_key[("dhcp.hostname", "WS-NURSE1")]
    assert hostname["source"] == "dhcp option 12 (host name)"
    assert hostname["first_seen"] >= caps.T0 / 1e9 and hostname["count"] >= 1
    prn = identified[caps.PRINTER.mac]
    assert "tcp/9100 server" in prn["protocols"]
    assert identified[caps.SWITCH_MAC]["names"] == ["sw-ward4b"]
    assert identified[caps.US.mac]["names"] == ["ACUSON_US01"]


def test_locally_administered_mac_has_no_vendor(identified: dict[str, dict[str, Any]]) -> None:
    phone = identified[caps.PHONE.mac]
    assert phone["randomized_mac"] is True and phone["vendor"] is None
    assert "Galaxy-S23" in phone["names"]
    assert any(e["key"] == "dhcp.vendor_class" and e["value"] == "android-dhcp-14"
               for e in phone["evidence"])
