"""Fetch jobs: the jobs function end to end on the local stack (real worker processes fed by
the emulator's SQS event source, results in moto's jobs table) against a real loopback HTTP
server that counts every request; and a part's runner in this process for the cases the end
to end run does not reach (redelivery, batching, the deadline's hard stop, last attempt)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from aiohttp import web

from jobs.runner import FetchJobRunner
from jobs.settings import JobsSettings
from lambdaloop.blobs import Bucket
from lambdaloop.consumer import SqsProcessor
from lambdaloop.errors import DependencyError, DependencyUnavailable
from lambdaloop.fetch import Fetcher, FetchOptions, FetchResult
from lambdaloop.jobs import JobRef, JobStore
from lambdaloop.messages import FETCH
from lambdaloop.queue import Envelope, Publisher
from lambdaloop.runtime import Deadline, get_loop
from lambdaloop.ssrf import Policy, aclose_sessions
from lambdaloop.store import Table
from lambdaloop_local.stack import LocalStack
from support import (
    TENANT,
    LoopbackHttpServer,
    attached_stack,
    in_process_api,
    job_store,
    run,
    run_event_source,
)

T = TypeVar("T")

#: No URL is started past the first wave once 5 + 115 s are not left, which the 120 s
#: function never has: each part fetches `concurrency` URLs, then continues in the next. The
#: hard stop (115 s left) leaves 4.5 s for a wave of loopback requests.
JOBS_ENV = {
    "FETCH_TIMEOUT_S": "5",
    "FETCH_CONNECT_TIMEOUT_S": "1",
    "FETCH_MAX_ATTEMPTS": "1",
    "JOBS_PART_MARGIN_S": "115",
}
BLOCKED = "http://169.254.169.254/latest/meta-data/"


def body(name: str) -> bytes:
    return f"the body of {name}\n".encode() * 50


def sha256(name: str) -> str:
    return hashlib.sha256(body(name)).hexdigest()


class Site:
    """``/body/{name}`` answers a known body, ``/missing`` 404, ``/hang`` never (until the
    server closes); ``hits`` counts the requests per path."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.server = LoopbackHttpServer(self._routes)

    def _routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/body/{name}", self._body)
        router.add_get("/missing", self._missing)
        router.add_get("/hang", self._hang)

    async def _body(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        return web.Response(body=body(request.match_info["name"]), content_type="text/plain")

    async def _missing(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        return web.Response(status=404, text="no")

    async def _hang(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        await self.server.closing.wait()
        return web.Response(status=503)

    def __enter__(self) -> Site:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)

    def url(self, path: str) -> str:
        return f"{self.server.url}{path}"


def create_job(
    store: JobStore, urls: list[str], concurrency: int, *, store_bodies: bool = False
) -> JobRef:
    """A new job of :data:`TENANT`'s."""
    job = JobRef(TENANT, uuid.uuid4().hex)
    params = {"urls": urls, "concurrency": concurrency, "store_bodies": store_bodies}
    run(store.create(job, "fetch", params, len(urls)))
    return job


def all_results(store: JobStore, job: JobRef) -> dict[int, dict[str, Any]]:
    items, _ = run(store.results(job, 1000))
    return {int(item["index"]): item for item in items}


# ------------------------------------------------------------------ on the local stack


@pytest.fixture(scope="module")
def stack(session_stack: LocalStack) -> LocalStack:
    """The session's services, with the jobs function's test settings."""
    return attached_stack(session_stack, {"JobsFunction": JOBS_ENV})


def part_record(stack: LocalStack, job_id: str, part: int) -> dict[str, Any] | None:
    """The idempotency record of a part (what its completed run returned), if any."""
    item = (
        stack.aws_client("dynamodb")
        .get_item(
            TableName=stack.resources.refs["IdempotencyTable"],
            Key={"id": {"S": f"T#{TENANT}#JOB#{job_id}.{part}"}},
            ConsistentRead=True,
        )
        .get("Item")
    )
    if item is None:
        return None
    return {
        "status": item["status"]["S"],
        "result": json.loads(item.get("result", {}).get("S", "null")),
    }


@dataclass
class World:
    site: Site
    store: JobStore
    mixed: JobRef
    split: JobRef
    metas: dict[str, dict[str, Any]]
    #: A job submitted through the API (POST /jobs/fetch), and what GET /jobs/{id} showed
    #: once it was done, page by page.
    submitted: str
    pages: list[dict[str, Any]]


@pytest.fixture(scope="module")
def world(stack: LocalStack) -> Iterator[World]:
    stack.create_resources()
    store = job_store(stack)
    publisher = Publisher(stack.resources.refs["JobsQueue"], client=stack.aws_client("sqs"))
    with Site() as site, in_process_api(stack) as api:
        response = api.request(
            "POST",
            "/jobs/fetch",
            json={
                "urls": [site.url(f"/body/api-{n}") for n in range(3)],
                "concurrency": 2,
                "store_bodies": True,
            },
        )
        assert response.status == 202, response.text
        submitted = response.json["job_id"]
        mixed = create_job(
            store,
            [
                site.url("/body/a"),
                site.url("/missing"),
                BLOCKED,
                site.url("/body/b"),
                site.url("/body/a"),
                "ftp://example.com/file",
            ],
            concurrency=10,
        )
        split = create_job(
            store, [site.url(f"/body/{n}") for n in range(5)] + [site.url("/body/0")], 2
        )
        for job in (mixed, split):
            payload = {"tenant": TENANT, "job_id": job.id, "part": 0}
            run(publisher.publish(FETCH, payload, id=job.part_id(0)))

        def metas() -> dict[str, dict[str, Any]]:
            jobs = (mixed, split, JobRef(TENANT, submitted))
            found = {job.id: run(store.get(job, consistent=True)) for job in jobs}
            return {job_id: meta for job_id, meta in found.items() if meta is not None}

        run_event_source(
            stack,
            "JobsQueue",
            lambda: all(m["status"] in ("succeeded", "failed") for m in metas().values()),
        )
        pages = [api.request("GET", f"/jobs/{submitted}", query="limit=2").json]
        while cursor := pages[-1]["result"]["next_cursor"]:
            query = f"limit=2&cursor={cursor}"
            pages.append(api.request("GET", f"/jobs/{submitted}", query=query).json)
        yield World(site, store, mixed, split, metas(), submitted, pages)


def test_every_url_of_a_job_has_its_result_and_the_job_succeeded(world: World) -> None:
    meta = world.metas[world.mixed.id]
    results = all_results(world.store, world.mixed)

    assert (meta["status"], meta["done"], meta["total"], meta.get("error")) == (
        "succeeded",
        6,
        6,
        None,
    )
    assert sorted(results) == [0, 1, 2, 3, 4, 5]
    ok = results[0]
    assert (ok["status"], ok["sha256"], ok["bytes"], ok["error"]) == (
        200,
        sha256("a"),
        len(body("a")),
        None,
    )
    assert ok["content_type"].startswith("text/plain")
    assert results[3]["sha256"] == sha256("b")
    assert (results[1]["status"], results[1]["error"]["code"]) == (404, "http_status")
    assert (results[2]["status"], results[2]["error"]["code"]) == (None, "blocked")
    assert results[2]["attempts"] == 0
    assert results[5]["error"]["code"] == "invalid_url"


def test_a_job_submitted_through_the_api_is_run_and_shown_with_its_results(
    world: World,
) -> None:
    first, *_ = world.pages
    results = [r for page in world.pages for r in page["result"]["results"]]

    assert (first["id"], first["type"], first["status"]) == (world.submitted, "fetch", "succeeded")
    assert first["progress"] == {"done": 3, "total": 3}
    assert [r["index"] for r in results] == [0, 1, 2]
    assert [r["sha256"] for r in results] == [sha256(f"api-{n}") for n in range(3)]
    assert all(r["error"] is None and r["status"] == 200 for r in results)
    assert len(world.pages) == 2
    # The job asked for its bodies: each result links its own
    assert [download(r["body_url"]) for r in results] == [body(f"api-{n}") for n in range(3)]


def download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        data: bytes = response.read()
    return data


def test_a_url_repeated_in_a_job_is_fetched_once_and_stored_at_both_indexes(
    world: World,
) -> None:
    results = all_results(world.store, world.mixed)

    assert world.site.hits["/body/a"] == 1
    assert results[4]["url"] == results[0]["url"]
    assert {k: v for k, v in results[4].items() if k != "index"} == {
        k: v for k, v in results[0].items() if k != "index"
    }


def test_a_job_split_by_the_deadline_continues_part_after_part_fetching_each_url_once(
    world: World, stack: LocalStack
) -> None:
    meta = world.metas[world.split.id]
    results = all_results(world.store, world.split)
    parts = [part_record(stack, world.split.id, n) for n in range(20)]
    ran = [p["result"] for p in parts if p is not None]

    assert (meta["status"], meta["done"], meta["total"]) == ("succeeded", 6, 6)
    assert [results[n]["sha256"] for n in range(6)] == [sha256(str(n)) for n in (0, 1, 2, 3, 4, 0)]
    assert [world.site.hits[f"/body/{n}"] for n in range(5)] == [1, 1, 1, 1, 1]
    # At most one wave of two URLs (concurrency 2) per part, so three parts at least; a part
    # on a slow machine may store none before its stop. Parts ran one after the other.
    assert parts[: len(ran)] == [p for p in parts if p is not None]
    assert len(ran) >= 3
    assert [r["status"] for r in ran] == ["continued"] * (len(ran) - 1) + ["succeeded"]
    done = [r["done"] for r in ran]
    assert done == sorted(done)
    assert done[-1] == 6


# ------------------------------------------------------------------ in this process


class Recorder:
    """The continuations published (instead of the queue)."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any], str | None]] = []

    async def publish(self, type: str, payload: dict[str, Any], *, id: str | None = None) -> str:
        self.published.append((type, payload, id))
        return id or ""


class CountingStore(JobStore):
    """Records every save_results call: its size, the progress set, and when."""

    calls: list[tuple[int, int, float]]

    async def save_results(
        self, job: JobRef, results: Iterable[tuple[int, Mapping[str, Any]]], done: int
    ) -> None:
        batch = list(results)
        self.calls.append((len(batch), done, time.monotonic()))
        await super().save_results(job, batch, done)


def settings(**overrides: Any) -> JobsSettings:
    values: dict[str, Any] = {
        "jobs_table": "unused",
        "idempotency_table": "unused",
        "queue_url": "http://unused",
        "max_attempts": 5,
        "part_margin_s": 5.0,
        "flush_every": 50,
        "flush_interval_s": 1.0,
        "fetch_connect_timeout_s": 1.0,
        "fetch_timeout_s": 5.0,
        "fetch_max_body_bytes": 1024 * 1024,
        "fetch_max_attempts": 1,
        "idempotency_expires_s": 3600,
    }
    return JobsSettings(**(values | overrides))


@pytest.fixture
def site() -> Iterator[Site]:
    with Site() as server:
        yield server
    run(aclose_sessions())


@pytest.fixture
def store(local_stack: LocalStack) -> CountingStore:
    counting = CountingStore(
        Table(local_stack.resources.refs["JobsTable"], client=local_stack.aws_client("dynamodb"))
    )
    counting.calls = []
    return counting


def runner(
    store: JobStore, recorder: Recorder, bodies: Bucket | None = None, **overrides: Any
) -> FetchJobRunner:
    return FetchJobRunner(
        store, recorder, settings(**overrides), policy=Policy.for_user_urls(True), bodies=bodies
    )


@pytest.fixture
def bucket(local_stack: LocalStack) -> Bucket:
    name = local_stack.resources.refs["JobResultsBucket"]
    return Bucket(name, client=local_stack.aws_client("s3"))


def body_prefix(job: JobRef) -> str:
    """Where a job's bodies are stored: under its tenant (no character of TENANT is escaped)."""
    return f"jobs/{TENANT}/{job.id}/"


def stored_keys(stack: LocalStack, bucket: Bucket, job: JobRef) -> set[str]:
    listed = stack.aws_client("s3").list_objects_v2(Bucket=bucket.name, Prefix=body_prefix(job))
    return {item["Key"] for item in listed.get("Contents", [])}


def test_bodies_are_stored_once_each_before_the_results_that_name_them(
    site: Site, store: CountingStore, bucket: Bucket, local_stack: LocalStack
) -> None:
    urls = [site.url("/body/a"), site.url("/body/b"), site.url("/body/a"), site.url("/missing")]
    job = create_job(store, urls, concurrency=4, store_bodies=True)

    outcome = run(runner(store, Recorder(), bucket).run_part(job, 0, Deadline.never()))
    results = all_results(store, job)

    assert outcome == {"status": "succeeded", "done": 4}
    assert site.hits == {"/body/a": 1, "/body/b": 1, "/missing": 1}
    keys = [results[index]["body_key"] for index in range(4)]
    assert keys[0] == keys[2] == f"{body_prefix(job)}{sha256('a')}"
    assert keys[1] == f"{body_prefix(job)}{sha256('b')}"
    assert keys[3] == f"{body_prefix(job)}{hashlib.sha256(b'no').hexdigest()}"  # a 404 has a body
    assert stored_keys(local_stack, bucket, job) == set(keys)
    assert run(bucket.get(keys[0])) == body("a")
    assert run(bucket.get(keys[3])) == b"no"


def test_a_failed_upload_fails_the_part_and_stores_no_result_naming_a_missing_body(
    site: Site, store: CountingStore, local_stack: LocalStack
) -> None:
    job = create_job(store, [site.url("/body/u0"), site.url("/body/u1")], 2, store_bodies=True)
    missing = Bucket("no-such-bucket", client=local_stack.aws_client("s3"))

    with pytest.raises(DependencyError, match="NoSuchBucket"):
        run(runner(store, Recorder(), missing).run_part(job, 0, Deadline.never()))
    meta = run(store.get(job, consistent=True))

    assert all_results(store, job) == {}
    assert meta is not None
    assert (meta["status"], meta["done"]) == ("running", 0)


def test_a_job_asking_for_bodies_fails_where_there_is_no_bucket(store: CountingStore) -> None:
    job = create_job(store, ["http://127.0.0.1:9/x"], 1, store_bodies=True)

    outcome = run(runner(store, Recorder()).run_part(job, 0, Deadline.never()))
    meta = run(store.get(job, consistent=True))

    assert outcome["status"] == "failed"
    assert meta is not None
    assert meta["error"] == "invalid job: store_bodies: this stack has no results bucket"


def test_a_redelivered_part_fetches_only_the_urls_not_stored_yet(
    site: Site, store: CountingStore
) -> None:
    recorder = Recorder()
    job = create_job(store, [site.url(f"/body/r{n}") for n in range(4)], concurrency=2)
    part = runner(store, recorder, part_margin_s=100.0)
    # The gate is shut at once (104 s < 5 + 100 s left): one wave per run.

    first = run(part.run_part(job, 0, Deadline.after(104)))
    hits_after_first = dict(site.hits)
    again = run(part.run_part(job, 0, Deadline.after(104)))  # the same part, redelivered
    final = run(part.run_part(job, 0, Deadline.after(104)))

    assert first == {"status": "continued", "done": 2}
    assert hits_after_first == {"/body/r0": 1, "/body/r1": 1}
    assert recorder.published == [
        (FETCH, {"tenant": TENANT, "job_id": job.id, "part": 1}, f"T#{TENANT}#JOB#{job.id}.1")
    ]
    assert again == {"status": "succeeded", "done": 4}
    assert final == {"status": "succeeded"}
    assert site.hits == {f"/body/r{n}": 1 for n in range(4)}
    assert [r["sha256"] for r in all_results(store, job).values()] == [
        sha256(f"r{n}") for n in range(4)
    ]


def test_results_are_stored_in_batches_not_one_write_per_url(
    site: Site, store: CountingStore
) -> None:
    job = create_job(store, [site.url(f"/body/n{n}") for n in range(120)], concurrency=20)

    outcome = run(
        runner(store, Recorder(), flush_interval_s=900.0).run_part(job, 0, Deadline.never())
    )
    meta = run(store.get(job, consistent=True))

    assert outcome == {"status": "succeeded", "done": 120}
    assert [(size, done) for size, done, _ in store.calls] == [(50, 50), (50, 100), (20, 120)]
    assert meta is not None
    assert (meta["status"], meta["done"]) == ("succeeded", 120)
    assert len(all_results(store, job)) == 120
    assert sum(site.hits.values()) == 120


def test_a_hanging_url_is_cancelled_at_the_hard_stop_after_the_rest_was_flushed(
    site: Site, store: CountingStore
) -> None:
    recorder = Recorder()
    job = create_job(store, [site.url("/body/h"), site.url("/hang")], concurrency=2)
    part = runner(store, recorder, part_margin_s=100.0, flush_interval_s=0.1)

    outcome = run(part.run_part(job, 3, Deadline.after(101.5)))
    ended = time.monotonic()
    meta = run(store.get(job, consistent=True))

    assert outcome == {"status": "continued", "done": 1}
    # The interval flushed the finished URL while /hang was still awaited
    [(size, done, at)] = store.calls
    assert (size, done) == (1, 1)
    assert ended - at > 0.5
    assert site.hits == {"/body/h": 1, "/hang": 1}
    assert list(all_results(store, job)) == [0]
    assert recorder.published == [
        (FETCH, {"tenant": TENANT, "job_id": job.id, "part": 4}, f"T#{TENANT}#JOB#{job.id}.4")
    ]
    assert meta is not None
    assert (meta["status"], meta["done"]) == ("running", 1)


class BrokenFetcher(Fetcher):
    async def stream(
        self, urls: Iterable[str], options: FetchOptions | None = None
    ) -> AsyncGenerator[FetchResult, None]:
        raise RuntimeError("boom")
        yield  # pragma: no cover - makes this an async generator


def deliver(target: FetchJobRunner, job: JobRef, receive_count: int) -> list[str]:
    """Part 0 of ``job``, received ``receive_count`` times of 5, through the consumer and the
    runner's give-up as the function wires them; the ids of the failed records."""
    payload = {"tenant": job.tenant, "job_id": job.id, "part": 0}
    message = {
        "messageId": f"m{receive_count}",
        "receiptHandle": "rh",
        "body": Envelope(FETCH, job.part_id(0), payload).to_json(),
        "attributes": {"ApproximateReceiveCount": str(receive_count)},
    }
    processor = SqsProcessor({FETCH: target}, give_up={FETCH: target.give_up}, max_receive_count=5)
    response = run(processor.process({"Records": [message]}))
    return [failure["itemIdentifier"] for failure in response["batchItemFailures"]]


def test_an_error_fails_the_record_and_on_the_last_attempt_the_job_too(
    store: CountingStore,
) -> None:
    job = create_job(store, ["http://127.0.0.1:9/x"], concurrency=1)
    broken = FetchJobRunner(
        store, Recorder(), settings(), policy=Policy.for_user_urls(True), fetcher=BrokenFetcher()
    )

    assert deliver(broken, job, receive_count=4) == ["m4"]
    before_last = run(store.get(job, consistent=True))
    assert deliver(broken, job, receive_count=5) == ["m5"]
    after_last = run(store.get(job, consistent=True))

    assert before_last is not None
    assert after_last is not None
    assert before_last["status"] == "running"
    assert (after_last["status"], after_last["error"]) == (
        "failed",
        "gave up after 5 attempts: RuntimeError",
    )
    assert deliver(broken, job, receive_count=1) == []  # a final job: nothing to run


def test_a_missing_job_is_dropped_and_a_job_with_bad_params_fails_at_once(
    store: CountingStore,
) -> None:
    bad = JobRef(TENANT, uuid.uuid4().hex)
    run(store.create(bad, "fetch", {"urls": "http://x", "concurrency": 1}, 1))
    part = runner(store, Recorder())

    missing = run(part.run_part(JobRef(TENANT, "no-such-job"), 0, Deadline.never()))
    invalid = run(part.run_part(bad, 0, Deadline.never()))
    meta = run(store.get(bad, consistent=True))

    assert missing == {"status": "missing"}
    assert invalid["status"] == "failed"
    assert meta is not None
    assert (meta["status"], meta["error"]) == (
        "failed",
        "invalid job: params.urls: expected a list of strings",
    )


class HangingBucket(Bucket):
    """A bucket whose uploads never finish (until cancelled)."""

    async def put(self, key: str, body: bytes, *, content_type: str | None = None) -> None:
        await asyncio.Event().wait()


def test_uploads_cut_by_the_deadline_leave_their_urls_to_the_next_part(
    site: Site, store: CountingStore, bucket: Bucket, local_stack: LocalStack
) -> None:
    recorder = Recorder()
    job = create_job(store, [site.url("/body/h0"), site.url("/body/h1")], 2, store_bodies=True)
    hanging = HangingBucket(bucket.name, client=local_stack.aws_client("s3"))

    # The uploads hang until the part's margin is reached (1.5 s in, ample for two loopback
    # fetches): they are cancelled
    first = run(
        runner(store, recorder, hanging, part_margin_s=100.0).run_part(
            job, 0, Deadline.after(101.5)
        )
    )
    stored_after_first = all_results(store, job)
    again = run(runner(store, recorder, bucket).run_part(job, 1, Deadline.never()))

    assert first == {"status": "continued", "done": 0}
    assert stored_after_first == {}
    assert recorder.published == [
        (FETCH, {"tenant": TENANT, "job_id": job.id, "part": 1}, f"T#{TENANT}#JOB#{job.id}.1")
    ]
    assert again == {"status": "succeeded", "done": 2}
    assert site.hits == {"/body/h0": 2, "/body/h1": 2}  # fetched again: their bodies were lost
    assert stored_keys(local_stack, bucket, job) == {
        f"{body_prefix(job)}{sha256('h0')}",
        f"{body_prefix(job)}{sha256('h1')}",
    }


class FailingStore(CountingStore):
    """Stores nothing: every batch of results fails."""

    async def save_results(
        self, job: JobRef, results: Iterable[tuple[int, Mapping[str, Any]]], done: int
    ) -> None:
        raise DependencyUnavailable("dynamodb", "down")


def test_a_part_that_fails_leaves_no_upload_running(
    site: Site, store: CountingStore, bucket: Bucket, local_stack: LocalStack
) -> None:
    # Given a job whose first URL's upload hangs, and whose second URL times out (no body)
    # half a second later, its result then stored at once into a failing table
    job = create_job(store, [site.url("/body/f0"), site.url("/hang")], 2, store_bodies=True)
    failing = FailingStore(store.table)
    failing.calls = []
    hanging = HangingBucket(bucket.name, client=local_stack.aws_client("s3"))

    with pytest.raises(DependencyUnavailable):
        run(
            runner(failing, Recorder(), hanging, flush_every=1, fetch_timeout_s=0.5).run_part(
                job, 0, Deadline.never()
            )
        )
    left = [task for task in asyncio.all_tasks(get_loop()) if not task.done()]

    assert left == []
