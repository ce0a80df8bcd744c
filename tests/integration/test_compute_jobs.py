"""Compute jobs: the API creating them (one message per chunk, the kind's checks as 422s),
the chunk runner folding chunks into the job in moto, and the compute function end to end on
the local stack: a fan-out through the emulator's event source with MaximumConcurrency 4, in
real worker processes, each with its process pool."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from compute.runner import ChunkRunner
from compute.settings import ComputeSettings
from lambdaloop.compute.kinds import get_kind, plan
from lambdaloop.compute.pool import ProcessPool
from lambdaloop.consumer import RecordContext, RetryPolicy, SqsProcessor
from lambdaloop.jobs import JobRef, JobStore, folded
from lambdaloop.messages import COMPUTE
from lambdaloop.queue import Envelope, Publisher
from lambdaloop.runtime import Deadline
from lambdaloop.store import Item
from lambdaloop_local.functions import FunctionPool
from lambdaloop_local.stack import LocalStack
from support import (
    TENANT,
    InProcessApi,
    attached_stack,
    in_process_api,
    job_store,
    run,
    run_event_source,
    sha256_chain_reference,
)

EVENTS = Path(__file__).resolve().parents[2] / "infra" / "events"
#: A failed chunk comes back at once (no backoff), so the poison chunk's 5 attempts are quick.
COMPUTE_ENV = {"COMPUTE_RETRY_BASE_S": "0", "COMPUTE_RETRY_MAX_S": "0"}


def meta_of(store: JobStore, job_id: str) -> Item:
    """The job ``job_id`` of :data:`TENANT`'s (the tenant the API's requests name)."""
    meta = run(store.get(JobRef(TENANT, job_id), consistent=True))
    assert meta is not None
    return meta


def queue_depth(stack: LocalStack, logical_id: str) -> int:
    attributes = stack.aws_client("sqs").get_queue_attributes(
        QueueUrl=stack.resources.refs[logical_id],
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return sum(int(value) for value in attributes.values())


def drain(stack: LocalStack, logical_id: str) -> list[dict[str, Any]]:
    """Every message body on the queue (deleted as read)."""
    sqs = stack.aws_client("sqs")
    url = stack.resources.refs[logical_id]
    bodies = []
    while messages := sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0
    ).get("Messages", []):
        for message in messages:
            bodies.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return bodies


# ------------------------------------------------------------------ end to end


@dataclass
class World:
    metas: dict[str, Item]
    fanned: str
    chained: str
    poisoned: str
    shown: dict[str, Any]
    dead_letters: list[dict[str, Any]]


@pytest.fixture(scope="module")
def world(session_stack: LocalStack) -> World:
    stack = attached_stack(
        session_stack, {"ComputeFunction": COMPUTE_ENV}, {"ComputeMaxConcurrency": "4"}
    )
    stack.create_resources()
    drain(stack, "ComputeQueue")
    drain(stack, "ComputeDeadLetterQueue")
    store = job_store(stack)
    chunks = Publisher(stack.resources.refs["ComputeQueue"], client=stack.aws_client("sqs"))
    with in_process_api(stack) as api:
        fanned = submit(api, {"kind": "prime_count", "params": {"n": 10**6}, "chunks": 16})
        chained = submit(
            api,
            {"kind": "sha256_chain", "params": {"seed": "s", "chains": 6, "rounds": 500}},
        )
        # Chunk 3 of the fan-out delivered twice (SQS delivers at least once)
        _, _, works = plan("prime_count", {"n": 10**6}, 16)
        duplicate = {
            "tenant": TENANT,
            "job_id": fanned,
            "chunk": 3,
            "kind": "prime_count",
            "work": works[3],
        }
        run(chunks.publish(COMPUTE, duplicate, id=JobRef(TENANT, fanned).chunk_id(3)))
        # A job with a chunk no worker can run: its work is not numbers. Its record is stored
        # as already running, so the relay leaves its chunks to the test.
        poison = JobRef(TENANT, uuid.uuid4().hex)
        poisoned = poison.id
        running = {"type": "compute", "status": "running", "done": 0, "total": 2}
        run(store.table.create({"pk": poison.pk, "sk": "META", "id": poisoned, **running}))
        for chunk, work in enumerate(({"start": 0, "stop": 10}, {"start": "zero", "stop": 9})):
            payload = {
                "tenant": TENANT,
                "job_id": poisoned,
                "chunk": chunk,
                "kind": "sum_of_squares",
                "work": work,
            }
            run(chunks.publish(COMPUTE, payload, id=poison.chunk_id(chunk)))

        def metas() -> dict[str, Item]:
            return {job_id: meta_of(store, job_id) for job_id in (fanned, chained, poisoned)}

        # When the compute function's event source runs until every job is final and the
        # poison chunk is in the dead-letter queue
        run_event_source(
            stack,
            "ComputeQueue",
            lambda: (
                all(m["status"] in ("succeeded", "failed") for m in metas().values())
                and queue_depth(stack, "ComputeDeadLetterQueue") == 1
            ),
        )
        shown = api.request("GET", f"/jobs/{fanned}").json
    return World(metas(), fanned, chained, poisoned, shown, drain(stack, "ComputeDeadLetterQueue"))


def submit(api: InProcessApi, body: dict[str, Any]) -> str:
    response = api.request("POST", "/jobs/compute", json=body)
    assert response.status == 202, response.text
    job_id: str = response.json["job_id"]
    return job_id


def test_a_job_fanned_out_in_16_chunks_gets_the_exact_result(world: World) -> None:
    meta = world.metas[world.fanned]

    assert (meta["status"], meta.get("error")) == ("succeeded", None)
    assert json.loads(meta["result"]) == 78498  # pi(10^6)
    assert folded(meta) == set(range(16))


def test_a_chunk_delivered_twice_is_counted_once(world: World) -> None:
    meta = world.metas[world.fanned]

    assert (int(meta["done"]), int(meta["total"])) == (16, 16)
    assert json.loads(meta["result"]) == 78498


def test_the_api_shows_the_result_and_the_progress(world: World) -> None:
    assert world.shown["status"] == "succeeded"
    assert world.shown["type"] == "compute"
    assert world.shown["progress"] == {"done": 16, "total": 16}
    assert world.shown["result"] == 78498


def test_a_chain_job_is_parallel_across_chains_and_exact(world: World) -> None:
    meta = world.metas[world.chained]

    assert meta["status"] == "succeeded"
    assert json.loads(meta["result"]) == sha256_chain_reference("s", 6, 500)


def test_a_poison_chunk_fails_its_job_and_ends_in_the_dead_letter_queue(world: World) -> None:
    meta = world.metas[world.poisoned]

    assert meta["status"] == "failed"
    # (Split across the pool's workers, the bad work fails here before reaching one.)
    assert re.match(r"gave up after 5 attempts: chunk 1: (TaskFailed|TypeError)", meta["error"])
    assert [body["payload"]["chunk"] for body in world.dead_letters] == [1]
    assert world.dead_letters[0]["payload"]["job_id"] == world.poisoned


# ------------------------------------------------------------------ the API


@pytest.fixture(scope="module")
def api(session_stack: LocalStack) -> Iterator[InProcessApi]:
    session_stack.create_resources()
    with in_process_api(session_stack) as api:
        yield api


def test_a_compute_job_is_queued_with_one_message_per_chunk(
    api: InProcessApi, local_stack: LocalStack
) -> None:
    drain(local_stack, "ComputeQueue")
    created = api.request(
        "POST", "/jobs/compute", json={"kind": "sum_of_squares", "params": {"n": 1000}, "chunks": 3}
    )
    job_id = created.json["job_id"]
    meta = meta_of(job_store(local_stack), job_id)
    bodies: list[dict[str, Any]] = []

    def relayed() -> bool:
        bodies.extend(b for b in drain(local_stack, "ComputeQueue") if job_id in b["id"])
        return len(bodies) >= 3

    run_event_source(local_stack, None, relayed)

    assert created.status == 202
    assert created.headers["location"] == f"/jobs/{job_id}"
    assert (meta["type"], meta["status"], int(meta["total"])) == ("compute", "queued", 3)
    assert sorted(body["id"] for body in bodies) == [
        f"T#{TENANT}#JOB#{job_id}.c{n}" for n in range(3)
    ]
    works = sorted((b["payload"]["chunk"], b["payload"]["work"]) for b in bodies)
    assert [work for _, work in works] == plan("sum_of_squares", {"n": 1000}, 3)[2]
    assert {b["type"] for b in bodies} == {COMPUTE}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "bogosort", "params": {"n": 1}}, "body.kind"),
        ({"kind": "prime_count", "params": {"n": 10**11}}, "body.params.n"),
        ({"kind": "prime_count", "params": {"n": True}}, "body.params.n"),
        ({"kind": "prime_count", "params": {"m": 1}}, "body.params.m"),
        ({"kind": "prime_count", "params": {"n": 10}, "chunks": 0}, "body.chunks"),
        ({"kind": "prime_count", "params": {"n": 10}, "chunks": 100_000}, "body.chunks"),
        ({"kind": "prime_count", "params": [1]}, "body.params"),
        ({"kind": "prime_count"}, "body.params"),
    ],
)
def test_bad_params_are_a_problem_naming_the_field(
    api: InProcessApi, body: dict[str, Any], field: str
) -> None:
    response = api.request("POST", "/jobs/compute", json=body)

    assert response.status == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert field in {error["field"] for error in response.json["errors"]}, response.json


# ------------------------------------------------------------------ a chunk, in this process


def settings(**overrides: Any) -> ComputeSettings:
    values: dict[str, Any] = {
        "jobs_table": "unused",
        "queue_url": "http://unused",
        "max_attempts": 5,
        "workers": 1,
        "margin_s": 1.0,
        "retry_base_s": 0.0,
        "retry_max_s": 0.0,
    }
    return ComputeSettings(**(values | overrides))


class NoComputing(ProcessPool):
    """A pool that must not be used."""

    async def map(self, *args: Any, **kwargs: Any) -> list[Any]:
        raise AssertionError("a chunk was computed")


def create_job(store: JobStore, kind: str, params: dict[str, Any], chunks: int) -> tuple[str, Any]:
    """A new job of :data:`TENANT`'s: its id and its chunks' work."""
    _, _, works = plan(kind, params, chunks)
    job = JobRef(TENANT, uuid.uuid4().hex)
    run(store.create(job, "compute", {"kind": kind, "params": params}, total=len(works)))
    return job.id, works


def deliver(runner: ChunkRunner, job_id: str, chunk: int, work: Any, receive_count: int = 1) -> Any:
    payload = {
        "tenant": TENANT,
        "job_id": job_id,
        "chunk": chunk,
        "kind": "sum_of_squares",
        "work": work,
    }
    envelope = Envelope(COMPUTE, JobRef(TENANT, job_id).chunk_id(chunk), payload)
    return run(runner(envelope, RecordContext("m", receive_count, {}, Deadline.never())))


class VisibilityRecorder:
    """Stands in for SQS: records ChangeMessageVisibility calls."""

    def __init__(self) -> None:
        self.visibility: list[tuple[str, int]] = []

    def change_message_visibility(self, **params: Any) -> dict[str, Any]:
        self.visibility.append((params["ReceiptHandle"], params["VisibilityTimeout"]))
        return {}


def process(
    runner: ChunkRunner,
    job_id: str,
    chunk: int,
    work: Any,
    *,
    receive_count: int,
    max_attempts: int,
) -> list[tuple[str, int]]:
    """The chunk's message, received ``receive_count`` times, through the consumer as the
    function wires it (the runner's give-up, the settings' maxReceiveCount, a retry policy)
    on an SQS that records the visibility timeouts set: those."""
    payload = {
        "tenant": TENANT,
        "job_id": job_id,
        "chunk": chunk,
        "kind": "sum_of_squares",
        "work": work,
    }
    message = {
        "messageId": f"m{receive_count}",
        "receiptHandle": f"rh{receive_count}",
        "body": Envelope(COMPUTE, JobRef(TENANT, job_id).chunk_id(chunk), payload).to_json(),
        "attributes": {"ApproximateReceiveCount": str(receive_count)},
    }
    sqs = VisibilityRecorder()
    processor = SqsProcessor(
        {COMPUTE: runner},
        give_up={COMPUTE: runner.give_up},
        max_receive_count=max_attempts,
        retry=RetryPolicy("http://sqs.local/q", base_s=2, max_s=60),
        sqs_client=sqs,
    )
    response = run(processor.process({"Records": [message]}))
    assert response == {"batchItemFailures": [{"itemIdentifier": message["messageId"]}]}
    return sqs.visibility


@pytest.fixture
def store(local_stack: LocalStack) -> JobStore:
    return job_store(local_stack)


def test_a_chunk_folded_before_is_not_computed_again(store: JobStore) -> None:
    job_id, works = create_job(store, "sum_of_squares", {"n": 100}, chunks=2)
    runner = ChunkRunner(store, settings(), ProcessPool(1))

    first = deliver(runner, job_id, 0, works[0])
    again = deliver(ChunkRunner(store, settings(), NoComputing(1)), job_id, 0, works[0])
    meta = meta_of(store, job_id)

    assert first == {"status": "running", "done": 1, "total": 2}
    assert again == {"status": "running", "duplicate": True}
    assert (int(meta["done"]), json.loads(meta["acc"])) == (1, sum(i * i for i in range(50)))


def test_folds_that_race_are_all_counted_once(store: JobStore) -> None:
    job_id, works = create_job(store, "sum_of_squares", {"n": 10_000}, chunks=12)
    kind = get_kind("sum_of_squares")

    async def fold_all() -> None:
        await asyncio.gather(
            *(
                store.fold(JobRef(TENANT, job_id), chunk, kind.run(work), kind.reduce, kind.finish)
                for chunk, work in enumerate(works)
            )
        )

    run(fold_all())
    meta = meta_of(store, job_id)

    assert (meta["status"], int(meta["done"])) == ("succeeded", 12)
    assert json.loads(meta["result"]) == sum(i * i for i in range(10_000))
    assert folded(meta) == set(range(12))


def test_a_failing_chunk_is_retried_with_backoff_and_its_last_attempt_fails_the_job(
    store: JobStore,
) -> None:
    job_id, _ = create_job(store, "sum_of_squares", {"n": 100}, chunks=2)
    runner = ChunkRunner(store, settings(), ProcessPool(1))
    bad = {"start": 0, "stop": "ten"}

    [(_, early)] = process(runner, job_id, 1, bad, receive_count=2, max_attempts=3)
    running = meta_of(store, job_id)["status"]
    [(_, last)] = process(runner, job_id, 1, bad, receive_count=3, max_attempts=3)
    meta = meta_of(store, job_id)

    assert early >= 1  # the consumer's backoff (at least half of 2 s x 2)
    assert running == "queued"
    assert last == 0  # straight on to the dead-letter queue
    assert meta["status"] == "failed"
    assert meta["error"].startswith("gave up after 3 attempts: chunk 1: TaskFailed")


def test_a_chunk_of_an_unknown_kind_fails_its_job_at_once(store: JobStore) -> None:
    job_id, _ = create_job(store, "sum_of_squares", {"n": 100}, chunks=1)
    runner = ChunkRunner(store, settings(), NoComputing(1))

    outcome = run(runner.run_chunk(JobRef(TENANT, job_id), 0, "bogosort", {}, Deadline.never()))
    meta = meta_of(store, job_id)

    assert outcome == {"status": "failed"}
    assert meta["status"] == "failed"
    assert "unknown kind 'bogosort'" in meta["error"]


# ------------------------------------------------------------------ sam local invoke events


def invoke(stack: LocalStack, name: str) -> Any:
    event = json.loads((EVENTS / name).read_text())

    async def once() -> Any:
        pool = FunctionPool(stack.local_function("ComputeFunction"))
        try:
            return (await pool.invoke(event)).result
        finally:
            await pool.aclose()

    return asyncio.run(once())


def test_the_direct_event_computes_the_whole_job_in_one_invocation(
    local_stack: LocalStack,
) -> None:
    assert invoke(local_stack, "invoke-compute-prime-count.json") == {
        "kind": "prime_count",
        "result": 664579,
    }


def test_the_sqs_chunk_event_runs_in_the_compute_function(local_stack: LocalStack) -> None:
    # The chunk names a job that does not exist here: dropped, not failed.
    assert invoke(local_stack, "sqs-compute-chunk.json") == {"batchItemFailures": []}
