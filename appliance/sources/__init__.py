"""Packet sources behind one interface (appliance.sources.base.Source).

Adding a source is one module plus one entry here. Modules are imported only when their
source is used, so system bindings (NFQUEUE) are needed only where they run. Also here: the
capture file reader (capture), the inline datapath's netfilter rules (netfilter) and its
out-of-process watchdog and maintenance commands (inlinectl).

Imports: appliance.common, fastpath.
"""

from __future__ import annotations

import importlib
from typing import Any

from appliance.sources.base import Source, SourceError

# datapath name -> "module:class"
SOURCES = {
    "replay": "appliance.sources.pcapfile:PcapFileSource",
    "tap": "appliance.sources.afpacket:AfPacketSource",
    "inline": "appliance.sources.nfqueue:NfqueueSource",
}


def make_source(kind: str, **options: Any) -> Source:
    """The source named `kind`, configured but not yet opened."""
    if kind not in SOURCES:
        raise SourceError(f"unknown datapath {kind!r} (one of: {', '.join(SOURCES)})")
    module, _, cls = SOURCES[kind].partition(":")
    source_class = getattr(importlib.import_module(module), cls)
    return source_class(**options)  # type: ignore[no-any-return]


__all__ = ["SOURCES", "Source", "SourceError", "make_source"]
