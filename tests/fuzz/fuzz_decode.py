"""atheris (libFuzzer) target: link type + frame bytes through Classifier.classify.

Input: byte 0 picks the link type (an unsupported one too), the rest is the frame. Each
frame is placed so that it ends exactly at a PROT_NONE guard page: any read past its end
is a SIGSEGV, which is libFuzzer's crash signal. One classifier with tiny tables (and a
policy, in enforce mode) lives across inputs, so flows are created, evicted and expired.
Verdicts are checked against decode_batch; a wrong verdict raises, which is a crash too.

    python tests/fuzz/fuzz_decode.py CORPUS_DIR -runs=20000
"""

from __future__ import annotations

import ctypes
import mmap
import sys
from pathlib import Path

import atheris
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import fastpath  # noqa: E402

# Byte 0 of an input picks one (tests/fastpath/test_fuzz.py writes seeds with these indexes):
# every link type the decoder knows, then Ethernet twice more (weighted) and an unsupported one.
LINKTYPES = (*fastpath.LINKTYPES, 1, 1, 147)
PAGE = mmap.PAGESIZE
MAX_FRAME = PAGE


def _guarded_page() -> tuple[mmap.mmap, np.ndarray]:
    mem = mmap.mmap(-1, 2 * PAGE)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    if libc.mprotect(addr + PAGE, PAGE, 0) != 0:  # PROT_NONE
        raise OSError(ctypes.get_errno(), "mprotect")
    return mem, np.frombuffer(mem, np.uint8, count=PAGE)


_MEM, PAGE_VIEW = _guarded_page()


def _policy() -> fastpath.CompiledPolicy:
    v4 = bytes(10) + b"\xff\xff"
    selectors = [
        (2, 1, bytes.fromhex("001a2b").ljust(16, b"\0"), 0),          # OUI -> group 1
        (3, 1, v4 + bytes([10, 4, 0, 0]), 96 + 16),                  # 10.4/16 -> group 1
        (3, 2, v4 + bytes([10, 20, 0, 15]), 128),                    # host -> group 2
        (3, 2, bytes.fromhex("fd00") + bytes(14), 16),               # fd00::/16 -> group 2
        (4, 3, (104).to_bytes(2, "big").ljust(16, b"\0"), 0),        # VLAN 104 -> group 3
    ]
    rules = [
        (1 << 1, 1 << 2, 6, 443, 443, 0, 0),
        (1 << 1, 1 << 2, 17, 1000, 2000, 1, 1),
        (1, 1, 1, 8, 8, 0, 2),
        (1 << 3, 1, 0, 0, 65535, 0, 3),
    ]
    return fastpath.CompiledPolicy(selectors, rules, 1 << 3, 1 << 3, arp=True, non_ip=False,
                                   fragment_unmatched=False)


CLASSIFIER = fastpath.Classifier(16, 16, 64, seed=12345, timeouts=(5, 2, 1, 1, 1))
CLASSIFIER.set_policy(_policy())
CLASSIFIER.set_mode("enforce")
EVENTS = np.empty(64, fastpath.EVENT_DTYPE)
NOW = [0]

VERDICTS = {1, 2, 3}
MALFORMED = fastpath.MALFORMED_FIRST


def _make_feedback():
    """An instrumented function with one branch per outcome: the C extension has no
    coverage instrumentation, so this is what tells libFuzzer an input reached a new
    decode result (reason, layer, protocol, fragment, tunnel, verdict)."""
    blocks = {"r": sorted(fastpath.REASON_NAMES), "l3": [0, 1, 4, 6],
              "proto": [0, 1, 4, 6, 17, 41, 47, 58, 59, 132, 136], "frag": [0, 1, 2],
              "tunnel": [0, 1], "v": [1, 2, 3], "tags": [0, 1, 2]}
    src = ["def feedback(r, l3, proto, frag, tunnel, v, tags):", "    n = 0"]
    for name, values in blocks.items():
        for value in values:
            src.append(f"    if {name} == {value}:")
            src.append(f"        n += {value + 1}")
    src.append("    return n")
    scope: dict = {}
    exec("\n".join(src), scope)  # noqa: S102  (generated branches, no input in the text)
    return atheris.instrument_func(scope["feedback"])


FEEDBACK = _make_feedback()


def TestOneInput(data: bytes) -> None:  # noqa: N802  (libFuzzer's name)
    if not data:
        return
    linktype = LINKTYPES[data[0] % len(LINKTYPES)]
    frame = data[1:MAX_FRAME + 1]
    n = len(frame)
    start = PAGE - n
    PAGE_VIEW[start:] = np.frombuffer(frame, np.uint8)
    buf = PAGE_VIEW[start:]
    # the frame, a prefix of it, and the frame again (a second packet of its flow)
    offsets = np.array([0, 0, 0], np.int64)
    lengths = np.array([n, n // 2, n], np.uint32)
    links = np.full(3, linktype, np.uint16)
    NOW[0] += 1 + data[0] * 10_000_000
    stamps = np.array([NOW[0], NOW[0] + 1, NOW[0] + 2], np.uint64)
    decoded = np.zeros(3, fastpath.DECODED_DTYPE)
    dreasons = np.zeros(3, np.uint8)
    fastpath.decode_batch(buf, offsets, lengths, links, decoded.view(np.uint8), dreasons)
    verdicts = np.zeros(3, np.uint8)
    reasons = np.zeros(3, np.uint8)
    rules = np.zeros(3, np.uint16)
    CLASSIFIER.classify(buf, offsets, lengths, stamps, links, verdicts, reasons, rules)
    for i in range(3):
        v, r, d = int(verdicts[i]), int(reasons[i]), int(dreasons[i])
        if v not in VERDICTS or r not in fastpath.REASON_NAMES:
            raise AssertionError(f"packet {i}: verdict {v}, reason {r}")
        if (v == 3) != (r >= MALFORMED) or (v == 3 and r != d) or (d == 0) == (v == 3):
            raise AssertionError(f"packet {i}: verdict {v} reason {r}, decode reason {d}")
        if d and d < MALFORMED:
            raise AssertionError(f"packet {i}: decode reason {d} is not a malformed reason")
        if v == 3 and int(rules[i]) != fastpath.NO_RULE_INDEX:
            raise AssertionError(f"packet {i}: malformed with rule {rules[i]}")
        rec = decoded[i]
        FEEDBACK(d, int(rec["l3"]), int(rec["proto"]), int(rec["frag"]), int(rec["tunnel"]), v,
                 (rec["vlan"] != 0) + (rec["vlan_outer"] != 0))
    if CLASSIFIER.pending_events > 32:
        got = CLASSIFIER.drain_events(EVENTS.view(np.uint8))
        for t in EVENTS["type"][:got]:
            if int(t) not in fastpath.EVENT_NAMES:
                raise AssertionError(f"event type {t}")


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
