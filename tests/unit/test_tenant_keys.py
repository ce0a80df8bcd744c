"""Tenant partitions and the caller of an API Gateway event."""

from __future__ import annotations

from typing import Any

import pytest

from lambdaloop.jobs import JobRef
from lambdaloop.messages import DELIVER, Delivery
from lambdaloop.queue import Envelope
from lambdaloop.tenancy import claims_tenant, partition, scoped


def test_no_tenant_can_spell_a_key_inside_another_tenants_partition() -> None:
    # "a" has user 1; a tenant named so that its keys would begin like a's must not reach it
    victim = scoped("a", "USER", 1)
    crafted = ["a#USER#1", "a#USER", "a%23USER%231", "a#", "T#a", "a/USER/1"]

    keys = {scoped(tenant, "USER", 1) for tenant in crafted}

    assert victim not in keys
    assert all(not key.startswith(partition("a") + "#") for key in keys)
    assert len(keys) == len(crafted)


def test_a_partition_is_stable_and_readable() -> None:
    assert partition("alice") == "T#alice"
    assert scoped("alice", "JOB", "j1") == "T#alice#JOB#j1"
    assert partition("a b#c%") == "T#a%20b%23c%25"


def _event(claims: Any) -> dict[str, Any]:
    return {"requestContext": {"authorizer": {"jwt": {"claims": claims, "scopes": None}}}}


@pytest.mark.parametrize(
    ("event", "tenant"),
    [
        (_event({"sub": "alice"}), "alice"),
        (_event({"sub": ""}), None),
        (_event({"sub": "x" * 256}), None),
        (_event({"sub": 7}), None),
        (_event({"client_id": "alice"}), None),
        (_event(None), None),
        ({"requestContext": {}}, None),
        ({"requestContext": {"authorizer": {"lambda": {"sub": "alice"}}}}, None),
        ({"headers": {"x-user": "alice"}, "requestContext": {}}, None),
        ({}, None),
    ],
)
def test_the_tenant_is_the_verified_sub_claim_only(
    event: dict[str, Any], tenant: str | None
) -> None:
    assert claims_tenant(event) == tenant


def test_job_messages_name_their_tenant() -> None:
    ref = JobRef("alice", "j1")

    assert JobRef.parse({**ref.payload(), "part": 0}) == ref
    assert ref.pk == "T#alice#JOB#j1"
    assert ref.object_prefix == "jobs/alice/j1/"
    assert ref.part_id(2) == "T#alice#JOB#j1.2"
    assert ref.chunk_id(3) == "T#alice#JOB#j1.c3"
    with pytest.raises(ValueError, match=r"payload\.tenant"):
        JobRef.parse({"job_id": "j1"})
    with pytest.raises(ValueError, match=r"payload\.job_id"):
        JobRef.parse({"tenant": "alice", "job_id": ""})


def test_notification_messages_name_their_tenant() -> None:
    envelope = Delivery("alice", "n1", 1).envelope()

    delivery = Delivery.parse(envelope)

    assert envelope.type == DELIVER
    assert envelope.id == "T#alice#NOTIFICATION#n1"
    assert envelope.payload == {"tenant": "alice", "notification_id": "n1", "user_id": 1}
    assert (delivery.tenant, delivery.notification_id) == ("alice", "n1")
    assert delivery.key == {"pk": envelope.id}


@pytest.mark.parametrize(
    ("envelope_id", "payload", "field"),
    [
        ("T#alice#NOTIFICATION#n1", {"notification_id": "n1", "user_id": 1}, "payload.tenant"),
        ("T#alice#NOTIFICATION#n1", {"tenant": "alice", "notification_id": 5}, "payload.notif"),
        ("T#alice#NOTIFICATION#n1", {"tenant": "alice", "notification_id": "n1"}, "payload.user"),
        # A payload naming another tenant's record than its envelope id (the idempotency key)
        ("T#alice#NOTIFICATION#n1", {"tenant": "bob", "notification_id": "n1", "user_id": 1}, "id"),
        ("n1", {"tenant": "alice", "notification_id": "n1", "user_id": 1}, "id"),
    ],
)
def test_a_notification_message_that_does_not_hold_together_is_refused(
    envelope_id: str, payload: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValueError, match=f"^{field}"):
        Delivery.parse(Envelope(DELIVER, envelope_id, payload))
