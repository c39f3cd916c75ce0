"""Regenerate tests/data/realward.pcap: the ward of real implementations (tests/realward.py)
run in network namespaces, captured on its mirror port.

    .venv/bin/python bench/realward.py [OUT]     # default tests/data/realward.pcap (root)
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from realward import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or [str(ROOT / "tests" / "data" / "realward.pcap")]))
