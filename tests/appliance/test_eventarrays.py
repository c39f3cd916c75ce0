"""Events handed over as a structured array, and events nothing consumes only counted.

Two classifiers with the same seed see the same real packets (real daemons and libraries,
tests/data/realward.pcap, and the demo ward under its allow-list). One hands its events
over as tuples (Classifier.drain, event_dict, Store.add_events: the per-event path), the
other as a structured array (EventBuffer, Store.add_event_array): the store must hold the
same rows, and the dicts a person reads must be the same.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from capturekit import classify_all

import fastpath
from appliance.common import eventarrays as ea
from appliance.common.records import event_dict
from appliance.outputs.store import Store
from appliance.policy.model import compile_policy, parse_policy
from demoward.ward import DEMO_POLICY, write_imix

DATA = Path(__file__).resolve().parents[1] / "data"
RULES = parse_policy(DEMO_POLICY)


def classifier(types: list[str] | None = None) -> fastpath.Classifier:
    # 256 flow slots: flows are evicted, so flow-end events come out during the run.
    clf = fastpath.Classifier(flow_capacity=256, device_capacity=256, event_capacity=1 << 17,
                              seed=5)
    clf.set_policy(compile_policy(RULES))
    clf.set_mode("monitor")
    clf.set_events(types)
    return clf


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    imix = tmp_path_factory.mktemp("ward") / "imix.pcap"
    write_imix(imix, 20_000, flows=600, seed=4)
    return [DATA / "realward.pcap", imix]


def rows(store: Store, table: str, run: int) -> list[tuple]:
    cur = store.db.conn.execute(f"SELECT * FROM {table} WHERE run = ? ORDER BY id", [run])
    names = [d[0] for d in cur.description]
    return [tuple(v for k, v in zip(names, row, strict=True) if k not in ("id", "run"))
            for row in cur.fetchall()]


def test_store_rows_from_an_array_equal_rows_from_dicts(tmp_path: Path,
                                                        captures: list[Path]) -> None:
    rule_name = RULES.rule_name
    per_event, columns = classifier(), classifier()
    classify_all(per_event, captures)
    classify_all(columns, captures)
    buffer = ea.EventBuffer(1 << 17)
    array = buffer.drain(columns)
    tuples = per_event.drain(1 << 17)
    assert len(array) == len(tuples) > 1000
    dicts = [event_dict(t, rule_name) for t in tuples]
    assert ea.as_dicts(array, rule_name) == dicts
    with Store(str(tmp_path / "wardtap.db")) as store:
        run_dicts = store.start_run("replay", ["a"], "monitor", RULES)
        run_array = store.start_run("replay", ["a"], "monitor", RULES)
        store.add_events(run_dicts, dicts)
        written = store.add_event_array(run_array, array, rule_name)
        for table in ("flows", "violations"):
            assert rows(store, table, run_array) == rows(store, table, run_dicts), table
        kinds = {d["type"] for d in dicts}
        assert {"flow_end", "violation"} <= kinds
        assert written == sum(d["type"] in ("flow_end", "violation") for d in dicts)


def test_events_nothing_consumes_are_counted_not_queued(captures: list[Path]) -> None:
    everything, violations_only = classifier(), classifier(["violation"])
    classify_all(everything, captures)
    classify_all(violations_only, captures)
    all_events = [event_dict(t) for t in everything.drain(1 << 17)]
    queued = [event_dict(t) for t in violations_only.drain(1 << 17)]
    assert queued == [e for e in all_events if e["type"] == "violation"]
    full, lean = everything.stats(), violations_only.stats()
    assert lean.pop("events_counted_only") == len(all_events) - len(queued)
    full.pop("events_counted_only")
    assert lean == full                 # flows, devices, malformed: all still counted


def test_unknown_event_type_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown event type 'flows'"):
        fastpath.Classifier().set_events(["flows"])
