"""Capture-file source: replays pcap/pcapng files as the daemon's datapath."""

from __future__ import annotations

import select
import threading
from collections.abc import Iterator
from typing import Any

from appliance.sources.base import Source
from appliance.sources.capture import Batch, CaptureFile

IDLE_INTERVAL = 0.1
_EMPTY = memoryview(b"")


class PcapFileSource(Source):
    name = "replay"
    inline = False
    capabilities = ()

    def __init__(self, files: list[str], batch_size: int = 4096, stay: bool = False,
                 **options: Any) -> None:
        """`stay`: after the files, keep running idle until stopped (demos, tests)."""
        super().__init__(**options)
        self.files = files
        self.batch_size = batch_size
        self.stay = stay
        self.packets = 0

    def batches(self, stop: threading.Event) -> Iterator[Batch]:
        for path in self.files:
            with CaptureFile(path, self.batch_size) as capture:
                for batch in capture.batches():
                    if stop.is_set():
                        return
                    self.packets += batch.count
                    yield batch
        while self.stay and not self._idle(stop):
            yield Batch(memoryview(b""), *(_EMPTY,) * 5, count=0, first_index=self.packets)

    def _idle(self, stop: threading.Event) -> bool:
        """Wait IDLE_INTERVAL, or until the daemon's wake-up fd is readable; True: stop."""
        if self.wakeup_fd >= 0:
            select.select([self.wakeup_fd], [], [], IDLE_INTERVAL)
            return stop.is_set()
        return stop.wait(IDLE_INTERVAL)

    def stats(self) -> dict[str, int]:
        return {"packets": self.packets}
