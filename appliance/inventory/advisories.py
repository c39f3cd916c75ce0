"""Security advisories in CSAF 2.0 (OASIS; the format of CISA's ICS medical advisories,
ICSMA) matched against the inventory's make, model and software version.

An advisory's product tree names vendors, products and versions (exact, ranges, "all
versions", sometimes CPEs); its vulnerabilities say which products are known affected,
with CVSS scores and remediations. A device matches a product when:

1. its model's CPE (`cpe` in [[models]]) has the product's CPE vendor and product, or
2. the advisory's vendor is the device's make (`[makers]` patterns) AND the product name
   matches one of the model's `advisory_products` patterns. A vendor alone never matches:
   a Philips monitor is not affected by a Philips PACS advisory.

Then the version decides: "affected" (the device's version is in the range, or the
advisory says all versions), "possibly affected (version unknown)" when wardtap has not
seen the device's software version, "possibly affected (version not comparable: ...)"
when the advisory's version text cannot be compared with it. A known version outside
every range is not affected. Matching errs towards "possibly", and says which.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import WardtapError

VERSION_LEAVES = ("product_version", "product_version_range", "service_pack", "patch_level")


class AdvisoryError(WardtapError):
    """An advisory file is not CSAF 2.0 that wardtap can read."""


@dataclass
class Product:
    product_id: str
    vendor: str
    name: str
    version: str                   # the version text ("" when the tree names none)
    is_range: bool
    cpe: str | None = None


@dataclass
class Advisory:
    id: str
    title: str
    released: str
    url: str
    products: dict[str, Product]
    affected: dict[str, dict[str, Any]] = field(default_factory=dict)   # product id -> info

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "released": self.released,
                "url": self.url, "products": len(self.products),
                "affected_products": len(self.affected)}


def parse_csaf(doc: Any, source: str = "advisory") -> Advisory:
    """A CSAF 2.0 document (parsed JSON) -> Advisory; AdvisoryError says what is wrong."""
    if not isinstance(doc, dict) or not isinstance(doc.get("document"), dict):
        raise AdvisoryError(f"{source}: not a CSAF document (no 'document' object)")
    meta = doc["document"]
    version = str(meta.get("csaf_version", ""))
    if not version.startswith("2."):
        raise AdvisoryError(f"{source}: csaf_version {version or 'missing'}; "
                            "CSAF 2.0 is supported")
    tracking = meta.get("tracking") or {}
    adv_id = str(tracking.get("id") or "").strip()
    if not adv_id:
        raise AdvisoryError(f"{source}: document.tracking.id is missing")
    url = ""
    for ref in meta.get("references") or []:
        if isinstance(ref, dict) and ref.get("category") == "self" and "url" in ref:
            url = str(ref["url"])
            if not url.endswith(".json"):
                break
    products: dict[str, Product] = {}
    tree = doc.get("product_tree") or {}
    _walk(tree.get("branches") or [], {}, products)
    for rel in tree.get("relationships") or []:
        ref = products.get(str(rel.get("product_reference", "")))
        full = rel.get("full_product_name") or {}
        if ref is not None and full.get("product_id"):
            products[str(full["product_id"])] = Product(str(full["product_id"]), ref.vendor,
                                                        ref.name, ref.version, ref.is_range,
                                                        ref.cpe)
    advisory = Advisory(adv_id, str(meta.get("title") or ""),
                        str(tracking.get("current_release_date") or ""), url, products)
    for vuln in doc.get("vulnerabilities") or []:
        if not isinstance(vuln, dict):
            continue
        status = vuln.get("product_status") or {}
        ids = [str(p) for k in ("known_affected", "first_affected", "last_affected")
               for p in status.get(k) or []]
        cvss = max((float(s.get("cvss_v3", {}).get("baseScore", 0) or 0)
                    for s in vuln.get("scores") or [] if isinstance(s, dict)), default=None)
        fixes = [(r.get("category"), str(r.get("details") or "")[:400], r.get("url"),
                  [str(p) for p in r.get("product_ids") or []])
                 for r in vuln.get("remediations") or [] if isinstance(r, dict)]
        for pid in ids:
            info = advisory.affected.setdefault(pid, {"cves": [], "cvss": None,
                                                      "remediation": None})
            if vuln.get("cve") and vuln["cve"] not in info["cves"]:
                info["cves"].append(str(vuln["cve"]))
            if cvss is not None and (info["cvss"] is None or cvss > info["cvss"]):
                info["cvss"] = cvss
            if info["remediation"] is None:
                for category, details, link, pids in fixes:
                    if pid in pids and details:
                        info["remediation"] = {"category": category, "details": details,
                                               "url": link}
                        break
    return advisory


def _walk(branches: Iterable[Any], path: dict[str, str], out: dict[str, Product]) -> None:
    for br in branches:
        if not isinstance(br, dict):
            continue
        here = dict(path)
        category, name = str(br.get("category", "")), str(br.get("name", ""))
        if category in VERSION_LEAVES:
            here["version"] = name          # the deepest version names the product's version
            here["range"] = "1" if category == "product_version_range" else ""
        elif category in ("vendor", "product_name", "product_family"):
            here[category] = name if category != "product_family" or "product_name" not in \
                here else here[category]
        product = br.get("product")
        if isinstance(product, dict) and product.get("product_id"):
            helper = product.get("product_identification_helper") or {}
            out[str(product["product_id"])] = Product(
                str(product["product_id"]), here.get("vendor", ""),
                here.get("product_name") or here.get("product_family") or
                str(product.get("name", "")), here.get("version", ""),
                bool(here.get("range")), helper.get("cpe"))
        _walk(br.get("branches") or [], here, out)


# --- versions --------------------------------------------------------------------------------

_TOKEN = re.compile(r"\d+|[a-z]+|\*")
# one bound: an optional operator and a version without spaces ("<= 9.33.1", "L81", "2.X")
_OP = re.compile(r"^(<=|>=|<|>|==|=)?\s*(v?[A-Za-z0-9][\w.()+-]*)$")


def _tokens(version: str) -> list[int | str]:
    text = version.strip().lower()
    if text.startswith("v") and len(text) > 1 and text[1].isdigit():
        text = text[1:]
    return [int(t) if t.isdigit() else t for t in _TOKEN.findall(text)]


def compare(a: str, b: str) -> int | None:
    """-1/0/1, or None when the two do not share a shape (L81 vs U61, 9.3 vs Rev B)."""
    ta, tb = _tokens(a), _tokens(b)
    if not ta or not tb:
        return None
    for x, y in zip(ta, tb, strict=False):
        if type(x) is not type(y):
            return None
        if x != y:
            if isinstance(x, str) and x is ta[0]:
                return None                    # a different product line (L81 vs U61)
            return -1 if x < y else 1          # type: ignore[operator]
    return (len(ta) > len(tb)) - (len(ta) < len(tb))


def _wildcard(pattern: str, version: str) -> bool | None:
    tp, tv = _tokens(pattern), _tokens(version)
    prefix = []
    for t in tp:
        if t in ("x", "*"):
            break
        prefix.append(t)
    else:
        return None
    if any(type(x) is not type(y) for x, y in zip(prefix, tv, strict=False)):
        return None
    return tv[:len(prefix)] == prefix


def version_status(constraint: str, version: str | None) -> tuple[str, str]:
    """(status, why) of a device version against an advisory's version text."""
    text = constraint.strip()
    low = text.lower()
    if not text or low in ("vers:all/*", "all", "all versions", "*") or \
            low.startswith("vers:all"):
        return "affected", "all versions are affected"
    if version is None:
        return "possibly affected (version unknown)", f"advisory: {text}"
    if low.startswith("vers:"):
        text = text.split("/", 1)[1] if "/" in text else text
    parts = [p.strip() for p in text.split("|") if p.strip()]
    parsed = []
    for part in parts:
        two = re.fullmatch(r"([A-Za-z0-9][\w.()+-]*)\s*(<=|<)\s*([A-Za-z0-9][\w.()+-]*)", part)
        if two:                                           # "A10 < A11": from A10, below A11
            parsed += [(">=", two[1]), (two[2], two[3])]
            continue
        m = _OP.match(part)
        if not m or not _tokens(m[2]):
            return ("possibly affected (version not comparable)",
                    f"{version} against '{constraint}'")
        parsed.append((m[1] or "=", m[2]))
    lows = [p for p in parsed if p[0] in (">", ">=")]
    highs = [p for p in parsed if p[0] in ("<", "<=")]
    results = [_check(op, bound, version) for op, bound in parsed]
    if all(r is None for r in results):
        return ("possibly affected (version not comparable)",
                f"{version} against '{constraint}'")
    # bounds of another product line (U61 for a device on L80) are left out
    if len(lows) == 1 and len(highs) == 1 and len(parsed) == 2:
        ok = all(r is not False for r in results)         # ">= 2.0 | <= 3.0": a range
    else:
        ok = any(r is True for r in results)              # alternatives
    if ok:
        return "affected", f"{version} within '{constraint}'"
    return "not affected", f"{version} outside '{constraint}'"


def _check(op: str, bound: str, version: str) -> bool | None:
    if op in ("=", "=="):
        wild = _wildcard(bound, version)
        if wild is not None:
            return wild
        c = compare(version, bound)
        return None if c is None else c == 0
    c = compare(version, bound)
    if c is None:
        return None
    return {"<": c < 0, "<=": c <= 0, ">": c > 0, ">=": c >= 0}[op]


# --- matching --------------------------------------------------------------------------------


def _cpe_parts(cpe: str) -> list[str]:
    if cpe.startswith("cpe:2.3:"):
        return cpe[8:].split(":")
    if cpe.startswith("cpe:/"):
        return cpe[5:].split(":")
    return []


def _fn(patterns: Iterable[str], text: str) -> str | None:
    low = text.lower()
    for p in patterns:
        if fnmatch.fnmatchcase(low, p.lower()):
            return p
    return None


def match_device(identity: Mapping[str, Any], advisories: Iterable[Advisory],
                 makers: Mapping[str, list[str]]) -> list[dict[str, Any]]:
    """Advisory matches for one device's identity (make, model, software_version,
    advisory_products, cpe); the worst status per advisory, highest CVSS first."""
    make, version = identity.get("make"), identity.get("software_version")
    products_patterns = identity.get("advisory_products") or ()
    cpe = identity.get("cpe")
    if not make:
        return []
    vendor_patterns = makers.get(make, [make.lower() + "*"])
    found: dict[str, dict[str, Any]] = {}
    for adv in advisories:
        for pid, info in adv.affected.items():
            product = adv.products.get(pid)
            if product is None:
                continue
            how = _product_match(product, make, vendor_patterns, products_patterns, cpe,
                                 identity.get("model") or "")
            if how is None:
                continue
            constraint = product.version
            if product.cpe and cpe and len(_cpe_parts(product.cpe)) > 3:
                cpe_version = _cpe_parts(product.cpe)[3]
                if cpe_version not in ("*", "-", ""):
                    constraint = constraint or cpe_version
            status, why = version_status(constraint, version)
            if status == "not affected":
                continue
            entry = {"id": adv.id, "title": adv.title, "url": adv.url, "vendor": product.vendor,
                     "product": product.name, "product_version": product.version,
                     "status": status, "why": f"{how}; {why}", "cvss": info["cvss"],
                     "cves": info["cves"], "remediation": info["remediation"]}
            best = found.get(adv.id)
            if best is None or _rank(entry) > _rank(best):
                found[adv.id] = entry
    return sorted(found.values(), key=lambda e: (-(e["cvss"] or 0), e["id"]))


def _rank(entry: Mapping[str, Any]) -> tuple[int, float]:
    return (2 if entry["status"] == "affected" else 1, entry["cvss"] or 0.0)


def _product_match(product: Product, make: str, vendor_patterns: Iterable[str],
                   product_patterns: Iterable[str], cpe: str | None, model: str) -> str | None:
    if product.cpe and cpe:
        a, b = _cpe_parts(product.cpe), _cpe_parts(cpe)
        if len(a) >= 3 and len(b) >= 3:
            if a[:3] == b[:3]:
                return f"CPE {product.cpe} names {cpe}"
            return None
    if not _fn(vendor_patterns, product.vendor):
        return None
    pattern = _fn(product_patterns, product.name)
    if pattern is not None:
        return f"{product.vendor} / '{product.name}' matches '{pattern}'"
    if not product_patterns and model and model.lower() in product.name.lower():
        return f"{product.vendor} / '{product.name}' names {model}"
    return None


def load_file(path: str) -> tuple[Advisory, str]:
    """(the advisory, the document's JSON text) of one CSAF file."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(16 << 20)
        text = raw.decode("utf-8")
        doc = json.loads(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise AdvisoryError(f"{path}: cannot read: {exc}") from None
    except ValueError as exc:
        raise AdvisoryError(f"{path}: not JSON: {exc}") from None
    return parse_csaf(doc, path), text
