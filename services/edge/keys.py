"""API keys (MODELROAD_API_KEYS_FILE) and the per-key request rate limit (MODELROAD_RATE_LIMIT).

The keys file holds one key per line, either as the key itself or, better, as `sha256:<hex>` of it
(`printf %s "$KEY" | sha256sum`), so that the file does not hold the keys; `#` starts a comment. It is
re-read when it changes (checked at most once a second), without a restart; a file that cannot be read
keeps no key valid (closed, not open). A key is known by its id, the first 12 hex digits of its sha256:
that, never the key, is what logs and the rate limiter see.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

RELOAD_EVERY_S = 1.0


def _digest_of_entry(entry: str) -> bytes:
    """A keys-file line's digest: given (`sha256:<hex>`), or of the key itself; b"" if malformed."""
    if not entry.startswith("sha256:"):
        return hashlib.sha256(entry.encode()).digest()
    try:
        value = bytes.fromhex(entry.removeprefix("sha256:"))
    except ValueError:
        return b""
    return value if len(value) == 32 else b""


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    """The key a request carries: `Authorization: Bearer <key>` or `X-API-Key: <key>`."""
    authorization = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return headers.get(b"x-api-key", b"").decode("latin-1").strip() or None


class KeyRing:
    """The valid keys' digests, from the keys file, kept current with it."""

    def __init__(self, path: Path):
        self.path = path
        self.digests: tuple[bytes, ...] = ()
        self._seen: tuple[float, int, int] | None = None  # mtime, size, inode of the file last read
        self._checked = -math.inf
        self.reload()

    def identify(self, key: str | None) -> str | None:
        """The key's id if it is valid, else None; as long for a near miss as for a far one."""
        self._reload_if_changed()
        if key is None:
            return None
        presented = hashlib.sha256(key.encode()).digest()
        valid = False
        for known in self.digests:  # every digest compared, in constant time each: no early exit
            valid |= hmac.compare_digest(presented, known)
        return presented.hex()[:12] if valid else None

    def reload(self) -> None:
        try:
            stat = os.stat(self.path)
            lines = self.path.read_text().splitlines()
        except OSError as exc:
            if self.digests or self._seen is None:
                log.error("API keys file %s cannot be read (%s): no key is valid until it can", self.path, exc)
            self.digests, self._seen = (), None
            return
        digests = [_digest_of_entry(entry) for line in lines if (entry := line.split("#", 1)[0].strip())]
        self.digests = tuple(d for d in digests if d)
        if len(self.digests) != len(digests):
            log.error(
                "API keys file %s: %d malformed sha256 lines ignored", self.path, len(digests) - len(self.digests)
            )
        self._seen = (stat.st_mtime, stat.st_size, stat.st_ino)
        log.info("API keys file %s: %d keys", self.path, len(self.digests))

    def _reload_if_changed(self) -> None:
        now = time.monotonic()
        if now - self._checked < RELOAD_EVERY_S:
            return
        self._checked = now
        try:
            stat = os.stat(self.path)
            current = (stat.st_mtime, stat.st_size, stat.st_ino)
        except OSError:
            current = None
        if current != self._seen:
            self.reload()


@dataclass
class TokenBucket:
    rate: float  # tokens a second
    burst: float  # at most this many saved
    tokens: float = field(init=False)
    updated: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens, self.updated = self.burst, time.monotonic()  # a new client starts with a full bucket

    def take(self) -> float:
        """0 if a request may pass now (and it is counted), else the seconds until one may."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class RateLimiter:
    """A token bucket per client (a key's id, or the address where no keys are required)."""

    MAX_CLIENTS = 10_000  # buckets kept; the least recently made go first (a full bucket is the default anyway)

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, burst
        self.buckets: dict[str, TokenBucket] = {}

    def wait(self, client: str) -> float:
        bucket = self.buckets.get(client)
        if bucket is None:
            if len(self.buckets) >= self.MAX_CLIENTS:
                del self.buckets[next(iter(self.buckets))]
            bucket = self.buckets[client] = TokenBucket(self.rate, self.burst)
        return bucket.take()
