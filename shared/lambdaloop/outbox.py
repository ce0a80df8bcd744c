"""The outbox: which messages a newly stored work record asks for.

The API stores work (a notification, a fetch job, a compute job) in DynamoDB and nothing
else; the tables' streams hand each new record to the relay function, which publishes the
messages :func:`messages_for` names. A record is thus published even when the API dies
right after its write, and a stream record handed over twice yields the same envelope ids
(:mod:`lambdaloop.messages`), which the consumers apply once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from lambdaloop.compute.kinds import ParamsError, plan
from lambdaloop.jobs import COMPUTE_JOB, FETCH_JOB, JobRef
from lambdaloop.messages import ComputeChunk, Delivery, FetchPart
from lambdaloop.notifications import record_key
from lambdaloop.queue import OutgoingMessage

__all__ = ["Outgoing", "QueueName", "messages_for"]

#: The queues work goes to: the notify, jobs and compute functions' own.
QueueName = Literal["notify", "jobs", "compute"]


@dataclass(frozen=True, slots=True)
class Outgoing:
    queue: QueueName
    message: OutgoingMessage


def messages_for(item: Mapping[str, Any]) -> list[Outgoing]:
    """The messages a new record asks for, in order ([] for a record that is not work, or
    not ``queued`` work).
    ``ValueError`` naming the attribute when the record claims to be work but is malformed
    (publishing it again will not help)."""
    tenant, record_id = item.get("tenant"), item.get("id")
    if not isinstance(tenant, str) or not isinstance(record_id, str):
        return []
    if item.get("status") != "queued":
        return []  # stored as already taken up: nobody asked for it to be sent
    correlation_id = item.get("correlation_id")
    if not isinstance(correlation_id, str) or not correlation_id:
        correlation_id = None
    queue: QueueName
    if item.get("sk") == "META" and item.get("pk") == JobRef(tenant, record_id).pk:
        queue = "jobs" if item.get("type") == FETCH_JOB else "compute"
        envelopes = [m.envelope() for m in _job_messages(JobRef(tenant, record_id), item)]
    elif "sk" not in item and item.get("pk") == record_key(tenant, record_id)["pk"]:
        user_id = item.get("user_id")
        if type(user_id) is not int:
            raise ValueError(f"user_id: expected an integer, got {user_id!r:.40}")
        queue, envelopes = "notify", [Delivery(tenant, record_id, user_id).envelope()]
    else:
        return []
    return [Outgoing(queue, OutgoingMessage(e, correlation_id=correlation_id)) for e in envelopes]


def _job_messages(job: JobRef, item: Mapping[str, Any]) -> list[FetchPart] | list[ComputeChunk]:
    if item.get("type") == FETCH_JOB:
        return [FetchPart(job, 0)]
    if item.get("type") != COMPUTE_JOB:
        raise ValueError(f"type: not a job type: {item.get('type')!r:.40}")
    stored = item.get("params")
    if not isinstance(stored, Mapping):
        raise ValueError("params: expected a map")
    try:
        # The API checked the same params with the same plan when it stored the job.
        kind, _, works = plan(stored.get("kind"), stored.get("params"), stored.get("chunks"))
    except ParamsError as exc:
        raise ValueError(f"params: {exc}") from exc
    return [ComputeChunk(job, n, kind.name, work) for n, work in enumerate(works)]
