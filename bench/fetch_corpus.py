"""Fetch the conformance corpus: real captures from public projects, into bench/corpus/.

    .venv/bin/python bench/fetch_corpus.py [--out bench/corpus] [--from NAME=GITDIR ...]
    .venv/bin/python bench/fetch_corpus.py --subset tests/data/corpus   # the committed subset

Each source is a public Git repository; only its capture files are taken (pcap, pcapng and
the other formats tshark reads), at the commit fetched, with their path, commit and SHA-256
recorded in OUT/SOURCES.json, so a figure computed on the corpus can be reproduced.
`--from NAME=GITDIR` reads a source from a clone or mirror already on disk instead of the
network (`git clone --bare https://github.com/the-tcpdump-group/tcpdump`, say). The folder is
ignored by Git; tests/data/corpus/ holds the small committed subset the test suite uses.
bench/conformance.py compares wardtap's decoding of the corpus with tshark's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".dmp", ".snoop", ".pcap.gz", ".pcapng.gz")


@dataclass(frozen=True)
class Corpus:
    name: str
    repo: str            # owner/name on GitHub
    prefix: str          # only files under this folder ("" for all)
    about: str


SOURCES = (
    Corpus("tcpdump", "the-tcpdump-group/tcpdump", "tests/",
           "tcpdump's own regression captures: every protocol tcpdump prints, many link "
           "types, malformed and truncated packets on purpose"),
    Corpus("pcapplusplus", "seladb/PcapPlusPlus", "Tests/",
           "PcapPlusPlus's test captures, most of them taken from the Wireshark wiki's "
           "sample captures (tunnels, PPPoE, VXLAN, GRE, MPLS, IPv6 extension headers, ...)"),
    Corpus("ppa", "chrissanders/packets", "",
           "the captures of Practical Packet Analysis (Chris Sanders): everyday LAN traffic"),
    Corpus("markofu", "markofu/pcaps", "",
           "a collection of public captures: forensic challenges, attack traffic, PPA"),
)


# The committed subset (tests/data/corpus/, used by tests/test_conformance.py): small
# captures covering every link type and encapsulation the decoder knows that the corpus has,
# fragments, IPv6 extension headers with AH, real DNS and NTP, a damaged file and a refused one.
SUBSET = (
    "tcpdump/tests__OSPFv3_with_AH.pcap",                              # IPv6 AH, OSPF
    "tcpdump/tests__ppp_ip_udp_dns.pcap",                              # PPP in HDLC framing
    "tcpdump/tests__pppoes.pcap",                                      # PPPoE session
    "tcpdump/tests__nsh.pcap",                                         # NSH
    "tcpdump/tests__loopback.pcap",                                    # Ethernet loopback
    "tcpdump/tests__ntp.pcap",                                         # NTP client/server
    "tcpdump/tests__nflog.pcap",                                       # Linux NFLOG
    "tcpdump/tests__LINKTYPE_IPV4.pcap",                               # raw IPv4
    "tcpdump/tests__LINKTYPE_IPV6.pcap",                               # raw IPv6
    "tcpdump/tests__slip-bad-direction.pcap",                          # SLIP
    "tcpdump/tests__unsupported-link-type-160.pcap",                   # refused, one line
    "pcapplusplus/Tests__Packet++Test__PacketExamples__NullLoopback.pcap",   # BSD loopback
    "pcapplusplus/Tests__Packet++Test__PacketExamples__CiscoHDLC.pcap",      # Cisco HDLC
    "pcapplusplus/Tests__Packet++Test__PacketExamples__PPPoESession.pcap",   # PPPoE session
    "pcapplusplus/Tests__Packet++Test__PacketExamples__MplsPackets.pcap",    # MPLS, pseudowire
    "pcapplusplus/Tests__Packet++Test__PacketExamples__QinQ_802.1_AD.pcapng",  # 802.1ad
    "pcapplusplus/Tests__Packet++Test__PacketExamples__GrePackets.pcap",     # GRE tunnels
    "pcapplusplus/Tests__Packet++Test__PacketExamples__IPv4Frag.pcap",       # fragments
    "pcapplusplus/Tests__Packet++Test__PacketExamples__ipv6_opt_fragments.pcap",
    "pcapplusplus/Tests__Packet++Test__PacketExamples__IPv4-TSO.pcap",       # total length 0
    "pcapplusplus/Tests__Packet++Test__PacketExamples__Sll2Packet.pcap",     # SLL2
    "pcapplusplus/Tests__Packet++Test__PacketExamples__llc_vlan.pcap",       # 802.3 + LLC
    "ppa/udp_dnsrequest.pcapng",                                       # DNS
    "markofu/PracticalPacketAnalysis__ppa-capture-files__80211traffic.pcap",   # 802.11
    "markofu/PracticalPacketAnalysis__ppa-capture-files__http-fault-post.pcap",  # damaged
)


def git(gitdir: str, *args: str) -> bytes:
    return subprocess.run(["git", f"--git-dir={gitdir}", *args], check=True,
                          capture_output=True, timeout=600).stdout


def clone(repo: str, into: Path) -> str:
    """A blob-less bare clone of the default branch; files are fetched as they are read."""
    url = f"https://github.com/{repo}"
    subprocess.run(["git", "clone", "--bare", "--depth", "1", "--filter=blob:none", url,
                    str(into)], check=True, timeout=1800)
    return str(into)


def take(corpus: Corpus, gitdir: str, out: Path) -> list[dict[str, str | int]]:
    commit = git(gitdir, "rev-parse", "HEAD").decode().strip()
    names = git(gitdir, "ls-tree", "-r", "--name-only", "HEAD").decode().splitlines()
    wanted = [n for n in names if n.startswith(corpus.prefix)
              and n.lower().endswith(CAPTURE_SUFFIXES)]
    rows: list[dict[str, str | int]] = []
    folder = out / corpus.name
    folder.mkdir(parents=True, exist_ok=True)
    missing = size = 0
    for path in wanted:
        try:
            data = git(gitdir, "show", f"{commit}:{path}")
        except subprocess.CalledProcessError:   # a partial mirror without that blob
            missing += 1
            continue
        local = folder / path.replace("/", "__")
        local.write_bytes(data)
        size += len(data)
        rows.append({"file": str(local.relative_to(out)), "source": corpus.name,
                     "repo": f"https://github.com/{corpus.repo}", "commit": commit,
                     "path": path, "bytes": len(data),
                     "sha256": hashlib.sha256(data).hexdigest()})
    print(f"{corpus.name}: {len(rows)} captures, {size:,} bytes "
          f"from {corpus.repo} at {commit[:12]}"
          + (f" ({missing} not in this copy of the repository)" if missing else ""))
    return rows


def write_subset(corpus: Path, target: Path) -> None:
    """Copy SUBSET from a fetched corpus into `target`, with SOURCES.md naming each file's
    repository, commit, path and SHA-256."""
    manifest = json.loads((corpus / "SOURCES.json").read_text())
    rows = {row["file"]: row for row in manifest["files"]}
    target.mkdir(parents=True, exist_ok=True)
    lines = ["# Captures from public projects, for tests/test_conformance.py", "",
             "Copied by `bench/fetch_corpus.py --subset tests/data/corpus` from the corpus it",
             "fetches (bench/conformance.py runs on all of it). Each file is the project's own,",
             "unchanged; its name here is its path in the repository with `/` as `__`.", "",
             "| file | repository | commit | path | SHA-256 |", "|---|---|---|---|---|"]
    for name in SUBSET:
        row = rows[name]
        data = (corpus / name).read_bytes()
        (target / Path(name).name).write_bytes(data)
        lines.append(f"| {Path(name).name} | {row['repo']} | {str(row['commit'])[:12]} | "
                     f"{row['path']} | {row['sha256']} |")
    about = manifest["sources"]
    lines += ["", *(f"- {name}: {info['repo']}: {info['about']}"
                    for name, info in about.items())]
    (target / "SOURCES.md").write_text("\n".join(lines) + "\n")
    print(f"{len(SUBSET)} captures copied to {target}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(BENCH / "corpus"))
    ap.add_argument("--from", dest="local", action="append", default=[], metavar="NAME=GITDIR",
                    help="read source NAME from a local clone or mirror")
    ap.add_argument("--only", default="", help="comma-separated source names")
    ap.add_argument("--subset", metavar="DIR",
                    help="copy the committed subset from an already fetched --out into DIR")
    args = ap.parse_args(argv)
    if args.subset:
        write_subset(Path(args.out), Path(args.subset))
        return 0
    local = dict(item.split("=", 1) for item in args.local)
    only = set(filter(None, args.only.split(",")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = []
    with tempfile.TemporaryDirectory() as tmp:
        for corpus in SOURCES:
            if only and corpus.name not in only:
                continue
            gitdir = local.get(corpus.name) or clone(corpus.repo, Path(tmp) / corpus.name)
            manifest += take(corpus, gitdir, out)
    about = {c.name: {"repo": f"https://github.com/{c.repo}", "about": c.about}
             for c in SOURCES}
    (out / "SOURCES.json").write_text(json.dumps({"sources": about, "files": manifest},
                                                 indent=1) + "\n")
    print(f"{len(manifest)} captures in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
