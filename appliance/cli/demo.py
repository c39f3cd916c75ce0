"""`wardtap demo`: the demo ward (the `demoward` package, in the source tree only)."""

from __future__ import annotations

import argparse
import os

from appliance.errors import WardtapError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default=os.environ.get("WARDTAP_DEMO_DIR", "demo-ward"),
                   help="where to write the demo capture, policy and store (default ./demo-ward)")
    p.add_argument("--packets", type=int, default=20000)
    p.add_argument("--json", action="store_true")
    p.add_argument("--serve", action="store_true",
                   help="keep the fleet console running on loopback after the demo")
    p.add_argument("--port", type=int, default=0,
                   help="the console's port with --serve (default: a free one)")



def run(args: argparse.Namespace) -> int:
    try:
        from demoward.run import run_demo
    except ImportError:
        raise WardtapError("the demo ward is not installed here: it comes with the source "
                           "tree (scripts/setup.sh), not with the appliance image") from None
    return run_demo(args.dir, args.packets, args.json, args.serve, args.port)
