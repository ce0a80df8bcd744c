"""The Jobs API on the local stack: the API function in this process creates fetch jobs in the
JobsTable, and the relay publishes their first part on the JobsQueue (read back here, as the
jobs function would receive it); results written as the jobs function writes them are paged."""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any, TypeVar

import pytest

from api.errors import BadRequest
from api.jobs.service import JobsService
from lambdaloop.jobs import JobRef, JobStore
from lambdaloop.queue import Envelope
from lambdaloop.store import Table
from lambdaloop_local.stack import LocalStack
from support import (
    TENANT,
    ApiResponse,
    InProcessApi,
    in_process_api,
    job_store,
    run,
    run_event_source,
)

T = TypeVar("T")
URLS = ["https://example.com/", "https://example.org/a?b=c", "http://example.net/"]


@pytest.fixture(scope="module")
def api(session_stack: LocalStack) -> Iterator[InProcessApi]:
    session_stack.create_resources()
    with in_process_api(session_stack) as api:
        yield api


@pytest.fixture
def store(local_stack: LocalStack) -> JobStore:
    return job_store(local_stack)


def create_job(api: InProcessApi, body: dict[str, Any], **kwargs: Any) -> ApiResponse:
    return api.request("POST", "/jobs/fetch", json=body, **kwargs)


def take_message(stack: LocalStack, envelope_id: str) -> dict[str, Any]:
    """The JobsQueue message with this envelope id, once the relay has brought it there
    (deleted once read); others are left."""
    sqs = stack.aws_client("sqs")
    url = stack.resources.refs["JobsQueue"]
    found: list[dict[str, Any]] = []

    def arrived() -> bool:
        for _ in range(10):  # a receive samples the queue: a few, to see every message
            messages = sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                VisibilityTimeout=0,
                WaitTimeSeconds=0,
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            for message in messages:
                if json.loads(message["Body"]).get("id") == envelope_id:
                    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
                    found.append(message)
                    return True
        return False

    run_event_source(stack, None, arrived)
    return found[0]


def assert_problem(response: ApiResponse, status: int, field: str) -> None:
    assert response.status == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    fields = {e["field"] for e in response.json.get("errors", [])} | {response.json.get("field")}
    assert field in fields, response.json


def test_a_fetch_job_is_created_queued_and_its_first_part_published(
    api: InProcessApi, local_stack: LocalStack
) -> None:
    correlation_id = f"corr-{uuid.uuid4().hex[:8]}"

    created = create_job(
        api, {"urls": URLS, "concurrency": 3}, headers={"x-correlation-id": correlation_id}
    )
    job_id = created.json["job_id"]
    message = take_message(local_stack, f"T#{TENANT}#JOB#{job_id}.0")
    job = api.request("GET", created.headers["location"])

    assert created.status == 202, created.text
    assert created.json == {"job_id": job_id, "status": "queued"}
    assert created.headers["location"] == f"/jobs/{job_id}"
    assert re.fullmatch(r"[0-9a-f]{32}", job_id)
    assert Envelope.from_json(message["Body"]) == Envelope(
        type="job.fetch",
        id=f"T#{TENANT}#JOB#{job_id}.0",
        payload={"tenant": TENANT, "job_id": job_id, "part": 0},
    )
    assert message["MessageAttributes"]["correlation_id"]["StringValue"] == correlation_id
    assert job.status == 200, job.text
    assert job.json == {
        "id": job_id,
        "type": "fetch",
        "status": "queued",
        "progress": {"done": 0, "total": 3},
        "error": None,
        "created_at": job.json["created_at"],
        "updated_at": job.json["created_at"],
        "result": {"results": [], "next_cursor": None},
    }


def test_the_job_keeps_the_urls_and_the_default_concurrency(
    api: InProcessApi, local_stack: LocalStack, store: JobStore
) -> None:
    created = create_job(api, {"urls": URLS[:1]})
    job_id = created.json["job_id"]
    take_message(local_stack, f"T#{TENANT}#JOB#{job_id}.0")

    meta = run(store.get(JobRef(TENANT, job_id), consistent=True))

    assert created.status == 202, created.text
    assert meta is not None
    assert meta["params"] == {"urls": URLS[:1], "concurrency": 10, "store_bodies": False}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param(
            {"urls": ["https://example.com/", "ftp://example.com/f"]}, "body.urls.1", id="ftp"
        ),
        pytest.param({"urls": ["example.com/page"]}, "body.urls.0", id="relative"),
        pytest.param(
            {"urls": [f"https://example.com/{n}" for n in range(1001)]}, "body.urls", id="1001-urls"
        ),
        pytest.param({"urls": []}, "body.urls", id="no-urls"),
        pytest.param({"urls": URLS, "concurrency": 0}, "body.concurrency", id="concurrency-0"),
        pytest.param({"urls": URLS, "concurrency": 201}, "body.concurrency", id="concurrency-201"),
        pytest.param({"urls": URLS, "concurrency": "5"}, "body.concurrency", id="concurrency-str"),
        pytest.param({"urls": ["https://example.com/" + "a" * 2048]}, "body.urls.0", id="long-url"),
        pytest.param({"urls": URLS, "extra": 1}, "body.extra", id="extra-field"),
        pytest.param({}, "body.urls", id="no-body-fields"),
    ],
)
def test_bad_input_is_a_problem_naming_the_field(
    api: InProcessApi, body: dict[str, Any], field: str
) -> None:
    assert_problem(create_job(api, body), 422, field)


def test_a_url_at_the_metadata_service_is_refused_with_the_reason(api: InProcessApi) -> None:
    urls = ["https://example.com/", "https://example.org/", "https://example.net/"]

    response = create_job(api, {"urls": [*urls, "http://169.254.169.254/latest/meta-data/"]})

    # IP literals are refused by the URL's pattern (the schema's): only host names, and
    # loopback in local mode; what a name resolves to is checked at connect time.
    assert_problem(response, 422, "body.urls.3")
    [error] = response.json["errors"]
    assert "host name" in error["message"]


def test_an_unknown_job_is_not_found(api: InProcessApi) -> None:
    response = api.request("GET", f"/jobs/{uuid.uuid4().hex}")

    assert response.status == 404
    assert response.headers["content-type"] == "application/problem+json"


def test_results_are_paged_in_index_order_following_next_cursor(
    api: InProcessApi, local_stack: LocalStack, store: JobStore
) -> None:
    urls = [f"https://example.com/{n}" for n in range(5)]
    job_id = create_job(api, {"urls": urls}).json["job_id"]
    take_message(local_stack, f"T#{TENANT}#JOB#{job_id}.0")
    job = JobRef(TENANT, job_id)
    # As the jobs function would: take the job, then store results in batches.
    run(store.start(job))
    run(store.save_results(job, [(n, {"url": urls[n], "status": 200}) for n in (3, 0, 1)], 3))
    run(store.save_results(job, [(n, {"url": urls[n], "status": 404}) for n in (4, 2)], 5))

    pages: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(10):
        query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        response = api.request("GET", f"/jobs/{job_id}", query=query)
        assert response.status == 200, response.text
        pages.append(response.json)
        cursor = response.json["result"]["next_cursor"]
        if cursor is None:
            break

    assert [len(page["result"]["results"]) for page in pages] == [2, 2, 1]
    results = [result for page in pages for result in page["result"]["results"]]
    assert [r["index"] for r in results] == [0, 1, 2, 3, 4]
    assert [r["url"] for r in results] == urls
    assert results[2]["status"] == 404
    assert pages[-1]["status"] == "running"
    assert pages[-1]["progress"] == {"done": 5, "total": 5}


@pytest.mark.parametrize("cursor", ["abc", "-1", "1.5", "9" * 20])
def test_a_bad_cursor_is_a_bad_request(api: InProcessApi, cursor: str) -> None:
    response = api.request("GET", f"/jobs/{uuid.uuid4().hex}", query=f"cursor={cursor}")

    assert_problem(response, 400, "query.cursor")


@pytest.mark.parametrize("limit", ["0", "501"])
def test_a_limit_out_of_range_is_a_problem(api: InProcessApi, limit: str) -> None:
    response = api.request("GET", f"/jobs/{uuid.uuid4().hex}", query=f"limit={limit}")

    assert_problem(response, 422, "query.limit")


def test_a_job_can_keep_bodies_and_each_result_links_its_body(
    api: InProcessApi, local_stack: LocalStack, store: JobStore
) -> None:
    job_id = create_job(api, {"urls": URLS[:2], "store_bodies": True}).json["job_id"]
    take_message(local_stack, f"T#{TENANT}#JOB#{job_id}.0")
    job = JobRef(TENANT, job_id)
    meta = run(store.get(job, consistent=True))
    # As the jobs function would: the body first, then the result naming it.
    bucket = local_stack.resources.refs["JobResultsBucket"]
    key = f"jobs/{TENANT}/{job_id}/abc"
    local_stack.aws_client("s3").put_object(Bucket=bucket, Key=key, Body=b"<html>hi</html>")
    run(store.start(job))
    run(store.save_results(job, [(0, {"url": URLS[0], "body_key": key}), (1, {})], 2))

    results = api.request("GET", f"/jobs/{job_id}").json["result"]["results"]
    with urllib.request.urlopen(results[0]["body_url"], timeout=5) as download:
        downloaded = download.read()

    assert meta is not None
    assert meta["params"]["store_bodies"] is True
    assert "body_key" not in results[0]
    assert "X-Amz-Signature=" in results[0]["body_url"]
    assert downloaded == b"<html>hi</html>"
    assert "body_url" not in results[1]


def test_bodies_are_refused_where_the_stack_has_no_bucket(local_stack: LocalStack) -> None:
    service = JobsService(
        JobStore(Table(local_stack.resources.refs["JobsTable"])), in_flight_limit=10, bodies=None
    )

    with pytest.raises(BadRequest) as refused:
        run(service.fetch(JobRef(TENANT, uuid.uuid4().hex), URLS, 1, True, None))

    assert refused.value.extensions == {"field": "body.store_bodies"}


def test_store_bodies_must_be_a_boolean(api: InProcessApi) -> None:
    response = create_job(api, {"urls": URLS, "store_bodies": "yes"})

    assert_problem(response, 422, "body.store_bodies")
