"""fal's webhook signatures: the keys (JWKS or raw Ed25519) and the check.

Signature (fal's scheme): Ed25519 over `"{request_id}\\n{user_id}\\n{timestamp}\\n{sha256hex(body)}"`, headers
`X-Fal-Webhook-Request-Id`, `-User-Id`, `-Timestamp` (unix seconds) and `-Signature` (hex). Public keys are given
as hex or base64(url) raw 32-byte keys, or as a JWKS document (`{"keys": [{"kty": "OKP", "crv": "Ed25519",
"x": …}]}`, as fal publishes them at https://rest.fal.ai/.well-known/jwks.json).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sora_pipeline.wire import signed_message

FAL_JWKS_URL = "https://rest.fal.ai/.well-known/jwks.json"
KEYS_ENV, JWKS_FILE_ENV = "SORA_WEBHOOK_PUBLIC_KEYS", "SORA_WEBHOOK_JWKS_FILE"
INSECURE_ENV, INSECURE_FLAG = "SORA_WEBHOOK_INSECURE_TEST_MODE", "--insecure-test-mode"
H_REQUEST_ID, H_USER_ID = "x-fal-webhook-request-id", "x-fal-webhook-user-id"
H_TIMESTAMP, H_SIGNATURE = "x-fal-webhook-timestamp", "x-fal-webhook-signature"
NO_KEYS_MESSAGE = (f"no fal webhook keys: set {JWKS_FILE_ENV} to fal's JWKS ({FAL_JWKS_URL}) or {KEYS_ENV}; "
                   f"only for a test, start with {INSECURE_FLAG} (or {INSECURE_ENV}=1) to take unsigned webhooks")


class WebhookSignatureError(ValueError):
    """The webhook's signature headers are missing, stale, or do not verify."""


class WebhookKeyError(ValueError):
    """The configured webhook keys are missing or unreadable (one line: what to set)."""


def _b64(text: str) -> bytes:
    text = text.strip()
    return base64.urlsafe_b64decode(text.replace("+", "-").replace("/", "_") + "=" * (-len(text) % 4))


def parse_public_key(text: str) -> Ed25519PublicKey:
    """A raw 32-byte Ed25519 public key given as 64 hex characters or as (url-safe) base64."""
    text = text.strip()
    raw: bytes | None = None
    if len(text) == 64:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = None
    if raw is None:
        try:
            raw = _b64(text)
        except (binascii.Error, ValueError):
            raw = b""
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes: give 64 hex characters or base64")
    return Ed25519PublicKey.from_public_bytes(raw)


def keys_from_jwks(document: str | dict[str, Any]) -> list[Ed25519PublicKey]:
    """The Ed25519 keys of a JWKS document (`kty` OKP, `crv` Ed25519, `x` base64url)."""
    doc = json.loads(document) if isinstance(document, str) else document
    found = doc.get("keys", []) if isinstance(doc, dict) else []
    keys = [Ed25519PublicKey.from_public_bytes(_b64(k["x"])) for k in found
            if isinstance(k, dict) and k.get("kty") == "OKP" and k.get("crv") == "Ed25519" and k.get("x")]
    if not keys:
        raise ValueError("the JWKS document holds no Ed25519 key")
    return keys


def keys_from_env(env: Mapping[str, str]) -> list[Ed25519PublicKey]:
    """fal's keys from `SORA_WEBHOOK_PUBLIC_KEYS` and/or `SORA_WEBHOOK_JWKS_FILE` ([] when neither is set)."""
    try:
        keys = [parse_public_key(k) for k in env.get(KEYS_ENV, "").split(",") if k.strip()]
    except ValueError as exc:
        raise WebhookKeyError(f"{KEYS_ENV}: {exc}") from None
    path = env.get(JWKS_FILE_ENV, "").strip()
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                keys += keys_from_jwks(fh.read(1 << 20))
        except OSError as exc:
            raise WebhookKeyError(f"{JWKS_FILE_ENV}={path} cannot be read: {exc.strerror or exc}") from None
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise WebhookKeyError(f"{JWKS_FILE_ENV}={path} is not a JWKS document with an Ed25519 key "
                                  f"({exc}); download it from {FAL_JWKS_URL}") from None
    return keys


def verify_signature(public_keys: Sequence[Ed25519PublicKey], headers: Any, body: bytes, *,
                     max_skew: float = 300.0, now: float | None = None) -> str:
    """Check fal's webhook signature; returns the signed request id. Raises `WebhookSignatureError`."""
    request_id, user_id = headers.get(H_REQUEST_ID), headers.get(H_USER_ID)
    timestamp, signature = headers.get(H_TIMESTAMP), headers.get(H_SIGNATURE)
    if not (request_id and user_id and timestamp and signature):
        raise WebhookSignatureError("missing X-Fal-Webhook-* signature headers")
    try:
        ts = int(timestamp)
        sig = bytes.fromhex(signature)
    except ValueError:
        raise WebhookSignatureError("malformed timestamp or signature header") from None
    current = time.time() if now is None else now
    if abs(current - ts) > max_skew:
        raise WebhookSignatureError(f"timestamp is {current - ts:+.0f} s off (allowed ±{max_skew:.0f} s)")
    message = signed_message(request_id, user_id, timestamp, body)
    for key in public_keys:
        try:
            key.verify(sig, message)
            return request_id
        except InvalidSignature:
            continue
    raise WebhookSignatureError("signature does not verify with any configured key")
