"""`wardtap demo`: the demo ward (the `demoward` package, in the source tree only)."""

from __future__ import annotations

import argparse
import os

from appliance.cli import args as checked
from appliance.errors import WardtapError

MIN_PACKETS, MAX_PACKETS = 1000, 5_000_000    # demoward.ward.MIN_PACKETS; a few GB at most


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default=os.environ.get("WARDTAP_DEMO_DIR", "demo-ward"),
                   type=checked.output_dir,
                   help="where to write the demo capture, policy and store (default ./demo-ward)")
    p.add_argument("--packets", type=checked.count(MIN_PACKETS, MAX_PACKETS, "the demo ward"),
                   default=20000, help=f"packets in the demo capture ({MIN_PACKETS:,} to "
                   f"{MAX_PACKETS:,}; default 20,000)")
    p.add_argument("--json", action="store_true", help="the summary and inventory as JSON")
    p.add_argument("--wide", action="store_true", help="tables at full width")
    p.add_argument("--serve", action="store_true",
                   help="keep the fleet console running on loopback after the demo")
    p.add_argument("--port", type=checked.count(0, 65535, "port"), default=0,
                   help="the console's port with --serve (default: a free one)")



def run(args: argparse.Namespace) -> int:
    try:
        from demoward.run import run_demo
    except ImportError:
        raise WardtapError("the demo ward is not installed here: it comes with the source "
                           "tree (scripts/setup.sh), not with the appliance image") from None
    checked.make_dir(args.dir)
    return run_demo(args.dir, args.packets, args.json, wide=args.wide, serve=args.serve,
                    port=args.port)
