"""Rules of the wire that the client side (`fal`, `webhooks`) and fal's stand-in (`simulator`) both follow, kept
here once so the two sides cannot drift: which hosts are loopback (the only ones plain http or an unsigned
webhook may use) and the bytes a fal webhook signature covers. No I/O; imports nothing of the package."""

from __future__ import annotations

import hashlib
import ipaddress


def is_loopback(host: str | None) -> bool:
    """`localhost` or a loopback IP address (IPv6 with or without brackets)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    """What fal's Ed25519 webhook signature signs: `"{request_id}\\n{user_id}\\n{timestamp}\\n{sha256hex(body)}"`."""
    return f"{request_id}\n{user_id}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()
