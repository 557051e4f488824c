"""API keys and the rate limiter, without a server (tests/integration/test_security.py has them served)."""

import hashlib
import os
import time

import pytest

from services.edge import keys
from services.edge.keys import KeyRing, RateLimiter, TokenBucket, presented_key


def test_keys_are_taken_as_given_or_as_their_sha256_and_known_by_an_id(tmp_path):
    path = tmp_path / "keys"
    hashed = hashlib.sha256(b"second-key").hexdigest()
    path.write_text(f"# team a\nfirst-key\nsha256:{hashed}  # team b\nsha256:nothex\n\n")
    ring = KeyRing(path)
    assert len(ring.digests) == 2
    assert ring.identify("first-key") == hashlib.sha256(b"first-key").hexdigest()[:12]
    assert ring.identify("second-key") == hashed[:12]
    assert ring.identify("first-kez") is None and ring.identify(None) is None and ring.identify("") is None
    assert ring.identify(f"sha256:{hashed}") is None  # a digest is not a key


def test_the_file_is_reread_when_it_changes_and_an_unreadable_one_admits_no_key(tmp_path, monkeypatch):
    monkeypatch.setattr(keys, "RELOAD_EVERY_S", 0.0)
    path = tmp_path / "keys"
    path.write_text("old-key\n")
    ring = KeyRing(path)
    assert ring.identify("old-key")
    path.write_text("new-key\n")
    os.utime(path, (time.time() + 5, time.time() + 5))  # a change within the file system's time resolution
    assert ring.identify("new-key") and not ring.identify("old-key")
    path.unlink()
    assert ring.identify("new-key") is None


@pytest.mark.parametrize(
    "headers,key",
    [
        ({b"authorization": b"Bearer abc"}, "abc"),
        ({b"authorization": b"bearer  abc "}, "abc"),
        ({b"x-api-key": b"abc"}, "abc"),
        ({b"authorization": b"Basic abc"}, None),
        ({}, None),
    ],
)
def test_a_key_is_read_from_a_bearer_token_or_x_api_key(headers, key):
    assert presented_key(headers) == key


def test_a_token_bucket_lets_a_burst_through_then_the_rate(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    bucket = TokenBucket(rate=2.0, burst=3.0)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)
    now[0] += 0.5
    assert bucket.take() == 0.0 and bucket.take() > 0


def test_each_client_has_its_own_bucket():
    limiter = RateLimiter(rate=1.0, burst=1.0)
    assert limiter.wait("noisy") == 0.0 and limiter.wait("noisy") > 0
    assert limiter.wait("quiet") == 0.0
