"""The queue messages that producers and consumers share: their types, ids and payloads.

Each message is a small class that builds its :class:`~lambdaloop.queue.Envelope` and
parses one back (``ValueError`` naming the field at fault). Every envelope id derives from
the record the message is about, so a message sent twice (a relay replaying a stream
record, a retried publish) carries one id, and the consumers' idempotency guard applies it
once.

    notification.deliver  {"tenant", "notification_id", "user_id"}   id: the record's key
    job.fetch             {"tenant", "job_id", "part"}                id: <job pk>.<part>
    job.compute           {"tenant", "job_id", "chunk", "kind", "work"}  id: <job pk>.c<chunk>
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lambdaloop.jobs import JobRef
from lambdaloop.notifications import record_key
from lambdaloop.queue import Envelope
from lambdaloop.tenancy import payload_tenant

__all__ = ["COMPUTE", "DELIVER", "FETCH", "ComputeChunk", "Delivery", "FetchPart"]

DELIVER = "notification.deliver"
FETCH = "job.fetch"
COMPUTE = "job.compute"


def _index(payload: Mapping[str, Any], name: str) -> int:
    value = payload.get(name)
    if type(value) is not int or value < 0:
        raise ValueError(f"payload.{name}: expected an integer >= 0, got {value!r:.40}")
    return value


def _check_id(envelope: Envelope, expected: str) -> None:
    # An id that is not the record's would dodge the consumers' idempotency guard.
    if envelope.id != expected:
        raise ValueError("id: the envelope's id is not the one its payload names")


@dataclass(frozen=True, slots=True)
class Delivery:
    """Deliver notification ``notification_id`` of ``tenant`` (to user ``user_id``)."""

    tenant: str
    notification_id: str
    user_id: int

    @property
    def key(self) -> dict[str, Any]:
        return record_key(self.tenant, self.notification_id)

    def envelope(self) -> Envelope:
        payload = {
            "tenant": self.tenant,
            "notification_id": self.notification_id,
            "user_id": self.user_id,
        }
        return Envelope(DELIVER, self.key["pk"], payload)

    @classmethod
    def parse(cls, envelope: Envelope) -> Delivery:
        payload = envelope.payload
        tenant, notification_id = payload_tenant(payload), payload.get("notification_id")
        if not isinstance(notification_id, str) or not notification_id:
            raise ValueError(
                f"payload.notification_id: expected an id, got {notification_id!r:.40}"
            )
        delivery = cls(tenant, notification_id, _index(payload, "user_id"))
        _check_id(envelope, delivery.key["pk"])
        return delivery


@dataclass(frozen=True, slots=True)
class FetchPart:
    """Run part ``part`` of fetch job ``job`` (part 0 starts it; each part may queue the
    next)."""

    job: JobRef
    part: int

    def envelope(self) -> Envelope:
        payload = {**self.job.payload(), "part": self.part}
        return Envelope(FETCH, self.job.part_id(self.part), payload)

    @classmethod
    def parse(cls, envelope: Envelope) -> FetchPart:
        message = cls(JobRef.parse(envelope.payload), _index(envelope.payload, "part"))
        _check_id(envelope, message.job.part_id(message.part))
        return message


@dataclass(frozen=True, slots=True)
class ComputeChunk:
    """Compute chunk ``chunk`` of job ``job``: ``work`` of kind ``kind``."""

    job: JobRef
    chunk: int
    kind: str
    work: dict[str, Any]

    def envelope(self) -> Envelope:
        payload = {**self.job.payload(), "chunk": self.chunk, "kind": self.kind, "work": self.work}
        return Envelope(COMPUTE, self.job.chunk_id(self.chunk), payload)

    @classmethod
    def parse(cls, envelope: Envelope) -> ComputeChunk:
        message = cls.from_payload(envelope.payload)
        _check_id(envelope, message.job.chunk_id(message.chunk))
        return message

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> ComputeChunk:
        """The chunk a payload names (a direct invocation of the compute function sends
        the payload alone)."""
        kind, work = payload.get("kind"), payload.get("work")
        if not isinstance(kind, str) or not isinstance(work, dict):
            raise ValueError("payload.kind and payload.work: expected a string and an object")
        return cls(JobRef.parse(payload), _index(payload, "chunk"), kind, work)
