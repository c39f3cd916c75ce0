"""The fast path at scale: concurrent flows by the million, events, start-up, instructions.

    .venv/bin/python bench/bench_scale.py                       # everything (about 15 minutes)
    .venv/bin/python bench/bench_scale.py --skip callgrind,marginal --repeat 1   # quick look
    .venv/bin/python bench/bench_scale.py --only events,startup

Sections (each can be left out with --skip or chosen with --only):
- scale: captures of --packets packets (2,000,000) with 10k, 100k and 1M concurrent flows,
  replayed by `wardtap replay` (RSS, time per packet, flows evicted), side by side with
  `tcpdump -r CAPTURE -w /dev/null FILTER` (the allow-list as BPF) and nDPI's ndpiReader.
- flood: the 1M-flow capture into the old default table (65,536 slots): what is evicted.
- hugepages: the 1M-flow replay with transparent huge pages offered to the flow table and
  with THP switched off (machine-wide, root, put back afterwards), alternated.
- events: ring -> consumer (structured array, no Python per event), against the per-event
  path (tuples, dicts); the C cost of an event.
- store: 1M flow ends into the SQLite store (add_event_array), alternated with the same rows
  through executemany, into a store that keeps the old (src, dst) index, and through the
  dicts path.
- classifier: the classifier alone on flow-table hits, compact path against the general path,
  packets/s on the demo ward's IMIX capture (bench_replay.py's), alternated runs.
- callgrind: instructions per flow-table hit, compact and general (bench_replay.m_callgrind).
- marginal: instructions per packet of a whole replay against tcpdump + BPF, as the difference
  of runs over 300k and 600k packets of the ward capture (start-up cancels).
- daemon: a live `wardtap run` (replay source) under a port scan (every flow a new one,
  SYN then RST, nine in ten denied): the daemon's CPU per event and events/s into its
  store, as the difference of two scan sizes (start-up cancels), for the daemon as it is
  (store only; store and an event log of every event) and, with --before REF, the same
  daemon at git REF (its own worktree under OUT, the fast path copied in).
- startup: `wardtap --help` and `wardtap status` wall time, against `python -c pass`, with
  no daemon and against an idle and a busy daemon (the demo ward replayed over and over).

Every figure goes to OUT/scale.json and is printed with the issue's bars. Nothing is
asserted: this is a measurement. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))
sys.path.append(str(ROOT / "tests"))          # the tests' shared allow-lists

import bench_replay as BR  # noqa: E402
from policies import clients_tls  # noqa: E402

import fastpath  # noqa: E402
from appliance.common import eventarrays as ea  # noqa: E402
from appliance.common.records import event_dict  # noqa: E402
from appliance.outputs.store import Store  # noqa: E402
from appliance.outputs.store import _insert as store_insert  # noqa: E402
from appliance.policy.model import compile_policy, parse_policy  # noqa: E402
from appliance.sources.capture import CaptureFile  # noqa: E402

PY = sys.executable
WARDTAP = str(Path(PY).parent / "wardtap")
SECTIONS = ("scale", "flood", "hugepages", "events", "store", "classifier", "callgrind", "marginal",
            "startup", "daemon")
CLIENTS = 64
POLICY = clients_tls("scale")

# A pcap record of a 54-byte TCP frame (Ethernet, IPv4, TCP; no payload), 70 bytes in all.
RECORD = np.dtype({
    "names": ["sec", "usec", "incl", "orig", "dhi", "dlo", "shi", "slo", "etype", "vihl",
              "tlen", "frag", "ttl", "proto", "src", "dst", "sport", "dport", "doff", "flags",
              "win"],
    "formats": ["<u4", "<u4", "<u4", "<u4", ">u2", ">u4", ">u2", ">u4", ">u2", "u1", ">u2",
                ">u2", "u1", "u1", ">u4", ">u4", ">u2", ">u2", "u1", "u1", ">u2"],
    "offsets": [0, 4, 8, 12, 16, 18, 22, 24, 28, 30, 32, 36, 38, 39, 42, 46, 50, 52, 62, 63,
                64],
    "itemsize": 70})


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def write_flows(path: Path, flows: int, packets: int) -> Path:
    """`packets` packets over `flows` concurrent TCP flows, round robin (every flow is open
    for the whole capture). Flow f: client 10.40.0.(10 + f % 64) port 1024 + f // 64 to
    10.20.0.15, port 443 (allowed) or, every tenth flow, 8080 (denied). Round 0 is each
    flow's SYN; then ACKs, server and client in turn. 1 us apart."""
    if path.exists() and path.stat().st_size == 24 + packets * RECORD.itemsize:
        return path
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        step = 1 << 20
        for start in range(0, packets, step):
            k = np.arange(start, min(packets, start + step), dtype=np.int64)
            f, rnd = k % flows, k // flows
            rec = np.zeros(len(k), RECORD)
            rec["sec"], rec["usec"] = 1_700_000_000 + k // 1_000_000, k % 1_000_000
            rec["incl"], rec["orig"] = 54, 60
            client = f % CLIENTS
            from_server = (rnd % 2) == 1
            cmac, smac = 0x0200_0000_0000 + client, 0x0000_0C00_00FE
            dmac = np.where(from_server, cmac, smac)
            srcmac = np.where(from_server, smac, cmac)
            rec["dhi"], rec["dlo"] = dmac >> 32, dmac & 0xFFFFFFFF
            rec["shi"], rec["slo"] = srcmac >> 32, srcmac & 0xFFFFFFFF
            rec["etype"], rec["vihl"], rec["tlen"], rec["frag"] = 0x0800, 0x45, 40, 0x4000
            rec["ttl"], rec["proto"] = 64, 6
            cip, sip = (10 << 24) | (40 << 16) | (10 + client), (10 << 24) | (20 << 16) | 15
            cport = 1024 + f // CLIENTS
            sport = np.where(f % 10 == 0, 8080, 443)
            rec["src"] = np.where(from_server, sip, cip)
            rec["dst"] = np.where(from_server, cip, sip)
            rec["sport"] = np.where(from_server, sport, cport)
            rec["dport"] = np.where(from_server, cport, sport)
            rec["doff"], rec["win"] = 0x50, 65535
            rec["flags"] = np.where(rnd == 0, 0x02, 0x10)
            fh.write(rec.tobytes())
    os.replace(tmp, path)
    return path


def timed(argv: list[str], stdout: Any = subprocess.DEVNULL) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.PIPE if stdout is None else stdout,
                          stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(argv[:3])}...: exit {done.returncode}: "
                           f"{done.stderr[-400:]}")
    return wall, done.stdout or ""


def replay_rss(capture: Path, policy: Path, out: Path, extra: list[str]) -> dict[str, Any]:
    mem = out / "scale-rss.json"
    wall, text = timed([PY, str(BENCH / "replay_rss.py"), str(mem), "replay", str(capture),
                        "--policy", str(policy), "--json", *extra], stdout=None)
    summary = json.loads(text)
    rss = json.loads(mem.read_text())
    return {"wall_s": wall, "elapsed_s": summary["elapsed_s"], "packets": summary["packets"],
            "counters": summary["counters"], "memory_bytes": summary["memory_bytes"],
            "peak_rss_kib": rss["exit"]["VmHWM"], "rss_anon_kib": rss["exit"]["RssAnon"],
            "capture_rss_kib": rss.get("before_unmap", {}).get("capture_mapping_rss")}


def m_scale(out: Path, flow_counts: list[int], packets: int, repeat: int) -> dict[str, Any]:
    policy = out / "scale-policy.toml"
    policy.write_text(POLICY)
    bpf = BR.bpf_filter(parse_policy(POLICY))
    tcpdump, ndpi = shutil.which("tcpdump"), shutil.which("ndpiReader")
    res: dict[str, Any] = {"packets": packets, "bpf": bpf,
                           "ndpiReader": ndpi or "not installed (Debian: libndpi-bin)"}
    for flows in flow_counts:
        cap = write_flows(out / f"scale-{flows}f-{packets}p.pcap", flows, packets)
        log(f"scale: {flows:,} flows")
        rows: dict[str, list[Any]] = {"replay": [], "tcpdump": [], "ndpi": []}
        for _ in range(repeat):              # alternated, so load hits all alike
            rows["replay"].append(replay_rss(cap, policy, out, []))
            if tcpdump:
                rows["tcpdump"].append(timed([tcpdump, "-r", str(cap), "-w", "/dev/null",
                                              bpf])[0])
            if ndpi:
                rows["ndpi"].append(timed([ndpi, "-i", str(cap), "-q"])[0])
        best = min(rows["replay"], key=lambda r: r["elapsed_s"])
        entry = {"flows": flows, "capture_bytes": cap.stat().st_size, "replay": best,
                 "replay_wall_s": [r["wall_s"] for r in rows["replay"]],
                 "ns_per_packet_loop": best["elapsed_s"] / packets * 1e9,
                 "ns_per_packet_wall": min(r["wall_s"] for r in rows["replay"]) / packets * 1e9}
        if rows["tcpdump"]:
            entry["tcpdump_wall_s"] = rows["tcpdump"]
            entry["replay_over_tcpdump"] = (min(r["wall_s"] for r in rows["replay"])
                                            / min(rows["tcpdump"]))
        if rows["ndpi"]:
            entry["ndpi_wall_s"] = rows["ndpi"]
            entry["replay_over_ndpi"] = (min(r["wall_s"] for r in rows["replay"])
                                         / min(rows["ndpi"]))
        res[str(flows)] = entry
    small, large = str(min(flow_counts)), str(max(flow_counts))
    if small != large:
        res["large_over_small_per_packet"] = (res[large]["ns_per_packet_loop"]
                                              / res[small]["ns_per_packet_loop"])
    return res


THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def m_hugepages(out: Path, flows: int, packets: int, repeat: int) -> dict[str, Any]:
    """The largest capture replayed with the kernel's transparent huge pages offered to the
    flow table (THP `madvise`, as it ships on Debian) and refused (`never`), alternated;
    the setting is put back afterwards. Root only (it is a machine-wide switch)."""
    if not os.access(THP, os.W_OK):
        return {"skipped": f"{THP} is not writable here (root only)"}
    policy = out / "scale-policy.toml"
    policy.write_text(POLICY)
    cap = write_flows(out / f"scale-{flows}f-{packets}p.pcap", flows, packets)
    before = THP.read_text().split("[")[1].split("]")[0]
    runs: dict[str, list[float]] = {"madvise": [], "never": []}
    try:
        for _ in range(repeat):
            for setting in runs:
                THP.write_text(setting)
                runs[setting].append(replay_rss(cap, policy, out, [])["elapsed_s"])
    finally:
        THP.write_text(before)
    best = {k: min(v) for k, v in runs.items()}
    med = {k: statistics.median(v) for k, v in runs.items()}
    log(f"hugepages: {flows:,} flows: best {best['madvise']:.3f} s with, "
        f"{best['never']:.3f} s without")
    return {"flows": flows, "packets": packets, "thp_was": before, "elapsed_s": runs,
            "with_over_without_best": best["madvise"] / best["never"],
            "with_over_without_median": med["madvise"] / med["never"]}


def m_flood(out: Path, flows: int, packets: int) -> dict[str, Any]:
    """The largest capture into 65,536 slots (the old default): who is evicted."""
    cap = write_flows(out / f"scale-{flows}f-{packets}p.pcap", flows, packets)
    policy = out / "scale-policy.toml"
    log("flood: 1M flows into 65,536 slots")
    r = replay_rss(cap, policy, out, ["--flows", "65536"])
    c = r["counters"]
    return {"flow_slots": 65536, "flows_created": c["flows_created"],
            "flows_evicted": c["flows_evicted"],
            "flows_evicted_allowed": c["flows_evicted_allowed"], "elapsed_s": r["elapsed_s"],
            "peak_rss_kib": r["peak_rss_kib"], "memory_bytes": r["memory_bytes"]}


def _batches(cap: Path, limit: int) -> list[tuple[Any, ...]]:
    out, n = [], 0
    with CaptureFile(str(cap), 4096) as f:
        for b in f.batches():
            k = min(b.count, limit - n)
            out.append((bytes(b.buf[b.offsets[0]:b.offsets[k - 1] + b.lengths[k - 1]]),
                        np.array(b.offsets[:k]) - b.offsets[0], np.array(b.lengths[:k]),
                        np.array(b.timestamps[:k]), np.array(b.linktypes[:k])))
            n += k
            if n >= limit:
                break
    return out


def _storm(batches: list[tuple[Any, ...]], types: list[str] | None, drain: str
           ) -> dict[str, Any]:
    """Classify the batches (every packet a new flow); drain after each batch."""
    clf = fastpath.Classifier(flow_capacity=1 << 21, device_capacity=4096,
                              event_capacity=1 << 16, seed=1)
    clf.set_policy(compile_policy(parse_policy(POLICY)))
    clf.set_mode("monitor")
    clf.set_events(types)
    v, r, ru = (np.zeros(4096, t) for t in (np.uint8, np.uint8, np.uint16))
    buf = ea.EventBuffer(1 << 16)
    t_classify = t_drain = 0.0
    events = 0
    for data, off, ln, ts, lt in batches:
        t0 = time.perf_counter()
        clf.classify(data, off, ln, ts, lt, v, r, ru)
        t1 = time.perf_counter()
        if drain == "array":
            events += len(buf.drain(clf))
        elif drain == "dicts":
            events += len([event_dict(t) for t in clf.drain(1 << 16)])
        t_drain += time.perf_counter() - t1
        t_classify += t1 - t0
    return {"classify_s": t_classify, "drain_s": t_drain, "events": events,
            "stats": {k: int(v) for k, v in clf.stats().items() if k != "reasons"}}


def m_events(out: Path, flows: int, packets: int) -> dict[str, Any]:
    cap = write_flows(out / f"scale-{flows}f-{packets}p.pcap", flows, packets)
    log("events: a new-flow storm of 1M flows")
    storm = _batches(cap, flows)              # round 0: one new flow per packet
    res: dict[str, Any] = {"packets": flows}
    best: dict[str, dict[str, Any]] = {}
    for _ in range(3):
        for name, types, drain in (("counted_only", [], "none"),
                                   ("array", None, "array"),
                                   ("dicts", None, "dicts")):
            run = _storm(storm, types, drain)
            if name not in best or run["classify_s"] + run["drain_s"] < (
                    best[name]["classify_s"] + best[name]["drain_s"]):
                best[name] = run
    res.update(best)
    arr, lean = best["array"], best["counted_only"]
    res["ring_to_consumer_events_per_s"] = arr["events"] / arr["drain_s"]
    res["per_event_path_events_per_s"] = best["dicts"]["events"] / best["dicts"]["drain_s"]
    res["c_ns_per_event"] = ((arr["classify_s"] - lean["classify_s"]) / arr["events"] * 1e9)
    if shutil.which("valgrind"):
        # Deterministic: the storm's first 200k flows under callgrind, every event queued and
        # drained, against none (counted only); the difference over the events.
        log("events: callgrind, queued against counted only")
        ir, queued = {}, 0
        for mode in ("all", "none"):
            argv = [PY, str(BENCH / "callgrind_events.py"), str(cap), "--flows", "200000"]
            ir[mode] = _ir(argv + (["--none"] if mode == "none" else []),
                           out / f"events-{mode}.out")
            if mode == "all":
                queued = json.loads(subprocess.run(argv, capture_output=True, text=True,
                                                   check=True).stdout)["queued"]
        res["c_instructions_per_event"] = (ir["all"] - ir["none"]) / queued
    return res


def m_store(out: Path, flows: int, packets: int, repeat: int) -> dict[str, Any]:
    """1M flow-end records (the storm's flows, flow-end shaped) into the SQLite store in
    batches of 8192, one transaction each, as Replayer does; alternated with the same into a
    store that still has the (src, dst) index (schema 6), and 100k through the dicts path.
    Wall time and CPU time (the machine is shared: CPU time is the steadier figure)."""
    cap = write_flows(out / f"scale-{flows}f-{packets}p.pcap", flows, packets)
    log("store: flow-end records from a 1M-flow storm")
    clf = fastpath.Classifier(flow_capacity=1 << 21, device_capacity=4096, seed=1)
    clf.set_policy(compile_policy(parse_policy(POLICY)))
    clf.set_mode("monitor")
    v, r, ru = (np.zeros(4096, t) for t in (np.uint8, np.uint8, np.uint16))
    for data, off, ln, ts, lt in _batches(cap, flows):
        clf.classify(data, off, ln, ts, lt, v, r, ru)
        clf.drain(1 << 16)
    records = np.zeros(flows, fastpath.EVENT_DTYPE)
    n = clf.copy_flows(records.view(np.uint8))
    records = records[:n]
    rules = parse_policy(POLICY).rule_name

    def one(variant: str) -> dict[str, float]:
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            with Store(os.path.join(tmp, "wardtap.db")) as store:
                run = store.start_run("replay", ["scale"], "monitor", None)
                if variant == "with the (src, dst) index":
                    store.db.execute("CREATE INDEX idx_flows_src_dst ON flows (src, dst)")
                part = records if variant != "dicts" else records[:100_000]
                wall, cpu = time.perf_counter(), time.process_time()
                for i in range(0, len(part), 8192):
                    if variant == "dicts":
                        store.add_events(run, ea.as_dicts(part[i:i + 8192], rules))
                    elif variant == "executemany, one row a statement":
                        rows = list(zip(*ea.flow_columns(run, part[i:i + 8192], rules),
                                        strict=True))
                        sql = store_insert("flows", ea.FLOW_COLUMNS, 1)
                        store._write(lambda s=sql, r=rows: store.db.conn.executemany(s, r))
                    else:
                        store.add_event_array(run, part[i:i + 8192], rules)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                size = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp))
        return {"rows": len(part), "seconds": wall, "cpu_seconds": cpu,
                "events_per_s": len(part) / wall, "cpu_us_per_event": cpu / len(part) * 1e6,
                "bytes_per_row": size / len(part)}

    variants = ("add_event_array", "executemany, one row a statement",
                "with the (src, dst) index", "dicts")
    best: dict[str, dict[str, float]] = {}
    for _ in range(repeat):
        for name in variants:
            log(f"store: {name}")
            got = one(name)
            if name not in best or got["seconds"] < best[name]["seconds"]:
                best[name] = got
    # Columns alone (no SQLite): what building them costs.
    cpu = time.process_time()
    for i in range(0, n, 8192):
        ea.flow_columns(1, records[i:i + 8192], rules)
    res: dict[str, Any] = dict(best["add_event_array"])
    res["columns_only_cpu_us_per_event"] = (time.process_time() - cpu) / n * 1e6
    res["variants"] = best
    return res


def m_classifier(out: Path, repeat: int) -> dict[str, Any]:
    meta = BR.ensure_capture(out, 1_000_000, 2000, 1)
    policy = parse_policy(BR.write_policy(out).read_text())
    pre = BR.preload(Path(meta["path"]), 1_000_000)
    chunks = pre.chunks()
    log("classifier: compact against general, alternated")
    clfs = {}
    for name, compact in (("compact", True), ("general", False)):
        clf = fastpath.Classifier(flow_capacity=65536, device_capacity=4096, seed=1,
                                  compact=compact)
        clf.set_mode("monitor")
        clf.set_policy(compile_policy(policy))
        BR.classify_pass(clf, pre.buf, chunks)              # warm-up: creates the flows
        clfs[name] = clf
    times: dict[str, list[float]] = {"compact": [], "general": []}
    for _ in range(repeat):
        for name, clf in clfs.items():
            times[name].append(BR.classify_pass(clf, pre.buf, chunks))
    res = {name: {"best_s": min(t), "mpps": pre.count / min(t) / 1e6,
                  "median_mpps": pre.count / statistics.median(t) / 1e6}
           for name, t in times.items()}
    st = clfs["compact"].stats()
    res["compact_share"] = st["compact"] / st["packets"]
    res["speedup"] = res["compact"]["mpps"] / res["general"]["mpps"]
    return res


def m_callgrind(out: Path) -> dict[str, Any]:
    meta = BR.ensure_capture(out, 1_000_000, 2000, 1)
    policy = BR.write_policy(out)
    res = {}
    for name, general in (("compact", False), ("general", True)):
        log(f"callgrind: {name} path")
        r = BR.m_callgrind(Path(meta["path"]), policy, out, general=general)
        res[name] = {"ir_per_packet": r["ir_per_packet"],
                     "difference_ir_per_packet": r["difference"]["ir_per_packet"],
                     "top": r.get("client_requests", {}).get("top_functions_exclusive", [])[:5]}
    return res


def _ir(argv: list[str], out_file: Path) -> int:
    valgrind = shutil.which("valgrind")
    assert valgrind
    subprocess.run([valgrind, "--tool=callgrind", "--dump-instr=no",
                    f"--callgrind-out-file={out_file}", *argv], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)
    return BR._callgrind_totals(out_file)


def m_marginal(out: Path) -> dict[str, Any]:
    """Instructions per packet of a whole replay and of tcpdump + BPF: the difference of
    runs over 300k and 600k packets of the ward capture (start-up and teardown cancel)."""
    policy_path = BR.write_policy(out)
    bpf = BR.bpf_filter(parse_policy(policy_path.read_text()))
    caps = {n: Path(BR.ensure_capture(out, n, 2000, 1)["path"]) for n in (300_000, 600_000)}
    ir: dict[str, dict[int, int]] = {"replay": {}, "tcpdump": {}}
    for n, cap in caps.items():
        log(f"marginal: callgrind over {n:,} packets")
        ir["replay"][n] = _ir([WARDTAP, "replay", str(cap), "--policy", str(policy_path),
                               "--json"], out / f"marginal-replay-{n}.out")
        # -Z root: tcpdump would otherwise drop to its own user and callgrind could not
        # write its output file.
        ir["tcpdump"][n] = _ir([shutil.which("tcpdump") or "tcpdump", "-Z", "root", "-r",
                                str(cap), "-w", "/dev/null", bpf],
                               out / f"marginal-tcpdump-{n}.out")
    per = {k: (v[600_000] - v[300_000]) / 300_000 for k, v in ir.items()}
    return {"ir": {k: {str(n): x for n, x in v.items()} for k, v in ir.items()},
            "replay_ir_per_packet": per["replay"], "tcpdump_ir_per_packet": per["tcpdump"],
            "ratio": per["replay"] / per["tcpdump"]}


def _daemon(directory: Path, files: list[str]) -> tuple[subprocess.Popen[str], str]:
    """`wardtap run` on the demo ward replaying `files` (then staying up), its socket."""
    (directory / "wardtap.toml").write_text(
        '[appliance]\nmode = "enforce"\n'
        f'[datapath]\ntype = "replay"\nfiles = {json.dumps(files)}\nstay = true\n'
        '[policy]\nfile = "policy.toml"\n[control]\nsocket = "control.sock"\n')
    with open(directory / "daemon.log", "w") as log_file:
        proc = subprocess.Popen([WARDTAP, "run", "--config", str(directory / "wardtap.toml")],
                                cwd=directory, stdout=log_file, stderr=log_file, text=True)
    return proc, str(directory / "control.sock")


def _status(sock: str) -> dict[str, Any] | None:
    from appliance.common.control import request
    from appliance.errors import WardtapError

    try:
        return request(sock, {"cmd": "status"}, timeout=5)
    except WardtapError:
        return None


def _timed_cases(cases: dict[str, list[str]], rounds: int) -> dict[str, dict[str, float]]:
    """Each command `rounds` times, alternated: median and best wall time, median CPU time
    (user + system of the process: what the command costs, whatever else runs here)."""
    import resource

    wall: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for name, argv in cases.items():
            used = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall[name].append(time.perf_counter() - start)
            now = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[name].append(now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime)
    return {k: {"median_ms": statistics.median(wall[k]) * 1e3, "best_ms": min(wall[k]) * 1e3,
                "cpu_median_ms": statistics.median(cpu[k]) * 1e3} for k in cases}


def _wait_status(sock: str, done: Callable[[dict[str, Any]], bool]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:          # bounded
        answer = _status(sock)
        if answer and answer.get("ok") and done(answer):
            return
        time.sleep(0.1)
    raise RuntimeError(f"the daemon on {sock} did not start within 60 s")


def m_startup(out: Path, repeat: int) -> dict[str, Any]:
    """Wall time of short commands, alternated, medians, with `python -c pass` as the floor:
    `wardtap --help`, `wardtap status` with no daemon, and `wardtap status` (drawn and
    --json) against an idle daemon (its replay done, staying up); then, with `python -c
    pass` again as the floor, against a busy one (replaying the demo ward over and over while
    it is asked; it takes a core of its own)."""
    from demoward.ward import DEMO_POLICY, write_demo_ward

    missing = "/nonexistent/wardtap-bench.sock"
    floor = {"python -c pass": [PY, "-c", "pass"]}
    res: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        ward = Path(tmp)
        write_demo_ward(str(ward / "ward.pcap"), packets=100_000)
        for name in ("idle", "busy"):
            (ward / name).mkdir()
            (ward / name / "policy.toml").write_text(DEMO_POLICY)
        idle, idle_sock = _daemon(ward / "idle", ["../ward.pcap"])
        try:
            _wait_status(idle_sock, lambda a: a["counters"]["packets"] == 100_000)
            res.update(_timed_cases({
                **floor, "wardtap --help": [WARDTAP, "--help"],
                "wardtap status (not running)": [WARDTAP, "status", "--socket", missing],
                "wardtap status --json (not running)": [WARDTAP, "status", "--json",
                                                        "--socket", missing],
                "status drawn (imports to draw it)": [PY, "-c",
                                                      "import appliance.cli.daemonctl, "
                                                      "appliance.panel.statustext"],
                "wardtap status (idle daemon)": [WARDTAP, "status", "--socket", idle_sock],
                "wardtap status --json (idle daemon)": [WARDTAP, "status", "--json",
                                                        "--socket", idle_sock]},
                repeat * 5))
        finally:
            idle.terminate()
            idle.wait(timeout=30)
        busy, busy_sock = _daemon(ward / "busy", ["../ward.pcap"] * 5000)   # 500M packets
        try:
            _wait_status(busy_sock, lambda a: a["counters"]["packets"] > 0)
            before = _status(busy_sock)
            timed = _timed_cases({
                **floor,
                "wardtap status (busy daemon)": [WARDTAP, "status", "--socket", busy_sock],
                "wardtap status --json (busy daemon)": [WARDTAP, "status", "--json",
                                                        "--socket", busy_sock]}, repeat * 5)
            after = _status(busy_sock)
        finally:
            busy.terminate()
            busy.wait(timeout=30)
    res["python -c pass (beside the busy daemon)"] = timed.pop("python -c pass")
    res.update(timed)
    if before and after:     # the busy daemon was replaying the whole time
        res["busy_daemon_packets_during"] = (after["counters"]["packets"]
                                             - before["counters"]["packets"])
    return res


def write_scan(path: Path, flows: int) -> Path:
    """A port scan: flow f is a SYN from 10.40.0.(10 + f % 64) port 1024 + f // 64 to
    10.20.0.15 port 443 (every tenth: allowed) or 8000 + f % 1000 (denied), answered at once
    by the server's RST. 2 packets a flow, 1 us apart."""
    if path.exists() and path.stat().st_size == 24 + 2 * flows * RECORD.itemsize:
        return path
    tmp = path.with_name(path.name + ".tmp")
    k = np.arange(2 * flows, dtype=np.int64)
    f, answer = k // 2, (k % 2) == 1
    rec = np.zeros(len(k), RECORD)
    rec["sec"], rec["usec"] = 1_700_000_000 + k // 1_000_000, k % 1_000_000
    rec["incl"], rec["orig"] = 54, 60
    client = f % CLIENTS
    cmac, smac = 0x0200_0000_0000 + client, 0x0000_0C00_00FE
    dmac, srcmac = np.where(answer, cmac, smac), np.where(answer, smac, cmac)
    rec["dhi"], rec["dlo"] = dmac >> 32, dmac & 0xFFFFFFFF
    rec["shi"], rec["slo"] = srcmac >> 32, srcmac & 0xFFFFFFFF
    rec["etype"], rec["vihl"], rec["tlen"], rec["frag"] = 0x0800, 0x45, 40, 0x4000
    rec["ttl"], rec["proto"] = 64, 6
    cip, sip = (10 << 24) | (40 << 16) | (10 + client), (10 << 24) | (20 << 16) | 15
    cport, sport = 1024 + f // CLIENTS, np.where(f % 10 == 0, 443, 8000 + f % 1000)
    rec["src"], rec["dst"] = np.where(answer, sip, cip), np.where(answer, cip, sip)
    rec["sport"] = np.where(answer, sport, cport)
    rec["dport"] = np.where(answer, cport, sport)
    rec["doff"], rec["win"] = 0x50, 65535
    rec["flags"] = np.where(answer, 0x14, 0x02)          # RST+ACK answers the SYN
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        fh.write(rec.tobytes())
    os.replace(tmp, path)
    return path


def _before_tree(out: Path, ref: str) -> Path:
    """A worktree of `ref` under OUT with this tree's built fast path (the fast path must
    be the same at both; the daemon around it is what is compared)."""
    tree = out / f"before-{ref}"
    if not tree.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), ref],
                       check=True, capture_output=True)
    for so in (ROOT / "fastpath").glob("*.so"):
        shutil.copy2(so, tree / "fastpath" / so.name)
    return tree


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _daemon_scan(directory: Path, capture: Path, tree: Path, event_log: bool
                 ) -> dict[str, Any]:
    """`wardtap run` (the code at `tree`) replaying `capture` in monitor mode with a store
    (and an event log): its CPU time once every packet is classified and every event
    drained, and what the store holds."""
    import sqlite3

    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / "policy.toml").write_text(POLICY)
    (directory / "wardtap.toml").write_text(
        '[appliance]\nmode = "monitor"\n'
        f'[datapath]\ntype = "replay"\nfiles = ["{capture}"]\nstay = true\n'
        '[policy]\nfile = "policy.toml"\n[store]\npath = "wardtap.db"\n'
        + ('[events]\nlog = "events.jsonl"\n' if event_log else "")
        + '[tables]\nflows = 1048576\n[control]\nsocket = "control.sock"\n')
    packets = (capture.stat().st_size - 24) // RECORD.itemsize
    env = dict(os.environ, PYTHONPATH=str(tree))
    with open(directory / "daemon.log", "w") as log_file:
        proc = subprocess.Popen([PY, "-m", "appliance.cli", "run", "--config",
                                 str(directory / "wardtap.toml")], cwd=tree, env=env,
                                stdout=log_file, stderr=log_file, text=True)
    sock = str(directory / "control.sock")
    try:
        deadline, answer = time.monotonic() + 600, None
        while time.monotonic() < deadline:          # bounded
            answer = _status(sock)
            if answer and answer.get("ok") and answer["counters"]["packets"] == packets \
                    and answer["counters"]["pending_events"] == 0:
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"the daemon did not finish {capture} within 600 s")
        cpu = _cpu_s(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    with sqlite3.connect(directory / "wardtap.db") as db:
        flows = db.execute("SELECT count(*) FROM flows").fetchone()[0]
        violations = db.execute("SELECT count(*) FROM violations").fetchone()[0]
    c = answer["counters"]
    return {"cpu_s": cpu, "stored_flows": flows, "stored_violations": violations,
            "flows_created": c["flows_created"], "flows_ended": c["flows_ended"],
            "violations_seen": answer["violations"]["seen"],
            "events_counted_only": c["events_counted_only"],
            "events_dropped": c["events_dropped"]}


def m_daemon(out: Path, before: str | None, repeat: int) -> dict[str, Any]:
    """The daemon under a port scan: CPU per event, events/s into the store (marginal over
    two scan sizes, the best of `repeat` alternated rounds)."""
    small, large = 50_000, 250_000
    caps = {n: write_scan(out / f"scan-{n}.pcap", n) for n in (small, large)}
    variants: dict[str, tuple[Path, bool]] = {"store": (ROOT, False),
                                              "store and event log": (ROOT, True)}
    if before:
        variants[f"store, at {before}"] = (_before_tree(out, before), False)
        variants[f"store and event log, at {before}"] = (variants[f"store, at {before}"][0],
                                                         True)
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {v: {small: [], large: []}
                                                         for v in variants}
    try:
        for _ in range(repeat):
            for name, (tree, event_log) in variants.items():
                for n, cap in caps.items():
                    log(f"daemon: {name}, {n:,} flows")
                    runs[name][n].append(_daemon_scan(out / "daemon-run", cap, tree,
                                                      event_log))
    finally:
        if before:          # the worktree goes; git keeps no record of it
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(out / f"before-{before}")], check=False, capture_output=True)
    res: dict[str, Any] = {"flows": [small, large]}
    for name in variants:
        lo = min(runs[name][small], key=lambda r: r["cpu_s"])
        hi = min(runs[name][large], key=lambda r: r["cpu_s"])
        events = {k: hi[k] - lo[k] for k in ("flows_created", "flows_ended",
                                             "violations_seen")}
        reported = sum(events.values())
        stored = (hi["stored_flows"] + hi["stored_violations"]
                  - lo["stored_flows"] - lo["stored_violations"])
        cpu = hi["cpu_s"] - lo["cpu_s"]
        res[name] = {"small": lo, "large": hi, "marginal_cpu_s": cpu,
                     "marginal_events": reported, "marginal_rows_stored": stored,
                     "cpu_us_per_event": cpu / reported * 1e6,
                     "events_per_s": reported / cpu, "rows_into_store_per_s": stored / cpu}
    return res


def bars(res: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    rows: list[tuple[str, str, str, bool | None]] = []
    cg = res.get("callgrind")
    if cg:
        ir = cg["compact"]["ir_per_packet"]
        rows.append(("instructions per flow-table hit", "<= 300 (goal 250)",
                     f"{ir:.0f} (general path {cg['general']['ir_per_packet']:.0f})", ir <= 300))
    cl = res.get("classifier")
    if cl:
        rows.append(("classifier alone, Mpps", ">= 10",
                     f"{cl['compact']['mpps']:.2f} (general {cl['general']['mpps']:.2f})",
                     cl["compact"]["mpps"] >= 10))
    mg = res.get("marginal")
    if mg:
        rows.append(("replay / tcpdump+BPF marginal instructions", "<= 0.5x (goal 0.25x)",
                     f"{mg['ratio']:.2f}x ({mg['replay_ir_per_packet']:.0f} / "
                     f"{mg['tcpdump_ir_per_packet']:.0f})", mg["ratio"] <= 0.5))
    sc = res.get("scale")
    if sc and "large_over_small_per_packet" in sc:
        x = sc["large_over_small_per_packet"]
        rows.append(("1M flows / 10k flows, time per packet", "<= 5x", f"{x:.2f}x", x <= 5))
    hp = res.get("hugepages")
    if hp and "with_over_without_best" in hp:
        rows.append(("1M flows, huge pages offered / THP off (time)", "-",
                     f"{hp['with_over_without_best']:.2f}x best, "
                     f"{hp['with_over_without_median']:.2f}x median", None))
    fl = res.get("flood")
    if fl:
        rows.append(("allowed conversations evicted (1M flows, 65,536 slots)", "0",
                     f"{fl['flows_evicted_allowed']} of {fl['flows_evicted']:,} evicted",
                     fl["flows_evicted_allowed"] == 0))
    ev = res.get("events")
    if ev:
        x = ev["ring_to_consumer_events_per_s"]
        rows.append(("events ring -> consumer", ">= 1M/s", f"{x / 1e6:.1f}M/s", x >= 1e6))
    sto = res.get("store")
    if sto:
        y = sto["events_per_s"]
        rows.append(("events into the SQLite store", ">= 200k/s",
                     f"{y / 1e3:.0f}k/s ({sto['cpu_us_per_event']:.2f} us CPU an event)",
                     y >= 2e5))
    dm = res.get("daemon")
    if dm:
        for name, r in dm.items():
            if isinstance(r, dict):
                # The bar is the store's; an event log of every event on top is shown beside
                # it, not held to it (one JSON line per event is its own promise).
                y, bar = r["rows_into_store_per_s"], "event log" not in name
                rows.append((f"daemon, port scan: {name}",
                             ">= 200k/s into the store" if bar else "-",
                             f"{y / 1e3:.0f}k rows/s; {r['cpu_us_per_event']:.2f} us CPU an "
                             "event", y >= 2e5 if bar else None))
    st = res.get("startup")
    if st:
        for k in ("wardtap --help", "wardtap status (not running)",
                  "wardtap status (idle daemon)", "wardtap status (busy daemon)"):
            if k not in st:
                continue
            ms, floor = st[k]["median_ms"], st["python -c pass"]["median_ms"]
            if "busy" in k:
                floor = st["python -c pass (beside the busy daemon)"]["median_ms"]
            rows.append((k, "< 150 ms", f"{ms:.0f} ms (python -c pass {floor:.0f} ms; CPU "
                         f"{st[k]['cpu_median_ms']:.0f} ms)", ms < 150))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flows", default="10000,100000,1000000")
    ap.add_argument("--packets", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(BENCH / "out"))
    ap.add_argument("--skip", default="")
    ap.add_argument("--only", default="")
    ap.add_argument("--before", default=None,
                    help="daemon: also measure the daemon at this git ref (e.g. main)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = [s for s in SECTIONS if (not args.only or s in args.only.split(","))
              and s not in args.skip.split(",")]
    flow_counts = [int(x) for x in args.flows.split(",")]
    # Sections run with --only are merged into the last results (OUT/scale.json), and the
    # file is written after every section, so a failure keeps what was measured.
    path = out / "scale.json"
    res: dict[str, Any] = json.loads(path.read_text()) if args.only and path.exists() else {}
    res.update({"load_before": os.getloadavg(), "cpu": BR._cpu()})
    runs = {
        "startup": lambda: m_startup(out, args.repeat),
        "events": lambda: m_events(out, max(flow_counts), args.packets),
        "store": lambda: m_store(out, max(flow_counts), args.packets, args.repeat),
        "classifier": lambda: m_classifier(out, args.repeat),
        "scale": lambda: m_scale(out, flow_counts, args.packets, args.repeat),
        "flood": lambda: m_flood(out, max(flow_counts), args.packets),
        "hugepages": lambda: m_hugepages(out, max(flow_counts), args.packets, args.repeat),
        "callgrind": lambda: m_callgrind(out),
        "marginal": lambda: m_marginal(out),
        "daemon": lambda: m_daemon(out, args.before, args.repeat),
    }
    for name in chosen:
        try:
            res[name] = runs[name]()
        except Exception as exc:  # noqa: BLE001  (a measurement that failed is reported)
            log(f"{name}: failed: {exc}")
            res[name + "_error"] = str(exc)
        res[name + "_load"] = os.getloadavg()
        path.write_text(json.dumps(res, indent=2, default=str))
    res["load_after"] = os.getloadavg()
    path.write_text(json.dumps(res, indent=2, default=str))
    print(json.dumps({k: v for k, v in res.items()}, indent=2, default=str))
    print("\nbars:")
    for name, bar, got, ok in bars(res):
        mark = "met" if ok else "NOT met" if ok is False else "-"
        print(f"  {name:<58} {bar:<22} {got:<40} {mark}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
