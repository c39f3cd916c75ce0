"""Make, model and software version from what a device says about itself.

The catalogue is data, not code: `[[models]]` in appliance/data/device-classes.toml maps
strings seen on the wire (DHCP vendor class, HL7 MSH-3, DICOM implementation version, LLDP
or CDP description, TLS certificate subject, HTTP/SSDP/mDNS model strings) to a make and a
model, with a regular expression for the software version:

    [[models]]
    make = "BD"
    model = "Alaris 8015 PC unit"
    class = "infusion pump"                       # optional: the model says what it is
    match = { "dhcp.vendor_class" = ["alaris 8015*"] }
    version = { "dhcp.vendor_class" = 'alaris 8015\\D*(?P<version>\\d+(\\.\\d+)+)' }
    advisory_products = ["*alaris*8015*"]        # how advisories name it (see advisories)

The entry with the highest score wins (file order breaks ties); its version comes from the
newest value that its regular expression reads. Entries without a class name a product
(software such as a DICOM toolkit) when nothing better is known.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Model:
    make: str
    model: str
    patterns: tuple[tuple[str, tuple[re.Pattern[str], ...]], ...]
    versions: tuple[tuple[str, re.Pattern[str]], ...]
    score: float
    advisory_products: tuple[str, ...]
    cpe: str | None


@dataclass(frozen=True)
class Identity:
    make: str
    model: str
    version: str | None
    evidence: tuple[tuple[str, str], ...]       # (key, value) that named the model
    version_from: tuple[str, str] | None         # (key, value) the version was read from
    advisory_products: tuple[str, ...]
    cpe: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"make": self.make, "model": self.model, "software_version": self.version,
                "evidence": [{"key": k, "value": v} for k, v in self.evidence],
                "version_from": ({"key": self.version_from[0], "value": self.version_from[1]}
                                 if self.version_from else None)}


class ModelCatalogue:
    """The parsed [[models]] of a rule file (validated there by classes.parse_rules)."""

    def __init__(self, doc: Mapping[str, Any]) -> None:
        lists = doc.get("lists", {})
        models = []
        for spec in doc.get("models", []):
            patterns = []
            for key, raw in spec.get("match", {}).items():
                values = raw if isinstance(raw, list) else [raw]
                expanded: list[str] = []
                for v in values:
                    expanded += [str(x) for x in lists.get(v[1:], [])] if v.startswith("@") \
                        else [v]
                patterns.append((str(key), tuple(re.compile(fnmatch.translate(p.lower()),
                                                            re.S) for p in expanded)))
            versions = tuple((str(k), re.compile(str(v), re.I))
                             for k, v in (spec.get("version") or {}).items())
            models.append(Model(spec["make"], spec["model"], tuple(patterns), versions,
                                float(spec.get("score", 0.5 if "class" not in spec else 0.9)),
                                tuple(str(p).lower() for p in spec.get("advisory_products",
                                                                         [])),
                                spec.get("cpe")))
        # best first; a stable sort keeps the file's order among equals
        self.models = sorted(models, key=lambda m: -m.score)

    def identify(self, values: Mapping[str, Sequence[str]]) -> Identity | None:
        """`values`: evidence key -> values, newest first."""
        for model in self.models:
            hits = []
            for key, patterns in model.patterns:
                for value in values.get(key, ()):
                    low = value.lower()
                    if any(p.fullmatch(low) for p in patterns):
                        hits.append((key, value))
                        break
            if not hits:
                continue
            version, source = None, None
            for key, regex in model.versions:
                for value in values.get(key, ()):
                    m = regex.search(value)
                    if m and m.groupdict().get("version"):
                        version, source = m.group("version"), (key, value)
                        break
                if version:
                    break
            return Identity(model.make, model.model, version, tuple(hits), source,
                            model.advisory_products, model.cpe)
        return None
