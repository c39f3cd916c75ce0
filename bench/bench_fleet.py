"""Fleet benchmarks: collectors ingesting into PostgreSQL, and the console at scale.

    .venv/bin/python bench/bench_fleet.py ingest [--appliances 1000] [--events 100]
    .venv/bin/python bench/bench_fleet.py pages [--appliances 1000] [--devices 100000]
                                                [--events 10000000] [--requests 40]

ingest: a real PostgreSQL 15 (fsync on), a real mosquitto on loopback, two `wardtap fleet
collect` processes in one shared-subscription group, and `--appliances` simulated
appliances (demoward.loadgen, each its own MQTT connection and SQLite spool, in
`--procs` processes) sending `--events` violations each as fast as they go. Reported:
events/s from the first publish to the last commit, events lost (expected minus stored,
by id), duplicates stored (0 by the primary key), and the lag from publish (the event's
`ts`, taken when the appliance spooled it) to the collector's write (`received`, taken in
the transaction that commits it): p50, p99, max.

pages: the same schema filled in SQL (generate_series) with `--appliances` appliances,
`--devices` devices and `--events` events over 7 days (the rollups computed from them), then
`wardtap fleet serve` on loopback and a real HTTP client (httpx, one connection, logged in)
timing the fleet page, an appliance page and a device search, `--requests` each: p50 and
p95 in ms; the console's resident memory (VmRSS) and PostgreSQL's database size after.

Everything runs on this machine, loopback only; nothing is asserted (a measurement).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "fleet"), str(ROOT / "tests")]

from brokerkit import Broker, free_port, wait_for  # noqa: E402
from pgkit import running_postgres  # noqa: E402

DURABLE = ("fsync = on\nsynchronous_commit = on\nfull_page_writes = on\n"
           "shared_buffers = 512MB\nmaintenance_work_mem = 1GB\nmax_wal_size = 8GB\n")


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT))


@contextlib.contextmanager
def _postgres() -> Iterator[Any]:
    """A durable PostgreSQL in a temporary directory, removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="wardtap-bench-pg-"))
    d.chmod(0o755)
    try:
        with running_postgres(d / "cluster", DURABLE) as pg:
            yield pg
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _query(url: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return list(conn.execute(sql).fetchall())


# -- ingest ----------------------------------------------------------------------------------

def ingest(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="wardtap-bench-ingest-"))
    result = _ingest(args, work)
    if result["loadgens_drained"]:
        shutil.rmtree(work, ignore_errors=True)
    else:
        result["logs"] = str(work)          # kept: a load generator did not end cleanly
    return result


def _ingest(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    total = args.appliances * args.events
    with _postgres() as pg:
        db = pg.create_database("fleet")
        broker = Broker(work / "broker", tls=False)
        broker.start()
        collectors, loadgens = [], []
        try:
            for i in range(2):
                log = open(work / f"collector-{i}.log", "w")  # noqa: SIM115
                collectors.append(subprocess.Popen(
                    [sys.executable, "-m", "appliance.cli", "fleet", "collect", "--db", db,
                     "--group", "bench", "--id", f"collector-{i}", "--broker", broker.url],
                    cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT))
            wait_for(lambda: all("connected" in (work / f"collector-{i}.log").read_text()
                                 for i in range(2)), timeout=30, what="collectors")
            per = -(-args.appliances // args.procs)
            start = time.time()
            for k in range(args.procs):
                n = min(per, args.appliances - k * per)
                if n <= 0:
                    break
                log = open(work / f"loadgen-{k}.log", "w")  # noqa: SIM115
                loadgens.append(subprocess.Popen(
                    [sys.executable, "-m", "demoward.loadgen", "--broker", broker.url,
                     "--site", f"site-{k}", "--appliance", "ap", "--appliances", str(n),
                     "--spool", str(work / f"spool-{k}"), "--events", str(args.events),
                     "--batch", "50", "--drain-timeout", "600",
                     "--rate", str(args.rate / args.procs)],
                    cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT))
            for p in loadgens:
                p.wait(timeout=3600)
            wait_for(lambda: _query(db, "SELECT count(*) FROM events")[0][0] >= total,
                     timeout=600, interval=0.5, what="every event stored")
            elapsed_gen = time.time() - start
            row = _query(db, "SELECT count(*), count(DISTINCT (site, appliance, id)), "
                             "min(ts), max(received), "
                             "percentile_cont(0.5) WITHIN GROUP (ORDER BY received - ts), "
                             "percentile_cont(0.99) WITHIN GROUP (ORDER BY received - ts), "
                             "max(received - ts) FROM events")[0]
            count, distinct, first, last, p50, p99, worst = row
            load = os.getloadavg()[0]
            per_collector = dict(_query(db, "SELECT collector, count(*) FROM events "
                                            "GROUP BY collector"))
            rollup = _query(db, "SELECT sum(violations) FROM timeline_minute")[0][0]
            gen_ok = all(p.returncode == 0 for p in loadgens)
            codes = sorted({p.returncode for p in loadgens})
        finally:
            for p in loadgens + collectors:
                if p.poll() is None:
                    p.terminate()
                    p.wait(timeout=30)
            broker.stop(kill=True)
    return {"appliances": args.appliances, "events_expected": total, "events_stored": count,
            "lost": total - distinct, "duplicates_stored": count - distinct,
            "rollup_violations": int(rollup or 0), "loadgens_drained": gen_ok,
            "loadgen_exit_codes": codes,
            "events_per_s": round(total / (last - first), 1),
            "seconds_first_publish_to_last_commit": round(last - first, 2),
            "wall_s": round(elapsed_gen, 2), "lag_ms": {
                "p50": round(p50 * 1000, 1), "p99": round(p99 * 1000, 1),
                "max": round(worst * 1000, 1)}, "per_collector": per_collector,
            "load_average_1min": load}


# -- pages -----------------------------------------------------------------------------------

def fill(url: str, appliances: int, devices: int, events: int, now: float) -> dict[str, float]:
    """The fleet schema filled server-side (generate_series), rollups from the events."""
    import psycopg

    from appliance.fleet.db import connect

    connect(url).close()                                   # the schema, by the migrations
    per_dev = max(1, devices // appliances)
    week = 7 * 86400
    steps = {}
    with psycopg.connect(url, autocommit=True) as conn:
        def run(name: str, sql: str, *params: Any) -> None:
            t = time.monotonic()
            # a literal % is %% for psycopg when parameters are passed
            if params:
                conn.execute(sql.replace("%", "%%").replace("%%s", "%s"), params)
            else:
                conn.execute(sql)                 # several statements, no parameters
            steps[name] = round(time.monotonic() - t, 1)
            print(f"  {name}: {steps[name]} s", file=sys.stderr, flush=True)

        run("appliances", """
            INSERT INTO appliances (site, appliance, status, mode, policy_name, policy_version,
              policy_sha256, version, last_seen, spool_depth, spool_overflow, state)
            SELECT 'site-' || (i % 20), 'ap-' || lpad(i::text, 4, '0'),
              CASE WHEN i % 50 = 0 THEN 'offline' ELSE 'online' END,
              (ARRAY['monitor','enforce','learn'])[1 + i % 3], 'ward-policy', 1 + i % 7,
              md5(i::text), '0.1.0', %s - (i % 120), i % 5, 0, '{}'
            FROM generate_series(0, %s - 1) AS i""", now, appliances)
        run("devices", """
            INSERT INTO devices (site, appliance, mac, vendor, class, confidence, names, ipv4,
              vlan, first_seen, last_seen, violations, search, payload)
            SELECT 'site-' || (a % 20), 'ap-' || lpad(a::text, 4, '0'),
              to_char(a, 'FM0000') || ':' || to_char(d, 'FM0000'),
              (ARRAY['B.Braun','Baxter','Philips','GE Healthcare','Dell'])[1 + d % 5],
              (ARRAY['infusion pump','patient monitor','workstation','imaging modality'])
                [1 + d % 4], 0.9, '["dev-' || a || '-' || d || '"]',
              '10.' || (a % 250) || '.' || (d / 250) || '.' || (d % 250), 100 + d % 4,
              %s - 86400 * 30, %s - d, d % 3,
              lower('dev-' || a || '-' || d || ' 10.' || (a % 250) || '.' || (d / 250) || '.'
                    || (d % 250) || ' ' || (ARRAY['b.braun','baxter','philips','ge','dell'])
                    [1 + d % 5]), '{}'
            FROM generate_series(0, %s - 1) AS a, generate_series(0, %s - 1) AS d""",
            now, now, appliances, per_dev)
        # a bulk load: the events' indexes are built once, after the rows are in
        run("drop event indexes", "ALTER TABLE events DROP CONSTRAINT events_pkey; "
            "DROP INDEX events_appliance_ts; DROP INDEX events_type_ts")
        run("events", """
            INSERT INTO events (site, appliance, id, ts, type, count, reason, rule, src, dst,
              proto, dport, smac, payload, received, collector)
            SELECT 'site-' || (a % 20), 'ap-' || lpad(a::text, 4, '0'), 'e-' || i,
              %s - ((i::bigint * 7919) % %s),
              CASE WHEN i % 4 = 0 THEN 'new_device' ELSE 'violation' END,
              1, (ARRAY['no_rule','port_not_allowed','wrong_initiator'])[1 + i % 3], NULL,
              '10.0.' || (i % 250) || '.1', '10.20.0.40', 6, 443,
              to_char(a, 'FM0000') || ':' || to_char(i % 100, 'FM0000'),
              '{"type":"violation","reason":"no_rule"}', %s, 'bench'
            FROM (SELECT i, i % %s AS a FROM generate_series(0, %s - 1) AS i) s""",
            now, week, now, appliances, events)
        run("event indexes", "ALTER TABLE events ADD PRIMARY KEY (site, appliance, id); "
            "CREATE INDEX events_appliance_ts ON events (site, appliance, ts); "
            "CREATE INDEX events_type_ts ON events (type, ts)")
        for table, size in (("timeline_minute", 60), ("timeline_hour", 3600)):
            run(table, f"""
                INSERT INTO {table} (site, appliance, bucket, events, violations)
                SELECT site, appliance, floor(ts / {size})::bigint, count(*),
                  sum(CASE WHEN type = 'violation' THEN count ELSE 0 END)
                FROM events GROUP BY 1, 2, 3""")
        run("analyze", "ANALYZE")
    return steps


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _timed(client: Any, path: str) -> float:
    t = time.perf_counter()
    r = client.get(path)
    ms = (time.perf_counter() - t) * 1000
    assert r.status_code == 200, (path, r.status_code, r.text[:300])
    return ms


def pages(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    from appliance.fleet import accounts
    from appliance.fleet.db import connect

    now = time.time()
    with _postgres() as pg:
        url = pg.create_database("fleet")
        t = time.monotonic()
        steps = fill(url, args.appliances, args.devices, args.events, now)
        fill_s = round(time.monotonic() - t, 1)
        db = connect(url)
        accounts.add_user(db, "bench", "viewer", "bench-password-123")
        counts = {t: db.scalar(f"SELECT count(*) FROM {t}")
                  for t in ("appliances", "devices", "events", "timeline_minute")}
        size = db.scalar("SELECT pg_size_pretty(pg_database_size(current_database()))")
        db.close()
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "fleet", "serve",
                                 "--db", url, "--listen", f"127.0.0.1:{port}"], cwd=ROOT,
                                env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            def up() -> bool:
                try:
                    httpx.get(base + "/health", timeout=2)
                    return True
                except httpx.HTTPError:
                    return False
            wait_for(up, timeout=30, what="the console")
            client = httpx.Client(base_url=base, timeout=60)
            token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text)
            assert token
            r = client.post("/login", data={"csrf": token.group(1), "username": "bench",
                                            "password": "bench-password-123"},
                            headers={"Origin": base})
            assert r.status_code == 303, r.text
            rng = random.Random(1)
            def appliance_page() -> str:
                a = rng.randrange(args.appliances)
                return f"/appliances/site-{a % 20}/ap-{a:04d}"

            paths = {
                "fleet page": lambda: "/",
                "appliance page": appliance_page,
                "device search": lambda: f"/devices?q=dev-{rng.randrange(args.appliances)}-"
                                         f"{rng.randrange(100)}",
            }
            results: dict[str, Any] = {"load_average_before": os.getloadavg()[0]}
            for name, make in paths.items():
                for _ in range(3):
                    _timed(client, make())                       # warm-up
                times = sorted(_timed(client, make()) for _ in range(args.requests))
                results[name] = {"p50_ms": round(statistics.median(times), 1),
                                 "p95_ms": round(times[int(0.95 * (len(times) - 1))], 1),
                                 "max_ms": round(times[-1], 1), "requests": len(times)}
            rss = _rss_kb(proc.pid)
            results["load_average_after"] = os.getloadavg()[0]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return {"rows": counts, "database_size": size, "fill_s": fill_s, "fill_steps": steps,
            "pages": results, "console_rss_mib": round(rss / 1024, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["ingest", "pages"])
    p.add_argument("--appliances", type=int, default=1000)
    p.add_argument("--events", type=int, help="ingest: per appliance (100); pages: total "
                                                "(10,000,000)")
    p.add_argument("--devices", type=int, default=100_000)
    p.add_argument("--procs", type=int, default=20,
                   help="ingest: load generator processes (appliances split between them)")
    p.add_argument("--rate", type=float, default=5000.0,
                   help="ingest: events/s offered by all appliances together (0: flat out)")
    p.add_argument("--requests", type=int, default=40)
    args = p.parse_args()
    if args.what == "ingest":
        args.events = args.events or 100
        result = ingest(args)
    else:
        args.events = args.events or 10_000_000
        result = pages(args)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
