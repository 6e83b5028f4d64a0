"""Signed replica definitions: only the georep API can define where a region's bytes go.

Anyone who can write `georep.replicas` (a Kafka superuser, a stolen admin credential) could otherwise point a
region at a bucket of their own and receive its keys' signed requests and every blob. So the API signs each
definition with an Ed25519 key only it holds, and every process verifies it before following it:

    value on georep.replicas    {"schema": 1, "payload": "<definition JSON>", "signature": "<base64>"}
    a deletion                  the same, with payload {"region": R, "deleted": true, "signed_at": ...}

A Kafka tombstone, an unsigned value, a wrong signature, or a payload for another region than its key is
ignored (logged, counted). Keys are base64: the private key's 32-byte seed, the public key's 32 bytes.
"""

from __future__ import annotations

import base64
import binascii

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from engine.errors import InvalidEvent, InvalidInput


class Unsigned(InvalidEvent):
    """A value on georep.replicas that does not carry a valid signature of the API's key."""

    reason = "unsigned-definition"


def new_signing_key() -> str:
    """A fresh private key (its seed, base64)."""
    return base64.b64encode(Ed25519PrivateKey.generate().private_bytes_raw()).decode()


def _key_bytes(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{what} is not base64") from None
    if len(raw) != 32:
        raise InvalidInput(f"{what} must be 32 bytes (base64), not {len(raw)}")
    return raw


def public_key(signing_key: str) -> str:
    """The public half of a private key, base64: what every process verifies with."""
    key = Ed25519PrivateKey.from_private_bytes(_key_bytes(signing_key, "replicas.signing_key"))
    return base64.b64encode(key.public_key().public_bytes_raw()).decode()


def sign(payload: bytes, signing_key: str) -> bytes:
    key = Ed25519PrivateKey.from_private_bytes(_key_bytes(signing_key, "replicas.signing_key"))
    signature = base64.b64encode(key.sign(payload)).decode()
    return orjson.dumps({"schema": 1, "payload": payload.decode(), "signature": signature})


def verified(value: bytes, verify_key: str) -> bytes:
    """The payload of a signed value, or Unsigned saying why there is none."""
    try:
        doc = orjson.loads(value)
        payload: bytes = doc["payload"].encode()
        signature = base64.b64decode(doc["signature"], validate=True)
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, binascii.Error, ValueError):
        raise Unsigned("the value is not a signed definition") from None
    key = Ed25519PublicKey.from_public_bytes(_key_bytes(verify_key, "replicas.verify_key"))
    try:
        key.verify(signature, payload)
    except InvalidSignature:
        raise Unsigned("the signature does not verify with replicas.verify_key") from None
    return payload
