"""`wardtap replay`: classify capture files and summarise (appliance.replay.job)."""

from __future__ import annotations

import argparse

from appliance.cli import args as checked
from appliance.replay.job import ReplayJob, run_job


def add_arguments(p: argparse.ArgumentParser) -> None:
    # a missing or damaged capture is one error line after the others are classified
    p.add_argument("captures", nargs="+", metavar="CAPTURE", help="pcap or pcapng files")
    p.add_argument("--policy", help="allow-list policy (TOML); without it nothing is enforced")
    p.add_argument("--mode", choices=["learn", "monitor", "enforce"],
                   help="default: monitor with a policy, learn without")
    p.add_argument("--db", type=checked.output_file,
                   help="SQLite store for devices, flows and violations")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--wide", action="store_true", help="tables at full width")
    p.add_argument("--packets-out", metavar="FILE", type=checked.output_file,
                   help="write one JSON line per packet (verdict, addresses, ports)")
    p.add_argument("--flows", type=checked.flows, default=65536,
                   help="flow table slots (128 B each)")
    p.add_argument("--devices", type=checked.devices, default=4096, help="device table slots")
    p.add_argument("--dissect", action="store_true",
                   help="identify devices: dissect sampled packets with tshark and build the "
                        "inventory (stored with --db; docs/inventory.md)")
    p.add_argument("--tshark", default="tshark", help="tshark to use with --dissect")
    s = p.add_argument_group("export events to the SIEM (docs/siem.md)")
    s.add_argument("--syslog", metavar="URL", type=checked.syslog_url,
                   help="udp://HOST:514, tcp://HOST:601 or tls://HOST:6514")
    s.add_argument("--syslog-format", choices=["rfc5424", "cef"], default="rfc5424")
    s.add_argument("--syslog-ca", type=checked.input_file, help="the receiver's CA (tls://)")
    s.add_argument("--eve", metavar="FILE", type=checked.output_file,
                   help="append events as Suricata-EVE-like JSON lines")
    g = p.add_argument_group("report to a fleet broker over MQTT (docs/mqtt.md)")
    g.add_argument("--broker", type=checked.broker_url,
                   help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    g.add_argument("--site", type=checked.ident("site"), help="site id for the topics")
    g.add_argument("--appliance", type=checked.ident("appliance"),
                   help="appliance id for the topics")
    g.add_argument("--ca", type=checked.input_file, help="CA certificate (PEM)")
    g.add_argument("--tls-cert", type=checked.input_file, help="client certificate (PEM)")
    g.add_argument("--tls-key", type=checked.input_file, help="client private key (PEM)")
    g.add_argument("--username")
    g.add_argument("--password-file", type=checked.input_file,
                   help="MQTT password file (or WARDTAP_MQTT_PASSWORD)")
    g.add_argument("--drain-timeout", type=checked.seconds(0, 86400, zero=True), default=30.0,
                   help="seconds to wait for the broker to acknowledge everything")



def run(args: argparse.Namespace) -> int:
    options = {k: v for k, v in vars(args).items() if k in ReplayJob.__dataclass_fields__}
    return run_job(ReplayJob(**options))
