"""The dissection worker: pyshark (real tshark) over chunk files -> evidence records.

    python -m appliance.inventory.tshark --worker --tshark tshark --decode-as JSON

started by appliance.inventory.dissector, never by hand. It reads one JSON request line per
chunk file on stdin, dissects the file with pyshark's FileCapture, turns what tshark found into
evidence records (`extract`) and answers with one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from typing import IO, Any

from appliance.inventory.clinical import (
    dicom_evidence,
    msh_evidence,
    parse_msh,
    parse_pdu,
    pdu_header,
)
from appliance.inventory.der import cert_subject
from appliance.inventory.dissector import DECODE_AS

# Evidence reaching a device over a router says nothing about the router: "link" evidence
# (L2 and link-local multicast protocols, never routed) may describe any device, "ip" evidence
# only a device that is not routing for others (appliance.inventory.devices decides).
Evidence = list[str]          # [target, key, value, source]; target "src" | "dst" | a MAC


def extract(pkt: Any) -> dict[str, Any] | None:
    """One pyshark packet -> a record of addresses and evidence (None: nothing found)."""
    rec: dict[str, Any] = {"ts": float(pkt.sniff_timestamp), "ev": []}
    layers = {layer.layer_name: layer for layer in pkt.layers}
    eth = layers.get("eth") or layers.get("sll")
    if eth is not None:
        rec["smac"] = _first(eth, "eth.src") or _first(eth, "sll.src.eth")
        rec["dmac"] = _first(eth, "eth.dst")
    ip = layers.get("ip") or layers.get("ipv6")
    if ip is not None:
        v6 = ip.layer_name == "ipv6"
        rec["src"] = _first(ip, "ipv6.src" if v6 else "ip.src")
        rec["dst"] = _first(ip, "ipv6.dst" if v6 else "ip.dst")
        ttl = _first(ip, "ipv6.hlim" if v6 else "ip.ttl")
        if ttl in ("32", "64", "128", "255") and not _multicast(rec["dst"]):
            rec["ev"].append(["src", "ip.initial_ttl", ttl, "ip.ttl (unrouted)", "ip"])
    for name in ("tcp", "udp"):
        l4 = layers.get(name)
        if l4 is not None:
            rec["proto"] = name
            rec["sport"] = _int(_first(l4, f"{name}.srcport"))
            rec["dport"] = _int(_first(l4, f"{name}.dstport"))
    bad = 0
    tcp = layers.get("tcp")
    if tcp is not None:
        skipped = _clinical(_payload(tcp), rec["ev"])
        if skipped:
            rec["skipped"] = skipped
    for layer in pkt.layers:
        fn = EXTRACTORS.get(layer.layer_name)
        if fn is None:
            continue
        try:
            fn(layer, rec["ev"])
        except Exception:    # a dissector's odd output must not cost the other layers
            bad += 1
    if bad:
        rec["unparsed"] = bad
    return rec if rec["ev"] or bad or rec.get("skipped") else None


def _payload(tcp: Any) -> bytes:
    text = _first(tcp, "tcp.payload")
    if not text:
        return b""
    try:
        return bytes.fromhex(text.replace(":", ""))
    except ValueError:
        return b""


def _clinical(payload: bytes, ev: list[Evidence]) -> str | None:
    """HL7 MSH and DICOM association or command set from the raw TCP payload (tshark's
    own HL7 and DICOM dissectors do not name DIMSE commands); the reason when malformed."""
    if payload[:1] == b"\x0b":
        msh, why = parse_msh(payload)
        if msh is None:
            return why
        ev.extend(msh_evidence(msh))
        return None
    if pdu_header(payload) is not None:
        found, why = parse_pdu(payload)
        if found is None:
            return None if why in ("dicom_data_set", "dicom_other_pdu") else why
        ev.extend(dicom_evidence(found))
    return None


def _values(layer: Any, name: str) -> list[str]:
    f = layer.get_field(name)
    if f is None:
        return []
    return [str(x.show) for x in getattr(f, "all_fields", [f]) if x.show is not None]


def _shownames(layer: Any, name: str) -> list[str]:
    f = layer.get_field(name)
    if f is None:
        return []
    return [str(x.showname_value) for x in getattr(f, "all_fields", [f])
            if x.showname_value is not None]


def _first(layer: Any, name: str) -> str | None:
    vals = _values(layer, name)
    return vals[0] if vals else None


def _int(value: str | None) -> int | None:
    try:
        return int(value, 0) if value is not None else None
    except ValueError:
        return None


def _multicast(ip: str | None) -> bool:
    if not ip:
        return False
    if ":" in ip:
        return ip.lower().startswith("ff")
    return 224 <= int(ip.split(".")[0]) <= 239 or ip == "255.255.255.255"


def _clean(value: str, limit: int = 200) -> str:
    value = "".join(c for c in value if c.isprintable()).replace("\\r\\n", "").strip()
    return value[:limit]


def _add(ev: list[Evidence], target: str, key: str, value: str | None, source: str,
         scope: str) -> None:
    if value is None:
        return
    value = _clean(value)
    if value:
        ev.append([target, key, value, source, scope])


def _dhcp(layer: Any, ev: list[Evidence]) -> None:
    op = _first(layer, "dhcp.type")
    msg = _first(layer, "dhcp.option.dhcp")
    chaddr = _first(layer, "dhcp.hw.mac_addr")
    if op == "1":
        _add(ev, "src", "dhcp.hostname", _first(layer, "dhcp.option.hostname"),
             "dhcp option 12 (host name)", "link")
        _add(ev, "src", "dhcp.vendor_class", _first(layer, "dhcp.option.vendor_class_id"),
             "dhcp option 60 (vendor class id)", "link")
        prl = _values(layer, "dhcp.option.request_list_item")
        if prl:
            _add(ev, "src", "dhcp.prl", ",".join(prl), "dhcp option 55 (parameter request list)",
                 "link")
        _add(ev, "src", "dhcp.fqdn", _first(layer, "dhcp.option.client_fqdn.name"),
             "dhcp option 81 (client FQDN)", "link")
        _add(ev, "src", "dhcp.vendor_info", _vendor_info(layer),
             "dhcp option 43 (vendor-specific information)", "link")
    elif op == "2":
        relay = _first(layer, "dhcp.ip.relay")
        role = "relay" if relay and relay != "0.0.0.0" else "server"
        _add(ev, "src", "dhcp.role", role, "dhcp reply (giaddr)", "link")
        yiaddr = _ipv4(_first(layer, "dhcp.ip.your"))
        mac = chaddr.lower() if chaddr and _MAC.fullmatch(chaddr) else None
        if mac and msg == "5" and yiaddr and yiaddr != "0.0.0.0":
            _add(ev, f"mac:{mac}", "ip.assigned", yiaddr, "dhcp ACK (yiaddr)", "link")


_MAC = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")


def _ipv4(text: str | None) -> str | None:
    """An IPv4 address as tshark writes it, or None: an assignment names a device by it."""
    try:
        return str(ipaddress.IPv4Address(text)) if text else None
    except ValueError:
        return None


def _vendor_info(layer: Any) -> str | None:
    """Option 43's printable text (vendors put model and firmware strings there)."""
    raw = _first(layer, "dhcp.option.vendor.value")
    if not raw:
        return None
    try:
        data = bytes.fromhex(raw.replace(":", ""))
    except ValueError:
        return None
    text = "".join(chr(b) if 0x20 <= b < 0x7F else " " for b in data)
    return " ".join(text.split()) or None


def _dhcpv6(layer: Any, ev: list[Evidence]) -> None:
    _add(ev, "src", "dhcp.fqdn", _first(layer, "dhcpv6.client_domain"),
         "dhcpv6 client FQDN", "link")
    _add(ev, "src", "dhcp.vendor_class", _first(layer, "dhcpv6.vendorclass.data"),
         "dhcpv6 vendor class", "link")


_LLDP_CAPS = ("other", "repeater", "bridge", "wlan_access_pt", "router", "telephone",
              "docsis_cable_device", "station_only")


def _lldp(layer: Any, ev: list[Evidence]) -> None:
    _add(ev, "src", "lldp.system_name", _first(layer, "lldp.tlv.system.name"),
         "lldp system name", "link")
    _add(ev, "src", "lldp.system_desc", _first(layer, "lldp.tlv.system.desc"),
         "lldp system description", "link")
    _add(ev, "src", "lldp.port", _first(layer, "lldp.port.id"), "lldp port id", "link")
    caps = [c for c in _LLDP_CAPS
            if _first(layer, f"lldp.tlv.enable_system_cap.{c}") in ("1", "True")]
    if not caps:
        caps = [c for c in _LLDP_CAPS
                if _first(layer, f"lldp.tlv.system_cap.{c}") in ("1", "True")]
    for cap in caps:
        _add(ev, "src", "lldp.capability", cap, "lldp system capabilities", "link")
    for addr in _values(layer, "lldp.mgn.addr.ip4") + _values(layer, "lldp.mgn.addr.ip6"):
        _add(ev, "src", "ip.own", addr, "lldp management address", "link")


def _cdp(layer: Any, ev: list[Evidence]) -> None:
    _add(ev, "src", "cdp.device_id", _first(layer, "cdp.deviceid"), "cdp device id", "link")
    _add(ev, "src", "cdp.platform", _first(layer, "cdp.platform"), "cdp platform", "link")
    _add(ev, "src", "cdp.software", _first(layer, "cdp.software_version"),
         "cdp software version", "link")
    for cap in ("router", "switch", "host", "voip_phone"):
        if _first(layer, f"cdp.capabilities.{cap}") in ("1", "True"):
            _add(ev, "src", "cdp.capability", cap, "cdp capabilities", "link")


def _mdns(layer: Any, ev: list[Evidence]) -> None:
    if _first(layer, "dns.flags.response") not in ("1", "True"):
        for name in _values(layer, "dns.qry.name")[:8]:
            if name.startswith("_"):
                _add(ev, "src", "mdns.browses", _service(name), "mdns query", "link")
        return
    # host names: A/AAAA owners and SRV targets (service names contain "._")
    hosts = {n for n in _values(layer, "dns.resp.name") if "._" not in n and
             not n.startswith("_")} if _values(layer, "dns.a") or _values(layer, "dns.aaaa") \
        else set()
    hosts.update(_values(layer, "dns.srv.target"))
    for name in sorted(hosts):
        if name.endswith(".local") and not name.endswith(".arpa"):
            _add(ev, "src", "mdns.name", name[:-6], "mdns host record", "link")
    for target in _values(layer, "dns.ptr.domain_name"):
        service = _service(target)
        if service:
            _add(ev, "src", "mdns.service", service, "mdns PTR record", "link")
            instance = target.split("._", 1)[0]
            if instance and not instance.startswith("_"):
                _add(ev, "src", "mdns.instance", instance, "mdns service instance", "link")
    for txt in _values(layer, "dns.txt"):
        key, _, value = txt.partition("=")
        if key.lower() in ("ty", "md", "model", "product", "usb_mdl", "fn"):
            _add(ev, "src", "mdns.model", value.strip("()"), f"mdns TXT {key}", "link")


def _service(name: str) -> str:
    """'_ipp._tcp.local' or 'X._ipp._tcp.local' -> '_ipp._tcp'."""
    parts = name.split(".")
    for i in range(len(parts) - 1):
        if parts[i].startswith("_") and parts[i + 1] in ("_tcp", "_udp"):
            return f"{parts[i]}.{parts[i + 1]}"
    return ""


def _ssdp(layer: Any, ev: list[Evidence]) -> None:
    _add(ev, "src", "ssdp.server", _first(layer, "http.server"), "ssdp SERVER header", "link")
    _add(ev, "src", "ssdp.user_agent", _first(layer, "http.user_agent"),
         "ssdp USER-AGENT header", "link")
    for header in _values(layer, "http.unknown_header"):
        name, _, value = header.partition(":")
        if name.strip().upper() in ("NT", "ST") and "urn:" in value:
            _add(ev, "src", "ssdp.type", value.replace("\\r\\n", "").strip(),
                 f"ssdp {name.strip().upper()} header", "link")


def _nbns(layer: Any, ev: list[Evidence]) -> None:
    for name in _values(layer, "nbns.name")[:4]:
        _add(ev, "src", "netbios.name", name.split("<")[0], "netbios name", "link")


def _tls(layer: Any, ev: list[Evidence]) -> None:
    types = _values(layer, "tls.handshake.type")
    if "1" in types:
        _add(ev, "src", "tls.sni", _first(layer, "tls.handshake.extensions_server_name"),
             "tls ClientHello SNI", "ip")
        _add(ev, "src", "tls.ja3", _first(layer, "tls.handshake.ja3"), "tls ClientHello JA3",
             "ip")
    if "11" in types:
        certs = _values(layer, "tls.handshake.certificate")
        subject = cert_subject(certs[0]) if certs else None
        if subject is None:
            names = _shownames(layer, "x509af.rdnSequence")
            subject = _rdn_showname(names[0]) if names else None
        _add(ev, "src", "tls.cert_subject", subject, "tls server certificate subject", "ip")
        _add(ev, "dst", "peer.tls.cert_subject", subject,
             "tls certificate subject of the server it talks to", "ip")


def _http(layer: Any, ev: list[Evidence]) -> None:
    if _first(layer, "http.request.method") is not None:
        _add(ev, "src", "http.user_agent", _first(layer, "http.user_agent"),
             "http User-Agent", "ip")
        _add(ev, "src", "http.host", _first(layer, "http.host"), "http Host (requested)", "ip")
    server = _first(layer, "http.server")
    if server is not None and _first(layer, "http.response.code") is not None:
        _add(ev, "src", "http.server", server, "http Server", "ip")
        _add(ev, "dst", "peer.http.server", server, "http Server of the server it talks to",
             "ip")


EXTRACTORS: dict[str, Callable[[Any, list[Evidence]], None]] = {
    "dhcp": _dhcp, "bootp": _dhcp, "dhcpv6": _dhcpv6, "lldp": _lldp, "cdp": _cdp,
    "mdns": _mdns, "ssdp": _ssdp, "nbns": _nbns, "tls": _tls,
    "http": _http,
}


_RDN_SHORT = {"id-at-commonName": "CN", "id-at-organizationName": "O",
              "id-at-organizationalUnitName": "OU", "id-at-countryName": "C",
              "id-at-localityName": "L", "id-at-stateOrProvinceName": "ST"}


def _rdn_showname(text: str) -> str | None:
    inner = text[text.find("(") + 1:text.rfind(")")] if "(" in text else text
    out = []
    for part in inner.split(","):
        key, _, value = part.partition("=")
        out.append(f"{_RDN_SHORT.get(key, key)}={value}")
    return ",".join(out) or None


def dissect_file(path: str, tshark: str, decode_as: dict[str, str]) -> dict[str, Any]:
    """Run pyshark (real tshark) over one chunk: {'packets', 'records', 'unparsed'}."""
    import pyshark

    capture = pyshark.FileCapture(path, keep_packets=False, decode_as=decode_as,
                                  tshark_path=tshark)
    records: list[dict[str, Any]] = []
    skipped: dict[str, int] = {}
    packets = unparsed = 0
    try:
        for pkt in capture:
            packets += 1
            try:
                rec = extract(pkt)
            except Exception:
                unparsed += 1
                continue
            if rec is not None:
                unparsed += rec.pop("unparsed", 0)
                why = rec.pop("skipped", None)
                if why:
                    skipped[why] = skipped.get(why, 0) + 1
                if rec["ev"]:
                    records.append(rec)
    finally:
        with contextlib.suppress(Exception):
            capture.close()
        _drop_child_watcher()
    return {"packets": packets, "records": records, "unparsed": unparsed, "skipped": skipped}


def _drop_child_watcher() -> None:
    """In the main thread pyshark attaches a SafeChildWatcher (a SIGCHLD handler with a
    wakeup pipe) to its event loop and leaves it there: with no one running that loop, every
    later child's exit writes into a pipe no one reads, until writes fail. Closing it after
    each capture puts the process's signals back (the next capture attaches its own)."""
    if threading.current_thread() is not threading.main_thread():
        return
    import asyncio

    with warnings.catch_warnings(), contextlib.suppress(Exception):
        warnings.simplefilter("ignore", DeprecationWarning)     # child watchers: 3.12+
        asyncio.get_child_watcher().close()


def worker_main(tshark: str, decode_as: dict[str, str], stdin: IO[str] = sys.stdin,
                stdout: IO[str] = sys.stdout) -> int:
    """Answer one JSON line per request line until stdin closes.

    Runs at the lowest priority (nice 19, inherited by tshark): the datapath always wins
    the CPU; when the worker falls behind, chunks are dropped and counted, never waited for.
    """
    with contextlib.suppress(OSError):
        os.nice(19)
    import pyshark  # noqa: F401  (fail here, reported by the supervisor at start)

    stdout.write('{"ready":true}\n')
    stdout.flush()
    for line in stdin:
        try:
            request = json.loads(line)
            answer: dict[str, Any] = {"id": request.get("id")}
        except ValueError:
            continue
        try:
            answer.update(dissect_file(str(request["path"]), tshark, decode_as))
            expected = int(request.get("packets") or 0)
            if answer["packets"] < expected:
                # pyshark does not always notice a tshark killed by a signal: count packets
                answer = {"id": answer["id"], "error": f"tshark returned {answer['packets']} "
                          f"of {expected} packets (crashed?)"}
        except Exception as exc:     # tshark crashed or pyshark failed: report, live on
            answer["error"] = f"{type(exc).__name__}: {exc}"[:500]
        stdout.write(json.dumps(answer, separators=(",", ":")) + "\n")
        stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m appliance.inventory.tshark",
                                 description="wardtap's dissection worker (started by wardtap)")
    ap.add_argument("--worker", action="store_true", required=True)
    ap.add_argument("--tshark", default="tshark")
    ap.add_argument("--decode-as", default=json.dumps(DECODE_AS))
    args = ap.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the supervisor decides when we stop
    return worker_main(args.tshark, json.loads(args.decode_as))


if __name__ == "__main__":
    sys.exit(main())
