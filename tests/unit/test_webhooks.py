"""Webhook signatures and what a receiver's answer means for the sender."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from lambdaloop.http_outcome import Verdict, classify
from lambdaloop.webhooks import sign, verify

SECRET = "s3cret-key"
BODY = b'{"id":"n1","message":"hi"}'
NOW = 1_800_000_000


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body_so_any_language_can_check_it() -> None:
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()

    assert sign(SECRET, NOW, BODY) == f"v1={expected}"


def test_a_receiver_accepts_the_senders_signature() -> None:
    assert verify(SECRET, BODY, str(NOW), sign(SECRET, NOW, BODY), now=NOW + 10)


@pytest.mark.parametrize(
    ("body", "timestamp", "signature"),
    [
        (BODY + b" ", str(NOW), sign(SECRET, NOW, BODY)),  # body changed
        (BODY, str(NOW + 1), sign(SECRET, NOW, BODY)),  # timestamp changed
        (BODY, str(NOW), sign("other", NOW, BODY)),  # another secret
        (BODY, str(NOW), None),
        (BODY, None, sign(SECRET, NOW, BODY)),
        (BODY, "yesterday", sign(SECRET, NOW, BODY)),
        (BODY, str(NOW), sign(SECRET, NOW, BODY).replace("v1=", "v0=")),
    ],
)
def test_a_receiver_refuses_anything_else(
    body: bytes, timestamp: str | None, signature: str | None
) -> None:
    assert not verify(SECRET, body, timestamp, signature, now=NOW)


def test_a_replayed_old_request_is_refused_even_with_a_good_signature() -> None:
    signature = sign(SECRET, NOW, BODY)

    assert verify(SECRET, BODY, str(NOW), signature, now=NOW + 299)
    assert not verify(SECRET, BODY, str(NOW), signature, now=NOW + 301)


def test_while_a_secret_rotates_either_listed_signature_verifies() -> None:
    both = f"{sign('old-key', NOW, BODY)}, {sign(SECRET, NOW, BODY)}"

    assert verify(SECRET, BODY, str(NOW), both, now=NOW)
    assert verify("old-key", BODY, str(NOW), both, now=NOW)
    assert not verify("third", BODY, str(NOW), both, now=NOW)


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.DELIVERED),
        (204, Verdict.DELIVERED),
        (301, Verdict.REJECTED),
        (400, Verdict.REJECTED),
        (404, Verdict.REJECTED),
        (410, Verdict.REJECTED),
        (408, Verdict.RETRY),
        (429, Verdict.RETRY),
        (500, Verdict.RETRY),
        (503, Verdict.RETRY),
    ],
)
def test_2xx_is_delivered_4xx_is_final_but_408_429_and_5xx_are_retried(
    status: int, verdict: Verdict
) -> None:
    attempt = classify(status, {})

    assert (attempt.verdict, attempt.status, attempt.detail) == (verdict, status, f"HTTP {status}")


def test_retry_after_is_read_as_seconds_or_as_an_http_date() -> None:
    assert classify(429, {"Retry-After": "7"}).retry_after_s == 7
    # 2027-01-15 08:00:30 UTC is 1,800,000,030 in epoch seconds.
    dated = classify(503, {"Retry-After": "Fri, 15 Jan 2027 08:00:30 GMT"}, now=1_800_000_000)
    assert dated.retry_after_s == 30
    assert (
        classify(503, {"Retry-After": "Fri, 15 Jan 2027 08:00:30 GMT"}, now=NOW + 60).retry_after_s
        == 0
    )
    assert classify(503, {"Retry-After": "soon"}).retry_after_s is None
