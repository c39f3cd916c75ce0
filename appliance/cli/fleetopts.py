"""Options shared by every `wardtap fleet` command: the broker connection, the signing key.

Connection options come from flags or the environment (WARDTAP_BROKER, WARDTAP_CA,
WARDTAP_TLS_CERT, WARDTAP_TLS_KEY, WARDTAP_MQTT_USERNAME, WARDTAP_MQTT_PASSWORD); the
signing key from --key or WARDTAP_FLEET_KEY (default ~/.config/wardtap/fleet.key).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from appliance.errors import WardtapError

DEFAULT_KEY = os.path.join(os.path.expanduser("~"), ".config", "wardtap", "fleet.key")


# -- options -------------------------------------------------------------------------------

def add_connection(p: argparse.ArgumentParser) -> None:
    env = os.environ.get
    g = p.add_argument_group("broker connection")
    g.add_argument("--broker", default=env("WARDTAP_BROKER"),
                   help="mqtt://HOST:PORT or mqtts://HOST:PORT (env WARDTAP_BROKER)")
    g.add_argument("--ca", default=env("WARDTAP_CA"), help="CA certificate (PEM)")
    g.add_argument("--tls-cert", default=env("WARDTAP_TLS_CERT"),
                   help="client certificate (PEM)")
    g.add_argument("--tls-key", default=env("WARDTAP_TLS_KEY"), help="client private key")
    g.add_argument("--username", default=env("WARDTAP_MQTT_USERNAME"))
    g.add_argument("--password-file",
                   help="file with the MQTT password (or env WARDTAP_MQTT_PASSWORD)")


def broker_settings(args: argparse.Namespace) -> Any:
    from appliance.contract.broker import BrokerSettings

    if not args.broker:
        raise WardtapError("no broker: give --broker mqtts://HOST:PORT or set WARDTAP_BROKER")
    return BrokerSettings.from_options(args.broker, ca=args.ca, cert=args.tls_cert,
                                       key=args.tls_key, username=args.username,
                                       password_file=args.password_file)


def add_key(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", default=os.environ.get("WARDTAP_FLEET_KEY", DEFAULT_KEY),
                   help="fleet signing key (Ed25519, from `wardtap fleet keygen`)")
