"""Job records on moto's JobsTable: the life of a job and its results, as the API and the
consumers share them."""

from __future__ import annotations

import uuid
from typing import TypeVar

import pytest

from lambdaloop.errors import ConditionFailed
from lambdaloop.jobs import JobRef, JobStore, job_view
from lambdaloop_local.stack import LocalStack
from support import TENANT, job_store, run

T = TypeVar("T")


@pytest.fixture
def store(local_stack: LocalStack) -> JobStore:
    return job_store(local_stack)


def test_a_job_goes_from_queued_to_running_to_final_and_stays_final(store: JobStore) -> None:
    job = JobRef(TENANT, uuid.uuid4().hex)
    run(store.create(job, "fetch", {"urls": ["https://example.com/"]}, total=1))
    queued = run(store.get(job, consistent=True))

    run(store.start(job))
    run(store.save_results(job, [(0, {"status": 200})], done=1))
    run(store.finish(job, "succeeded"))
    run(store.finish(job, "failed", "too late"))  # a final job stays as it is
    final = run(store.get(job, consistent=True))

    assert queued is not None
    assert final is not None
    assert job_view(queued)["status"] == "queued"
    assert job_view(queued)["progress"] == {"done": 0, "total": 1}
    assert queued["params"] == {"urls": ["https://example.com/"]}
    assert job_view(final)["status"] == "succeeded"
    assert job_view(final)["progress"] == {"done": 1, "total": 1}
    assert final.get("error") is None
    with pytest.raises(ConditionFailed):
        run(store.start(job))
    with pytest.raises(ConditionFailed):
        run(store.create(job, "fetch", {}, total=0))


def test_results_are_stored_once_per_index_and_listed_in_order_page_by_page(
    store: JobStore,
) -> None:
    job = JobRef(TENANT, uuid.uuid4().hex)
    run(store.create(job, "fetch", {}, total=12))
    run(store.start(job))

    run(store.save_results(job, [(i, {"n": i}) for i in (11, 0, 5, 3, 10)], done=5))
    # A redelivered part writes some of the same results again: still one per index.
    run(store.save_results(job, [(i, {"n": i}) for i in (5, 3, 1, 2)], done=7))
    pages: list[list[int]] = []
    after = None
    while True:
        items, after = run(store.results(job, 3, after))
        pages.append([item["index"] for item in items])
        if after is None:
            break

    assert run(store.done_indexes(job)) == {0, 1, 2, 3, 5, 10, 11}
    assert [i for page in pages for i in page] == [0, 1, 2, 3, 5, 10, 11]
    assert all(len(page) <= 3 for page in pages)
    meta = run(store.get(job, consistent=True))
    assert meta is not None
    assert job_view(meta)["progress"]["done"] == 7


def test_progress_is_only_saved_for_a_running_job(store: JobStore) -> None:
    job = JobRef(TENANT, uuid.uuid4().hex)
    run(store.create(job, "fetch", {}, total=1))

    with pytest.raises(ConditionFailed):
        run(store.save_results(job, [], done=1))  # never started
    with pytest.raises(ValueError, match="status must be one of"):
        run(store.finish(job, "running"))
