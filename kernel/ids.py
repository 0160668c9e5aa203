"""Deterministic client order ids."""

from __future__ import annotations

import hashlib


def client_order_id(prefix: str, *parts: str) -> str:
    """Deterministic id: the same signal always yields the same id, so a retry or a
    restart can never create a second order for it at the broker."""
    # Length-prefixed, so no choice of parts can collide with another ("a|b","c" vs "a","b|c").
    key = "".join(f"{len(p)}:{p}" for p in parts)
    digest = hashlib.blake2b(key.encode(), digest_size=10).hexdigest()
    return f"{prefix}-{digest}"


__all__ = ["client_order_id"]
