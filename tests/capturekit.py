"""Real captures through a classifier, batch by batch, as the replay source hands them over:
the loop the fast-path and event tests share."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import fastpath
from appliance.sources.capture import CaptureFile


@dataclass
class Classified:
    """One batch just classified: its packet count and per-packet results (views, valid
    until the next batch)."""

    count: int
    verdicts: np.ndarray
    reasons: np.ndarray
    rules: np.ndarray
    samples: np.ndarray | None


def classify_captures(clf: fastpath.Classifier, paths: Iterable[Path], batch: int = 4096,
                      sampling: bool = False) -> Iterator[Classified]:
    """Classify every packet of `paths` in batches of `batch`, yielding after each batch
    (drain or read the classifier there). A capture that cannot be read raises
    appliance.errors.CaptureError from the batch where it breaks."""
    verdicts = np.zeros(batch, np.uint8)
    reasons = np.zeros(batch, np.uint8)
    rules = np.zeros(batch, np.uint16)
    samples = np.zeros(batch, np.uint8) if sampling else None
    for path in paths:
        with CaptureFile(str(path), batch) as cap:
            for b in cap.batches():
                n = b.count
                clf.classify(b.buf, b.offsets[:n], b.lengths[:n], b.timestamps[:n],
                             b.linktypes[:n], verdicts, reasons, rules, samples)
                yield Classified(n, verdicts[:n], reasons[:n], rules[:n],
                                 None if samples is None else samples[:n])


def classify_all(clf: fastpath.Classifier, paths: Iterable[Path], batch: int = 4096) -> None:
    """Classify every packet of `paths`; nothing read between batches."""
    for _ in classify_captures(clf, paths, batch):
        pass
