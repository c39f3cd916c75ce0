"""Decoding real captures from public projects agrees with tshark (tests/data/corpus).

The committed subset of the conformance corpus (tests/data/corpus/SOURCES.md names every
file's project, commit and path; bench/conformance.py runs on the whole corpus): captures
from the tcpdump project, PcapPlusPlus (many from the Wireshark wiki), Practical Packet
Analysis. They are merged into one pcapng by Wireshark's own mergecap (so the capture reader
under test does not prepare its own input), replayed by `wardtap replay --packets-out` and
read by tshark; every packet must agree field by field (bench/conformance.py
compare_packet). A damaged capture is read up to the damage; an unknown link type is refused,
in one line each.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from conftest import ROOT, run_wardtap

CORPUS = ROOT / "tests" / "data" / "corpus"
DAMAGED = "PracticalPacketAnalysis__ppa-capture-files__http-fault-post.pcap"
REFUSED = "tests__unsupported-link-type-160.pcap"


def conformance() -> ModuleType:
    spec = importlib.util.spec_from_file_location("conformance", ROOT / "bench" / "conformance.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["conformance"] = module        # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_real_captures_decode_as_tshark_decodes_them(tmp_path: Path, tshark: str) -> None:
    c = conformance()
    captures = [p for p in sorted(CORPUS.iterdir())
                if p.suffix in (".pcap", ".pcapng") and p.name not in (DAMAGED, REFUSED)]
    merged = tmp_path / "corpus.pcapng"
    subprocess.run(["mergecap", "-a", "-w", str(merged), *map(str, captures)], check=True,
                   capture_output=True, timeout=60)
    replay = c.run_replay(merged, tmp_path)
    assert not replay.crashed and replay.returncode == 0, replay.stderr
    rows = c.run_tshark(merged, tshark)
    assert isinstance(rows, list) and len(rows) == len(replay.lines) > 100
    problems = []
    for w in replay.lines:
        problems += [(w["i"], *bad) for bad in c.compare_packet(w, rows[w["i"]])]
    assert not problems, "\n".join(map(str, problems[:40]))
    # What the subset is there for was really decoded, not skipped.
    lines = replay.lines
    assert not [w for w in lines if w["reason"] == "unsupported_linktype"]
    assert any(w["proto"] == 89 and ":" in (w["src"] or "") for w in lines)   # after AH
    assert any(w.get("frag_offset") for w in lines)                           # fragments
    assert any(w.get("more_fragments") and w.get("sport") for w in lines)     # first ones
    assert {"gre"} <= {w.get("tunnel") for w in lines}
    assert any(w.get("vlan_outer") for w in lines)                            # 802.1ad
    assert sum(1 for w in lines if w["verdict"] == "malformed") < len(lines) // 20
    linktypes = pcapng_linktypes(merged)
    assert linktypes >= {0, 1, 8, 9, 104, 105, 228, 229, 239, 276}, linktypes   # as mergecap


def pcapng_linktypes(path: Path) -> set[int]:
    """The link types of a pcapng's interface description blocks (little-endian, as
    mergecap writes it)."""
    data = path.read_bytes()
    out, pos = set(), 0
    while pos + 12 <= len(data):
        kind, length = int.from_bytes(data[pos:pos + 4], "little"), \
            int.from_bytes(data[pos + 4:pos + 8], "little")
        if kind == 1:
            out.add(int.from_bytes(data[pos + 8:pos + 10], "little"))
        pos += max(length, 12)
    return out


def test_a_damaged_capture_is_read_up_to_the_damage() -> None:
    result = run_wardtap("replay", str(CORPUS / DAMAGED), "--json")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "at byte 8877: truncated" in result.stderr and "after 25 good packets" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["packets"] == 25 and summary["flows"] >= 1


def test_an_unknown_link_type_is_refused_in_one_line() -> None:
    result = run_wardtap("replay", str(CORPUS / REFUSED))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "unsupported link type 160; supported: 0 (BSD loopback (NULL)), 1 (Ethernet)" in \
        result.stderr
