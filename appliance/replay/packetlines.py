"""`--packets-out`: one JSON line per packet, with the capture time, at replay speed.

A line holds the packet's number and capture time (`i`; `ts`, seconds since 1970 from the
capture, to the microsecond), its verdict, reason and rule, and what was decoded (`vlan`,
`src`, `dst`, `proto`, `sport`/`dport` or `icmp_type`/`icmp_code`, and when present
`vlan_outer`, `smac`, `frag_offset` and `more_fragments`, `tunnel`):

    {"i":0,"ts":1732788000.300000,"verdict":"allow","reason":"rule","rule":"ward-dns",...}

The lines are formatted by the fast path (fastpath/lines.pxi) a batch at a time, without
the GIL, in a worker thread while the next batch is classified: a Python loop over every
packet made a replay 20 to 40 times slower. bench/bench_packets_out.py measures a replay
with and without it side by side.
"""

from __future__ import annotations

import io
import json
from array import array
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any

from fastpath import NO_RULE_INDEX, PACKET_LINE_MAX, REASON_NAMES, VERDICT_NAMES, packet_lines


class PacketLines:
    """Writes the lines of each classified batch to `out` (a binary or text file), one
    batch behind: the batch's arrays are copied, formatted and written by a worker while the
    caller classifies the next. close() waits for the last one (and is safe twice)."""

    def __init__(self, out: IO[Any], rule_name: Callable[[int], str | None]) -> None:
        self.out = out
        self.text = isinstance(out, io.TextIOBase)
        self.rule_name = rule_name
        self._rules = -1
        self._names = b""
        self._offsets = array("i")
        self._spare = _Buffers()           # filled by the caller while the worker formats
        self._busy = _Buffers()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="wardtap-packet-lines")
        self._pending: Future[None] | None = None

    def _table(self) -> None:
        """The JSON names the fast path copies: 256 verdicts, 256 reasons, the rules and
        "null" (no rule). Rebuilt when the policy's rule count changes (a reload)."""
        rules = []
        index = 0
        while index < NO_RULE_INDEX and self.rule_name(index) is not None:
            rules.append(self.rule_name(index))
            index += 1
        if len(rules) == self._rules:
            return
        parts = [json.dumps(VERDICT_NAMES[v] if v < len(VERDICT_NAMES) else "unknown")
                 for v in range(256)]
        parts += [json.dumps(REASON_NAMES.get(r, "unknown")) for r in range(256)]
        parts += [json.dumps(r) for r in rules] + ["null"]
        offsets, at = array("i", [0]), 0
        for part in parts:
            at += len(part.encode())
            offsets.append(at)
        self._names = "".join(parts).encode()
        self._offsets = offsets
        self._rules = len(rules)

    def write(self, batch: Any, verdicts: Any, reasons: Any, rules: Any) -> None:
        n = batch.count
        if n == 0:
            return
        self._wait()                        # the worker is done with its buffers
        self._table()
        job = self._spare
        job.fill(batch, verdicts, reasons, rules)
        self._spare, self._busy = self._busy, job
        self._pending = self._worker.submit(self._format, job, batch.buf, self._names,
                                            self._offsets, self._rules)

    def _format(self, job: _Buffers, buf: Any, names: bytes, offsets: array[int],
                n_rules: int) -> None:
        size = packet_lines(buf, job.offsets[:job.n], job.lengths[:job.n],
                            job.linktypes[:job.n], job.timestamps[:job.n],
                            job.verdicts[:job.n], job.reasons[:job.n], job.rules[:job.n],
                            job.first, names, offsets, n_rules, job.out)
        data = memoryview(job.out)[:size]
        if self.text:
            self.out.write(data.tobytes().decode())
        else:
            self.out.write(data)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()                # an error in the worker surfaces here

    def close(self) -> None:
        try:
            self._wait()
        finally:
            self._worker.shutdown(wait=True)


class _Buffers:
    """One batch's arrays, copied: the capture reuses its own for the next batch."""

    def __init__(self) -> None:
        self.n = 0
        self.first = 0
        self.size = 0

    def fill(self, batch: Any, verdicts: Any, reasons: Any, rules: Any) -> None:
        n = batch.count
        if n > self.size:
            self.size = n
            self.offsets = memoryview(array("q", bytes(8 * n)))
            self.lengths = memoryview(array("I", bytes(4 * n)))
            self.linktypes = memoryview(array("H", bytes(2 * n)))
            self.timestamps = memoryview(array("Q", bytes(8 * n)))
            self.verdicts = memoryview(bytearray(n))
            self.reasons = memoryview(bytearray(n))
            self.rules = memoryview(array("H", bytes(2 * n)))
            self.out = bytearray(n * PACKET_LINE_MAX)
        self.n, self.first = n, batch.first_index
        self.offsets[:n] = batch.offsets[:n]
        self.lengths[:n] = batch.lengths[:n]
        self.linktypes[:n] = batch.linktypes[:n]
        self.timestamps[:n] = batch.timestamps[:n]
        self.verdicts[:n] = verdicts[:n]
        self.reasons[:n] = reasons[:n]
        self.rules[:n] = rules[:n]
