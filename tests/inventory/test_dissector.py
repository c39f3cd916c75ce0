"""The slow path under stress: floods, a hung, crashed, leaking or killed tshark/worker,
malformed payloads. Every wait is bounded (flush timeouts, wait_for)."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import invcaptures as caps
import pytest
from invcaptures import evidence, feed
from netns import wait_for

from appliance.inventory.dissector import SAMPLING, DissectConfig, DissectError, Dissector
from appliance.inventory.triage import Triage
from appliance.sources.capture import CaptureFile
from fastpath import Classifier


def fake_tshark(directory: Path, real: str) -> Path:
    """A `tshark` that hangs, crashes or balloons while DIR/mode says so, else the real one."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "tshark"
    script.write_text(f"""#!/bin/sh
mode=$(cat "$(dirname "$0")/mode" 2>/dev/null)
case "$mode" in
  hang) exec sleep 600 ;;
  crash) kill -SEGV $$ ;;
  leak) exec {sys.executable} -c 'import time; b = b"x" * (400 << 20); time.sleep(600)' ;;
esac
exec {real} "$@"
""")
    script.chmod(0o755)
    return directory / "mode"


@pytest.fixture
def hl7_pcap(tmp_path: Path) -> str:
    cap = caps.Capture()
    c = caps.Tcp(cap, caps.MONITOR, caps.CENTRAL, 40001, 2575).handshake()
    c.send(0, caps.hl7("IntelliVue", "MON-BED01", "PIIC-IX", "WARD4B", "ORU^R01^ORU_R01"))
    return cap.write(tmp_path / "hl7.pcap")


def _run(d: Dissector, path: str, timeout: float = 20) -> list[dict]:
    feed(d, path)
    assert d.flush(timeout), d.stats()
    return d.drain_results()


def test_hung_tshark_is_killed_and_restarted(tmp_path: Path, tshark: str, hl7_pcap: str) -> None:
    mode = fake_tshark(tmp_path / "bin", tshark)
    cfg = DissectConfig(tshark=str(tmp_path / "bin" / "tshark"), timeout_s=2.0,
                        dedupe_ttl_s=0, spool_dir=str(tmp_path / "spool"))
    with Dissector(cfg) as d:
        mode.write_text("hang")
        assert _run(d, hl7_pcap) == []
        st = d.stats()
        assert st["worker_timeouts"] == 1 and st["chunks_failed"] == 1 and st["packets_lost"]
        mode.write_text("")
        # recovery, not speed: a cold worker (pyshark, then tshark) on a loaded machine
        # can take longer than the 2 s that caught the hang
        d.config.timeout_s = 30.0
        records = _run(d, hl7_pcap, timeout=60)
        assert evidence(records, caps.MONITOR.mac).get("hl7.app") == {"IntelliVue"}, \
            json.dumps(d.stats())
        assert d.stats()["worker_starts"] == 2
        assert os.listdir(tmp_path / "spool") == ["worker.log"]   # no chunk left behind


def test_crashing_tshark_costs_one_chunk(tmp_path: Path, tshark: str, hl7_pcap: str) -> None:
    mode = fake_tshark(tmp_path / "bin", tshark)
    cfg = DissectConfig(tshark=str(tmp_path / "bin" / "tshark"), dedupe_ttl_s=0)
    with Dissector(cfg) as d:
        mode.write_text("crash")
        assert _run(d, hl7_pcap) == []
        st = d.stats()
        assert st["tshark_errors"] == 1 and st["chunks_failed"] == 1, repr(st)
        assert "tshark" in (st["last_error"] or "").lower() or st["last_error"]
        mode.write_text("")
        records = _run(d, hl7_pcap)
        assert evidence(records, caps.MONITOR.mac)["hl7.sends"] == {"ORU^R01"}


def test_leaking_tshark_is_killed_at_the_rss_bound(tmp_path: Path, tshark: str,
                                                   hl7_pcap: str) -> None:
    mode = fake_tshark(tmp_path / "bin", tshark)
    cfg = DissectConfig(tshark=str(tmp_path / "bin" / "tshark"), dedupe_ttl_s=0,
                        rss_limit_mib=300, timeout_s=30)
    with Dissector(cfg) as d:
        mode.write_text("leak")
        assert _run(d, hl7_pcap) == []
        assert d.stats()["worker_rss_kills"] == 1 and d.stats()["worker_timeouts"] == 0
        mode.write_text("")
        assert evidence(_run(d, hl7_pcap), caps.MONITOR.mac)["hl7.app"] == {"IntelliVue"}


def test_killed_worker_is_replaced(tshark: str, hl7_pcap: str) -> None:
    with Dissector(DissectConfig(tshark=tshark, dedupe_ttl_s=0)) as d:
        assert _run(d, hl7_pcap)
        pid = d.stats()["worker_pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not os.path.exists(f"/proc/{pid}") or
                 open(f"/proc/{pid}/stat").read().split()[2] == "Z", timeout=5,
                 what="the worker to die")
        records = _run(d, hl7_pcap)
        assert evidence(records, caps.MONITOR.mac)["hl7.app"] == {"IntelliVue"}
        st = d.stats()
        assert st["worker_crashes"] == 1 and st["worker_starts"] == 2 and st["packets_lost"] == 0


def test_malformed_payloads_never_crash_the_worker(tmp_path: Path, tshark: str) -> None:
    path = caps.write_malformed(tmp_path / "malformed.pcap")
    with Dissector(DissectConfig(tshark=tshark, dedupe_ttl_s=0)) as d:
        records = _run(d, path)
        st = d.stats()
        assert st["runs"] == 1 and st["tshark_errors"] == 0 and st["chunks_failed"] == 0
        assert st["worker_starts"] == 1
        # the good message after the broken ones is still read
        assert evidence(records, caps.MONITOR.mac)["hl7.app"] == {"IntelliVue"}
        # and the broken ones gave no invented values
        values = {v for r in records for _, _, v, _, _ in r["ev"]}
        assert "x.example" not in values
        # the same packets, triaged again as the datapath would, are also safe
        triage = Triage(ttl_s=0)
        with CaptureFile(path) as cap:
            for batch in cap.batches():
                for i in range(batch.count):
                    o = batch.offsets[i]
                    triage.keep(batch.timestamps[i], batch.linktypes[i],
                                bytes(batch.buf[o:o + batch.lengths[i]]))
        assert sum(triage.kept.values()) + sum(triage.dropped.values()) == batch.count


def test_a_flood_of_new_flows_keeps_the_budgets(tmp_path: Path, tshark: str) -> None:
    path, packets = caps.write_flood(tmp_path / "flood.pcap", devices=400,
                                     flows_per_device=100, seconds=10, payload=True)
    clf = Classifier()
    clf.set_sampling(**SAMPLING)
    cfg = DissectConfig(tshark=tshark, queue_chunks=2, chunk_packets=64, max_pending=256,
                        max_batch=128)
    n = 4096
    verdicts, reasons = memoryview(bytearray(n)), memoryview(bytearray(n))
    rules = memoryview(bytearray(2 * n)).cast("H")
    samples = bytearray(n)
    with Dissector(cfg) as d, CaptureFile(path, n) as cap:
        for batch in cap.batches():
            clf.classify(batch.buf, batch.offsets, batch.lengths, batch.timestamps,
                         batch.linktypes, verdicts, reasons, rules, memoryview(samples))
            d.offer(batch, samples, batch.count)
            clf.drain(1 << 16)
        assert d.flush(60)
        st = d.stats()
    fast = clf.stats()
    seconds = 10 + 1
    # the fast path marked at most the global budget per second of capture time
    assert fast["samples"] <= SAMPLING["global_budget"] * seconds
    assert fast["samples_over_budget"] == packets - fast["samples"]
    # everything marked is accounted for: queued and triaged, or dropped and counted
    assert st["marked"] == fast["samples"]
    assert st["triaged_kept"] + st["triaged_away"] + st["packets_dropped_queue"] == st["marked"]
    # pyshark saw at most what was marked and never more than max_batch per run
    assert st["packets_to_pyshark"] <= st["marked"]
    assert st["packets_to_pyshark"] <= cfg.max_batch * st["runs"]
    assert st["pending"] == 0 and st["worker_timeouts"] == 0
    assert st["packets_to_pyshark"] / packets < 0.01, st


def test_triage_keeps_one_of_each_and_the_certificate_segments() -> None:
    cap = caps.Capture()
    for port in (40001, 40002):              # two connections, same pump, same server
        c = caps.Tcp(cap, caps.PUMP, caps.PUMP_SERVER, port, 443).handshake()
        c.send(0, caps.client_hello(caps.PUMP_CERT_CN))
        c.send(1, caps.server_flight(caps.certificate_der(caps.PUMP_CERT_CN, "H"), 3000))
    triage = Triage(ttl_s=3600)
    kept = [triage.keep(ts, 1, frame) for ts, frame in cap.frames]
    assert triage.kept == {"tls_client_hello": 1, "tls_server_hello": 1, "continuation": 2}
    assert triage.dropped["no_payload"] > 0 and triage.dropped["duplicate"] == 2
    assert sum(kept) == 4


def test_missing_tshark_stops_at_start_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DissectError, match="tshark not found.*apt install tshark"):
        Dissector(DissectConfig(tshark=str(tmp_path / "nowhere" / "tshark"))).start()


def test_triage_keys_on_new_evidence_not_on_the_peer_pair() -> None:
    """A second association of the same modality to the same PACS is kept when it says
    something new (another SOP class, a new AE title); the same one again is a duplicate."""
    cap = caps.Capture()
    pacs = caps.Host(caps.PACS.mac, "10.40.1.40")
    for port, calling, abstract in ((40101, "US01", b"1.2.840.10008.1.1"),
                                    (40102, "US01", b"1.2.840.10008.5.1.4.1.1.6.1"),
                                    (40103, "US01", b"1.2.840.10008.5.1.4.1.1.6.1"),
                                    (40104, "US02", b"1.2.840.10008.5.1.4.1.1.6.1")):
        c = caps.Tcp(cap, caps.US, pacs, port, 104).handshake()
        c.send(0, caps.dicom_associate(calling, "PACS", True, abstract=abstract))
    for port, app in ((40201, "MX800^Philips"), (40202, "MX800^Philips"),
                      (40203, "BEDMON7^Philips")):
        c = caps.Tcp(cap, caps.MONITOR, caps.CENTRAL, port, 2575).handshake()
        c.send(0, caps.hl7(app, "WARD4B", "PIIC-IX", "WARD4B", "ORU^R01^ORU_R01"))
    triage = Triage(ttl_s=3600)
    decisions = triage.keep_chunk([(ts, 1, frame) for ts, frame in cap.frames])
    assert sum(decisions) == 5
    assert triage.kept == {"dicom_association": 3, "hl7": 2}
    assert triage.dropped["duplicate"] == 2
