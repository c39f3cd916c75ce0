"""Device identification inside a datapath loop (appliance.replay, appliance.daemon).

`Identification` ties the samples array for classify(), the Dissector, the Inventory and the
store together; `class_members` resolves a policy's inventory selectors (`class`, `role`,
`maker`) from the store.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from appliance.inventory.classes import ClassRules
from appliance.inventory.devices import Inventory
from appliance.inventory.persist import load_advisories, load_inventory, save_inventory

if TYPE_CHECKING:
    from appliance.inventory.dissector import DissectConfig, Dissector
    from appliance.outputs.store import Store


def class_members(db_path: str) -> Callable[[str, str], list[str]]:
    """For policy loading: (selector, value) -> MACs of the stored inventory's devices that
    `class = [...]` (their class), `role = [...]` (a server role among their roles, or their
    class) or `maker = [...]` (their make or MAC vendor, case-insensitive) select: their
    MACs and the addresses the inventory saw them use.

    Resolved when called (policy load or reload); a store without an inventory yet gives
    every selector no members.
    """
    import json
    import os
    import sqlite3

    def members(kind: str, value: str) -> list[str]:
        if not os.path.exists(db_path):
            return []
        try:
            conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
            try:
                rows = conn.execute("SELECT mac, class, roles, make, vendor FROM inventory "
                                    "ORDER BY mac").fetchall()
            finally:
                conn.close()
        except sqlite3.Error:
            return []
        macs = [mac for mac, cls, roles, make, vendor in rows
                if _selects(kind, value, cls, roles, make, vendor, json.loads)]
        if not macs:
            return macs
        # a device is also reached by address: inline, a conversation's first packet shows
        # only its sender's MAC, so a client's first packet names a server (selected by
        # role, class or maker) by address
        try:
            conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
            try:
                marks = ",".join("?" * len(macs))
                ips = conn.execute(f"SELECT DISTINCT ip FROM inventory_ips WHERE mac IN ({marks}) "
                                   "ORDER BY ip", macs).fetchall()
            finally:
                conn.close()
        except sqlite3.Error:
            ips = []
        return macs + [r[0] for r in ips]

    return members


def _selects(kind: str, value: str, cls: str | None, roles: str | None, make: str | None,
             vendor: str | None, parse: Callable[[str], Any]) -> bool:
    if kind == "class":
        return cls == value
    if kind == "role":
        try:
            listed = parse(roles or "[]")
        except ValueError:
            listed = []
        return cls == value or (isinstance(listed, list) and value in listed)
    if kind == "maker":
        want = value.casefold()
        return any(v is not None and v.casefold() == want for v in (make, vendor))
    return False


class Identification:
    """Samples array + Dissector + Inventory (+ store) for one classifier's loop.

        ident = Identification(DissectConfig(), store).start(classifier, batch_size)
        classifier.classify(..., ident.samples_view)
        ident.offer(batch, n)             # copies the marked packets out, never waits
        ident.on_events(events)           # every drained batch of fast-path events
        events = ident.poll()             # between batches: merge dissection results
        ident.snapshot(devices)           # periodically: counters, classes, store
        ident.finish(devices, timeout)    # end of a replay: wait for the worker, save
        ident.close()
    """

    def __init__(self, config: DissectConfig | None = None, store: Store | None = None,
                 rules: ClassRules | None = None, classify_interval: float = 1.0) -> None:
        from appliance.inventory.dissector import DissectConfig, Dissector

        self.config = config or DissectConfig()
        self.store = store
        self.inventory = Inventory(rules)
        if store is not None:
            load_inventory(self.inventory, store)
            load_advisories(self.inventory, store)
        self.dissector: Dissector = Dissector(self.config)
        self.samples = bytearray(0)
        self.samples_view = memoryview(self.samples)
        self.classify_interval = classify_interval
        self._next_classify = 0.0
        self.events: list[dict[str, Any]] = []     # every inventory event, for summaries
        # also given every evidence record (learn: what first payloads said per conversation)
        self.on_records: Callable[[list[dict[str, Any]]], None] | None = None

    def start(self, classifier: Any, batch_size: int) -> Identification:
        classifier.set_sampling(**self.config.sampling)
        self.samples = bytearray(batch_size)
        self.samples_view = memoryview(self.samples)
        self.dissector.start()
        return self

    def offer(self, batch: Any, n: int) -> None:
        self.dissector.offer(batch, self.samples, n)

    def on_events(self, events: Iterable[dict[str, Any]]) -> None:
        self.inventory.observe_events(events)

    def poll(self, force: bool = False) -> list[dict[str, Any]]:
        """Merge finished dissections; classify at most once per classify_interval."""
        self.dissector.tick()
        records = self.dissector.drain_results()
        if records:
            self.inventory.observe_records(records)
            if self.on_records is not None:
                self.on_records(records)
        now = time.monotonic()
        if not force and now < self._next_classify:
            return []
        self._next_classify = now + self.classify_interval
        events = self.inventory.classify()
        self.events += events
        return events

    def snapshot(self, devices: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        self.inventory.observe_devices(devices)
        if self.store is not None:
            load_advisories(self.inventory, self.store)    # imported while running?
        events = self.poll(force=True)
        if self.store is not None:
            save_inventory(self.inventory, self.store, events)
        return events

    def finish(self, devices: Sequence[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
        """Wait (bounded) for the worker to dissect what is queued, then merge and save."""
        self.dissector.flush(timeout)
        return self.snapshot(devices)

    def stats(self) -> dict[str, Any]:
        out = self.dissector.stats()
        out["inventory"] = dict(self.inventory.stats, devices=len(self.inventory.devices))
        return out

    def close(self) -> None:
        self.dissector.close()
