"""Options shared by every `wardtap fleet` command: the broker connection, the signing key.

Connection options come from flags or the environment (WARDTAP_BROKER, WARDTAP_CA,
WARDTAP_TLS_CERT, WARDTAP_TLS_KEY, WARDTAP_MQTT_USERNAME, WARDTAP_MQTT_PASSWORD); the
signing key from --key or WARDTAP_FLEET_KEY (default ~/.config/wardtap/fleet.key).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from appliance.cli import args as checked
from appliance.errors import WardtapError

DEFAULT_KEY = os.path.join(os.path.expanduser("~"), ".config", "wardtap", "fleet.key")


# -- options -------------------------------------------------------------------------------

def add_connection(p: argparse.ArgumentParser) -> None:
    env = os.environ.get
    g = p.add_argument_group("broker connection")
    g.add_argument("--broker", default=env("WARDTAP_BROKER"), type=checked.broker_url,
                   help="mqtt://HOST:PORT or mqtts://HOST:PORT (env WARDTAP_BROKER)")
    g.add_argument("--ca", default=env("WARDTAP_CA"), type=checked.input_file,
                   help="CA certificate (PEM)")
    g.add_argument("--tls-cert", default=env("WARDTAP_TLS_CERT"), type=checked.input_file,
                   help="client certificate (PEM)")
    g.add_argument("--tls-key", default=env("WARDTAP_TLS_KEY"), type=checked.input_file,
                   help="client private key")
    g.add_argument("--username", default=env("WARDTAP_MQTT_USERNAME"))
    g.add_argument("--password-file", type=checked.input_file,
                   help="file with the MQTT password (or env WARDTAP_MQTT_PASSWORD)")
    g.add_argument("--connect-timeout", type=checked.seconds(0, 300), default=10.0,
                   help="seconds to wait for the broker to accept the connection (default "
                        "10; --timeout also bounds it)")


def broker_settings(args: argparse.Namespace) -> Any:
    from appliance.contract.broker import BrokerSettings

    if not args.broker:
        raise WardtapError("no broker: give --broker mqtts://HOST:PORT or set WARDTAP_BROKER")
    settings = BrokerSettings.from_options(args.broker, ca=args.ca, cert=args.tls_cert,
                                           key=args.tls_key, username=args.username,
                                           password_file=args.password_file)
    timeout = getattr(args, "timeout", None)
    settings.connect_timeout = min(args.connect_timeout, timeout or args.connect_timeout)
    return settings


def add_key(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", default=os.environ.get("WARDTAP_FLEET_KEY", DEFAULT_KEY),
                   help="fleet signing key (Ed25519, from `wardtap fleet keygen`)")
