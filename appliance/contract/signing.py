"""Ed25519 signatures for fleet commands (the `cryptography` library).

The fleet holds the private key (`wardtap fleet keygen`); every appliance holds only the
public key. A signed command is an envelope around the exact bytes that were signed, so
nothing depends on re-serialising JSON the same way on both sides:

    {"v": 1, "key": "<key id>", "body": "<base64 of the body's JSON bytes>",
     "sig": "<base64 Ed25519 signature of those bytes>"}

The key id is the first 16 hex digits of the SHA-256 of the raw public key; it names the key
in audit records and lets an appliance say "signed by an unknown key" rather than "forged".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from typing import Any

from appliance.common.bounded import BoundsError, load_json
from appliance.errors import WardtapError

ENVELOPE_VERSION = 1
MAX_BODY_DEPTH = 8


class SigningError(WardtapError):
    """A key file that cannot be used (missing, wrong type, wrong permissions)."""


class BadSignature(Exception):
    """An envelope that does not verify; `reason` is one word for the audit log."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _serialization() -> Any:
    from cryptography.hazmat.primitives import serialization

    return serialization


def generate_keypair(private_path: str, public_path: str, overwrite: bool = False) -> str:
    """Write a new fleet key pair (private key 0600); return the key id."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    ser = _serialization()
    for path in (private_path, public_path):
        if os.path.exists(path) and not overwrite:
            raise SigningError(f"{path}: already exists; refusing to overwrite a fleet key "
                               "(move it away first)")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8,
                                    ser.NoEncryption())
    public_pem = key.public_key().public_bytes(ser.Encoding.PEM,
                                               ser.PublicFormat.SubjectPublicKeyInfo)
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(private_pem)
        with open(public_path, "wb") as fh:
            fh.write(public_pem)
    except OSError as exc:
        raise SigningError(f"cannot write the fleet key: {exc}") from None
    return key_id(key.public_key())


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise SigningError(f"{path}: no such {what} file") from None
    except OSError as exc:
        raise SigningError(f"{path}: cannot read the {what}: {exc.strerror}") from None


def load_private_key(path: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = _read(path, "private key")
    try:
        key = _serialization().load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"{path}: not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path}: not an Ed25519 key (make one with `wardtap fleet keygen`)")
    return key


def load_public_key(path: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = _read(path, "public key")
    try:
        key = _serialization().load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"{path}: not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningError(f"{path}: not an Ed25519 public key")
    return key


def key_id(public_key: Any) -> str:
    ser = _serialization()
    raw = public_key.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(private_key: Any, body: dict[str, Any]) -> bytes:
    """The JSON envelope (bytes) carrying `body` and its signature."""
    data = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    envelope = {"v": ENVELOPE_VERSION, "key": key_id(private_key.public_key()),
                "body": base64.b64encode(data).decode(),
                "sig": base64.b64encode(private_key.sign(data)).decode()}
    return json.dumps(envelope, separators=(",", ":")).encode()


class Verifier:
    """Checks envelopes against the fleet's public key (the appliance holds nothing else)."""

    def __init__(self, public_key: Any) -> None:
        self.public_key = public_key
        self.key_id = key_id(public_key)

    @classmethod
    def from_file(cls, path: str) -> Verifier:
        return cls(load_public_key(path))

    def open(self, envelope: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
        """Verify an envelope; return (signed bytes, body). Raises BadSignature."""
        from cryptography.exceptions import InvalidSignature

        if envelope.get("v") != ENVELOPE_VERSION:
            raise BadSignature("malformed", f"envelope version {envelope.get('v')!r} is not "
                               f"{ENVELOPE_VERSION}")
        body_b64, sig_b64, kid = envelope.get("body"), envelope.get("sig"), envelope.get("key")
        if not all(isinstance(x, str) for x in (body_b64, sig_b64, kid)):
            raise BadSignature("malformed", "envelope needs string fields key, body and sig")
        try:
            data = base64.b64decode(str(body_b64), validate=True)
            signature = base64.b64decode(str(sig_b64), validate=True)
        except (binascii.Error, ValueError):
            raise BadSignature("malformed", "body or sig is not base64") from None
        if kid != self.key_id:
            raise BadSignature("unknown_key", f"signed by key {kid}, this appliance trusts "
                               f"{self.key_id}")
        try:
            self.public_key.verify(signature, data)
        except InvalidSignature:
            raise BadSignature("bad_signature", "the signature does not match the body "
                               "(forged or altered)") from None
        try:
            body = load_json(data, max_bytes=len(data), max_depth=MAX_BODY_DEPTH)
        except BoundsError as exc:
            raise BadSignature("malformed", f"signed body is not usable JSON: {exc}") from None
        if not isinstance(body, dict):
            raise BadSignature("malformed", "signed body must be a JSON object")
        return data, body
