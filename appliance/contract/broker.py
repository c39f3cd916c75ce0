"""The MQTT contract (docs/mqtt.md): topics, broker URLs, credentials, paho clients.

Everything lives under one versioned root, per site and appliance:

    wardtap/v1/{site}/{appliance}/state       retained birth / last will
    wardtap/v1/{site}/{appliance}/events      QoS 1, batches of events with unique ids
    wardtap/v1/{site}/{appliance}/inventory   retained device list
    wardtap/v1/{site}/{appliance}/stats       retained, periodic counters
    wardtap/v1/{site}/{appliance}/cmd         requests (MQTT 5 response topic + correlation)
    wardtap/v1/{site}/{appliance}/response/#  responses (inside the appliance's own tree)

Used by both the appliance (outputs/mqtt.py) and the fleet side (client, collector).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import WardtapError

ROOT = "wardtap/v1"
PAYLOAD_VERSION = 1
LEAVES = ("state", "events", "inventory", "stats", "cmd", "response")
PASSWORD_ENV = "WARDTAP_MQTT_PASSWORD"
RESERVED_IDS = frozenset({"fleet", "collector"})
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class _QuietShutdown(logging.Filter):
    """paho logs an error when its loop runs once more after our own disconnect()."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected.")


_PAHO_LOG = logging.getLogger("wardtap.paho")
_PAHO_LOG.addFilter(_QuietShutdown())


class ContractError(WardtapError):
    """A broker URL, identity or credential that cannot be used."""


def check_id(value: str, what: str) -> str:
    """Site and appliance ids: letters, digits, '.', '_', '-' (no MQTT wildcards or '/')."""
    if not isinstance(value, str) or not _ID.match(value):
        raise ContractError(f"{what} {value!r}: use 1-64 letters, digits, '.', '_' or '-' "
                            "(no spaces, '/', '+' or '#')")
    if value in RESERVED_IDS:
        raise ContractError(f"{what} {value!r} is reserved for fleet identities")
    return value


def topic(site: str, appliance: str, leaf: str) -> str:
    return f"{ROOT}/{site}/{appliance}/{leaf}"


def split_topic(name: str) -> tuple[str, str, str] | None:
    """(site, appliance, leaf) of a topic under the root; leaf keeps any sub-levels."""
    parts = name.split("/", 4)
    if len(parts) < 5 or f"{parts[0]}/{parts[1]}" != ROOT:
        return None
    return parts[2], parts[3], parts[4]


def parse_target(text: str) -> tuple[str, str | None]:
    """`SITE` or `SITE/APPLIANCE` (command line)."""
    site, _, appliance = text.partition("/")
    check_id(site, "site")
    if appliance:
        check_id(appliance, "appliance")
    return site, appliance or None


@dataclass
class BrokerSettings:
    """Where the broker is and how to authenticate; the password never comes from a URL."""

    url: str
    host: str
    port: int
    tls: bool
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    keepalive: int = 30
    reconnect_min: float = 1.0
    reconnect_max: float = 30.0
    connect_timeout: float = 10.0     # command-line tools: how long to wait for the broker

    @classmethod
    def from_options(cls, url: str, *, ca: str | None = None, cert: str | None = None,
                     key: str | None = None, username: str | None = None,
                     password_file: str | None = None, keepalive: int = 30,
                     reconnect_max: float = 30.0) -> BrokerSettings:
        tls, host, port, url_user = parse_url(url)
        if (cert is None) != (key is None):
            raise ContractError("a client certificate needs both cert and key")
        if (cert or ca) and not tls:
            raise ContractError(f"{url}: certificates need an mqtts:// URL")
        for path in (ca, cert, key, password_file):
            if path is not None and not os.path.isfile(path):
                raise ContractError(f"{path}: no such file")
        password = None
        if password_file:
            try:
                with open(password_file, encoding="utf-8") as fh:
                    password = fh.readline().rstrip("\r\n")
            except OSError as exc:
                raise ContractError(f"{password_file}: cannot read: {exc.strerror}") from None
            except UnicodeDecodeError:
                raise ContractError(f"{password_file}: not a text file (the password goes "
                                    "on its first line)") from None
        elif os.environ.get(PASSWORD_ENV):
            password = os.environ[PASSWORD_ENV]
        user = username or url_user
        if password is not None and user is None:
            raise ContractError("a password needs a username (username = \"...\" or "
                                "mqtt://USER@host)")
        return cls(url=url, host=host, port=port, tls=tls, ca=ca, cert=cert, key=key,
                   username=user, password=password, keepalive=keepalive,
                   reconnect_max=reconnect_max)


def parse_url(url: str) -> tuple[bool, str, int, str | None]:
    """mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (optionally USER@); (tls, host, port, user)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("mqtt", "mqtts"):
        raise ContractError(f"broker URL {url!r}: use mqtt://HOST:PORT or mqtts://HOST:PORT")
    if parsed.password is not None:
        raise ContractError(f"broker URL {url.split('@')[-1]!r}: a password does not belong "
                            f"in a URL (it ends up in config files and shell history); use "
                            f"password_file or the {PASSWORD_ENV} environment variable")
    if not parsed.hostname:
        raise ContractError(f"broker URL {url!r} has no host")
    if parsed.path not in ("", "/") or parsed.query:
        raise ContractError(f"broker URL {url!r}: no path or query expected")
    tls = parsed.scheme == "mqtts"
    try:
        port = parsed.port or (8883 if tls else 1883)
    except ValueError:
        raise ContractError(f"broker URL {url!r}: bad port") from None
    return tls, parsed.hostname, port, parsed.username


def make_client(settings: BrokerSettings, client_id: str, manual_ack: bool = False) -> Any:
    """A paho-mqtt 2.x client (MQTT 5, callback API v2) with TLS and credentials set."""
    try:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
    except ImportError:
        raise ContractError("paho-mqtt is not installed: pip install 'wardtap[fleet]'") from None
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5, manual_ack=manual_ack)
    client.suppress_exceptions = True       # a failing callback is logged, the loop goes on
    client.enable_logger(_PAHO_LOG)
    if settings.tls:
        import ssl

        client.tls_set(ca_certs=settings.ca, certfile=settings.cert, keyfile=settings.key,
                       cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)
    client.reconnect_delay_set(min_delay=max(1, int(settings.reconnect_min)),
                               max_delay=max(1, int(settings.reconnect_max)))
    return client


def connect_properties(session_expiry: int = 0) -> Any:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)
    if session_expiry:
        props.SessionExpiryInterval = session_expiry
    return props


def start(client: Any, settings: BrokerSettings, clean_start: bool = True,
          session_expiry: int = 0) -> None:
    """Connect in the background (works while the broker is down) and keep reconnecting."""
    client.connect_async(settings.host, settings.port, keepalive=settings.keepalive,
                         clean_start=clean_start,
                         properties=connect_properties(session_expiry))
    client.loop_start()


def stop(client: Any, disconnect: bool = True) -> None:
    """Disconnect (a normal DISCONNECT, so the broker drops the will) and stop the network
    thread. paho-mqtt 2.x's loop_stop() checks its thread and then joins it, while the thread
    clears that attribute as it ends (eclipse-paho/paho.mqtt.python#872): when the thread
    wins that race it has already ended, so the AttributeError means "stopped"."""
    if disconnect:
        client.disconnect()
    try:
        client.loop_stop()
    except AttributeError:
        pass


def probe(settings: BrokerSettings, timeout: float) -> None:
    """Reach the broker the way paho will (TCP, then TLS), so a failure is said precisely:
    a name that does not resolve, a refused connection, an unreachable or silent host, an
    untrusted certificate or a failed TLS handshake. A refused login is said by
    connect_and_wait (the broker's CONNACK)."""
    import errno
    import socket
    import ssl
    import time

    where = f"the broker at {settings.url}"
    started = time.monotonic()
    try:
        sock = socket.create_connection((settings.host, settings.port), timeout=timeout)
    except socket.gaierror as exc:
        raise ContractError(f"cannot reach {where}: the name {settings.host!r} does not "
                            f"resolve ({exc.strerror})") from None
    except ConnectionRefusedError:
        raise ContractError(f"{where} refused the connection: nothing listens on "
                            f"{settings.host} port {settings.port}") from None
    except TimeoutError:
        raise ContractError(f"cannot reach {where}: no answer within {timeout:g} s (the host "
                            "is down, or a firewall drops the packets)") from None
    except OSError as exc:
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL):
            raise ContractError(f"cannot reach {where}: unreachable ({exc.strerror})") from None
        raise ContractError(f"cannot connect to {where}: {exc.strerror or exc}") from None
    with sock:
        if not settings.tls:
            return
        try:
            context = ssl.create_default_context(cafile=settings.ca)
            if settings.cert:
                context.load_cert_chain(settings.cert, settings.key)
        except (ssl.SSLError, OSError) as exc:
            raise ContractError(f"TLS: cannot load the CA or client certificate: "
                                f"{getattr(exc, 'reason', None) or exc}") from None
        sock.settimeout(max(0.1, timeout - (time.monotonic() - started)))
        try:
            with context.wrap_socket(sock, server_hostname=settings.host) as tls:
                tls.settimeout(0.2)       # TLS 1.3 says "certificate required" after it
                try:
                    tls.recv(1)
                except (TimeoutError, ssl.SSLWantReadError):
                    pass
        except ssl.SSLCertVerificationError as exc:
            raise ContractError(f"TLS: {where} has a certificate this side does not trust: "
                                f"{exc.verify_message} (check --ca and the broker's name)") \
                from None
        except ssl.SSLError as exc:
            raise ContractError(f"TLS handshake with {where} failed: {exc.reason or exc}"
                                + (" (the broker wants a client certificate: --tls-cert and "
                                   "--tls-key)" if "CERTIFICATE_REQUIRED" in str(exc).upper()
                                   else "")) from None
        except TimeoutError:
            raise ContractError(f"TLS handshake with {where}: no answer within {timeout:g} s "
                                "(is that port speaking TLS?)") from None
        except OSError as exc:
            raise ContractError(f"TLS handshake with {where} failed: {exc.strerror or exc} "
                                "(is that port speaking TLS?)") from None


def connect_and_wait(client: Any, settings: BrokerSettings, timeout: float | None = None,
                     clean_start: bool = True, session_expiry: int = 0) -> None:
    """For command-line tools: connect within `timeout` (settings.connect_timeout), or fail
    with one line saying what went wrong (refused, unreachable, TLS, login)."""
    import time

    timeout = settings.connect_timeout if timeout is None else timeout
    started = time.monotonic()
    probe(settings, timeout)
    timeout = max(0.5, timeout - (time.monotonic() - started))
    done = threading.Event()
    outcome: dict[str, Any] = {}
    previous = client.on_connect

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        outcome["reason"] = reason
        done.set()
        if previous is not None:
            previous(c, userdata, flags, reason, props)

    client.on_connect = on_connect
    start(client, settings, clean_start=clean_start, session_expiry=session_expiry)
    if not done.wait(timeout):
        stop(client, disconnect=False)
        raise ContractError(f"the broker at {settings.url} accepted the connection but did "
                            f"not answer the MQTT login within {timeout:.1f} s")
    reason = outcome["reason"]
    if reason.is_failure:
        stop(client, disconnect=False)
        login = str(reason).lower()
        if "user name or password" in login or "authori" in login:
            who = f" as {settings.username!r}" if settings.username else ""
            raise ContractError(f"the broker at {settings.url} refused the login{who}: "
                                f"{reason} (check --username/--password-file or the "
                                "client certificate)")
        raise ContractError(f"the broker at {settings.url} refused the connection: {reason}")
    client.on_connect = previous
