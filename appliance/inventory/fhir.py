"""The inventory as FHIR R4 `Device` resources in a `Bundle` (type collection), for the
hospital's CMDB, asset or clinical systems.

Each device: identifier = its Ethernet MAC (typed ETHMAC, Continua device identifier types,
written as IEEE EUI-48 `00-12-21-5E-A0-2C`); `status` active; `manufacturer` the MAC's
vendor (the network card's maker, often the device's); `deviceName` its names (DHCP, LLDP,
HL7...) as user-friendly names; `type` the class wardtap gave it (as text: wardtap's classes
are not a terminology); `modelNumber` and `version` when the inventory knows them;
`property` its addresses and VLAN; `note` when it was seen and how sure the class is.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from appliance.common.when import iso_local

CONTINUA = "http://terminology.hl7.org/CodeSystem/ContinuaDeviceIdentifiers"
NAMESPACE = uuid.UUID("6f2f1e4c-6d1b-4f43-9f5e-2d6c7a1b9e10")    # wardtap device ids


def _iso_utc(ts: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if ts else None


def device_resource(d: dict[str, Any]) -> dict[str, Any]:
    mac = str(d["mac"])
    resource: dict[str, Any] = {
        "resourceType": "Device",
        "id": "wardtap-" + mac.replace(":", ""),
        "identifier": [{
            "type": {"coding": [{"system": CONTINUA, "code": "ETHMAC",
                                 "display": "Ethernet MAC address"}],
                     "text": "Ethernet MAC address"},
            "value": mac.upper().replace(":", "-"),
        }],
        "status": "active",
    }
    if d.get("vendor"):
        resource["manufacturer"] = d["vendor"]
    names = [n for n in d.get("names") or [] if n]
    if names:
        resource["deviceName"] = [{"name": n, "type": "user-friendly-name"} for n in names]
    if d.get("model"):
        resource["modelNumber"] = str(d["model"])
    if d.get("version"):
        resource["version"] = [{"value": str(d["version"])}]
    if d.get("class"):
        resource["type"] = {"text": d["class"]}
    props = [{"type": {"text": "ip-address"}, "valueCode": [{"text": i["ip"]}]}
             for i in d.get("ips") or [] if i.get("ip")]
    if d.get("vlan"):
        props.append({"type": {"text": "vlan"}, "valueQuantity": [{"value": d["vlan"]}]})
    if props:
        resource["property"] = props
    note = (f"Seen by wardtap from {iso_local(d.get('first_seen'))} to "
            f"{iso_local(d.get('last_seen'))}; class {d.get('class')} with confidence "
            f"{float(d.get('confidence') or 0):.2f}")
    resource["note"] = [{"time": _iso_utc(d.get("last_seen")), "text": note}] \
        if d.get("last_seen") else [{"text": note}]
    return resource


def bundle(devices: Sequence[dict[str, Any]], now: float | None = None) -> dict[str, Any]:
    return {
        "resourceType": "Bundle", "type": "collection",
        "timestamp": _iso_utc(time.time() if now is None else now),
        "entry": [{"fullUrl": f"urn:uuid:{uuid.uuid5(NAMESPACE, str(d['mac']))}",
                   "resource": device_resource(d)} for d in devices if d.get("mac")],
    }
