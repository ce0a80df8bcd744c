"""Run one part of a fetch job: fetch the job's URLs not fetched yet, store each result,
and either finish the job or hand the rest to the next part.

A job is ``{"urls": [...], "concurrency": C, "store_bodies": bool}`` (see
:class:`lambdaloop.jobs.JobStore`);
its messages are ``job.fetch`` envelopes ``{"tenant", "job_id", "part"}`` with the id
:meth:`~lambdaloop.jobs.JobRef.part_id` (the idempotency key: a redelivered part whose run
completed is replayed, not run again).

- **Only what is left.** A part fetches the indexes that have no stored result
  (:meth:`~lambdaloop.jobs.JobStore.done_indexes`), so a redelivered or continued part
  never fetches a stored URL again.
- **A URL repeated in a job is fetched once per part**: the unique URLs are streamed and
  each result is stored for every index with that URL (a fetch has no side effect the
  job could want twice, and the indexes then agree).
- **Batched writes.** Results are buffered and stored (BatchWriteItem, progress set) every
  ``flush_every`` results, when the oldest buffered one is ``flush_interval_s`` old, and at
  the end of the part: never one write per URL.
- **Parts.** No URL is started once the invocation has less than ``fetch_timeout_s`` +
  ``part_margin_s`` left, except the first wave (``concurrency`` URLs), which every part
  starts so that a job always progresses. The URLs in flight then finish; any still in
  flight when only ``part_margin_s`` is left are cancelled (the next part fetches them).
  What finished is stored and the next part is published: ``{"status": "continued"}``.
- **Bodies**, for a job with ``store_bodies``: each body read in full is put in the
  results bucket under ``jobs/<tenant>/<job_id>/<sha256>`` (content-addressed: a retried or repeated
  body is one object) before its result, which names it as ``body_key``, is stored; so no
  result points at a missing object. Uploads run ``upload_concurrency`` at a time while the
  fetching goes on; one that fails fails the part, and the next part fetches its URL again.
- **Outcome.** Once every index has a result the job ``succeeded``: a URL's failure (404,
  blocked address, timeout...) is that URL's result, not the job's. Any exception fails the
  record (SQS redelivers it); when the queue's last attempt fails, the consumer calls
  :meth:`FetchJobRunner.give_up`, which marks the job ``failed``. A job whose params are not a list
  of URLs and a concurrency fails at once (retrying would not help).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Protocol, TypeVar

from jobs.settings import JobsSettings
from lambdaloop.blobs import Bucket
from lambdaloop.consumer import RecordContext
from lambdaloop.errors import ConditionFailed
from lambdaloop.fetch import MAX_CONCURRENCY, Fetcher, FetchOptions, FetchResult
from lambdaloop.jobs import FINAL, JobRef, JobStore
from lambdaloop.messages import FetchPart
from lambdaloop.queue import Envelope
from lambdaloop.runtime import Deadline
from lambdaloop.ssrf import Policy

__all__ = ["FetchJobRunner"]

logger = logging.getLogger(__name__)


T = TypeVar("T")


class Continuations(Protocol):
    """What the runner needs of :class:`lambdaloop.queue.Publisher`."""

    async def publish(
        self, type: str, payload: dict[str, Any], *, id: str | None = None
    ) -> str: ...


class InvalidJob(ValueError):
    """The job's params cannot be run (they never will)."""


class FetchJobRunner:
    """The handler of ``job.fetch`` messages."""

    def __init__(
        self,
        jobs: JobStore,
        continuations: Continuations,
        settings: JobsSettings,
        *,
        policy: Policy,
        bodies: Bucket | None = None,
        fetcher: Fetcher | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._jobs = jobs
        self._bodies = bodies
        self._continuations = continuations
        self._settings = settings
        self._policy = policy
        self._fetcher = fetcher or Fetcher()
        self._clock = clock

    async def __call__(self, envelope: Envelope, context: RecordContext) -> dict[str, Any]:
        message = FetchPart.parse(envelope)
        return await self.run_part(message.job, message.part, context.deadline)

    async def give_up(self, envelope: Envelope, context: RecordContext, error: Exception) -> None:
        """The part's last attempt failed (the consumer's hook): the job is failed."""
        reason = f"gave up after {context.receive_count} attempts: {type(error).__name__}"
        await self._jobs.give_up(FetchPart.parse(envelope).job, reason)

    async def run_part(self, ref: JobRef, part: int, deadline: Deadline) -> dict[str, Any]:
        """Run part ``part`` of the job until it is done or ``deadline`` is near."""
        job = await self._jobs.get(ref, consistent=True)
        if job is None:
            logger.warning("job %s: no record (expired?); part %d dropped", ref, part)
            return {"status": "missing"}
        if job["status"] in FINAL:
            return {"status": job["status"]}
        try:
            urls, concurrency, store_bodies = _params(job.get("params"))
            if store_bodies and self._bodies is None:
                raise InvalidJob("store_bodies: this stack has no results bucket")
        except InvalidJob as exc:
            await self._jobs.give_up(ref, f"invalid job: {exc}")
            return {"status": "failed", "error": f"invalid job: {exc}"}
        try:
            await self._jobs.start(ref)
        except ConditionFailed:  # made final meanwhile, or gone
            latest = await self._jobs.get(ref, consistent=True)
            return {"status": "missing" if latest is None else latest["status"]}
        done = await self._jobs.done_indexes(ref)
        todo: dict[str, list[int]] = {}  # URL -> its indexes without a result (in order)
        for index, url in enumerate(urls):
            if index not in done:
                todo.setdefault(url, []).append(index)
        if todo:
            bodies = self._bodies if store_bodies else None
            await self._fetch(ref, todo, done, concurrency, bodies=bodies, deadline=deadline)
        if todo:  # stopped for the deadline: the next part fetches the rest
            next_part = part + 1
            following = FetchPart(ref, next_part).envelope()
            await self._continuations.publish(following.type, following.payload, id=following.id)
            logger.info(
                "job %s: part %d stored %d of %d; part %d continues",
                ref,
                part,
                len(done),
                len(urls),
                next_part,
            )
            return {"status": "continued", "done": len(done)}
        await self._jobs.finish(ref, "succeeded")
        return {"status": "succeeded", "done": len(done)}

    async def _fetch(
        self,
        ref: JobRef,
        todo: dict[str, list[int]],
        done: set[int],
        concurrency: int,
        *,
        bodies: Bucket | None,
        deadline: Deadline,
    ) -> None:
        """Fetch the URLs of ``todo`` (removing each as its result is stored in ``done``)."""
        settings = self._settings
        max_body = settings.fetch_max_body_bytes
        options = FetchOptions(
            concurrency=concurrency,
            connect_timeout_s=settings.fetch_connect_timeout_s,
            total_timeout_s=settings.fetch_timeout_s,
            # Kept bodies wait in memory for their upload: a smaller cap bounds it.
            max_body_bytes=max_body
            if bodies is None
            else min(max_body, settings.stored_body_max_bytes),
            max_attempts=settings.fetch_max_attempts,
            policy=self._policy,
            keep_body=bodies is not None,
        )
        part = _Part(
            self._jobs,
            ref,
            todo=todo,
            done=done,
            bodies=bodies,
            settings=settings,
            deadline=deadline,
            clock=self._clock,
        )
        stream = self._fetcher.stream(part.urls(concurrency, options.total_timeout_s), options)
        async with contextlib.aclosing(stream) as results:
            step: asyncio.Task[Any] | None = None
            try:
                while True:
                    if step is None:
                        step = asyncio.ensure_future(_next(results))
                    finished, _ = await asyncio.wait({step}, timeout=part.wait_s())
                    if not finished:
                        if part.out_of_time():
                            logger.warning("job %s: deadline near, cancelling the fetches", ref)
                            break
                        await part.flush()  # the interval passed while waiting for a result
                        continue
                    result = step.result()
                    step = None
                    if result is None:
                        break
                    await part.take(result)
            except BaseException:
                await part.abandon()  # the part fails: nothing of it may run on
                raise
            finally:
                if step is not None and not step.done():
                    # Cancels the generator's fetches; it has finished once this returns.
                    step.cancel()
                    await asyncio.wait({step})
        try:
            await part.settle()
        finally:
            await part.flush()  # what was stored in full, even when an upload failed


class _Part:
    """The state of one part's fetching: what is left, what is buffered, when to stop."""

    def __init__(
        self,
        jobs: JobStore,
        ref: JobRef,
        *,
        todo: dict[str, list[int]],
        done: set[int],
        bodies: Bucket | None,
        settings: JobsSettings,
        deadline: Deadline,
        clock: Callable[[], float],
    ) -> None:
        self._jobs = jobs
        self._ref = ref
        self._todo = todo
        self._done = done
        self._bodies = bodies
        # Uploads running or failed, with the URL and indexes of their result (done ones
        # leave): what a failed or cut upload puts back in ``todo``.
        self._uploads: dict[asyncio.Task[None], tuple[str, list[int]]] = {}
        self._upload_slots = asyncio.Semaphore(settings.upload_concurrency)
        self._settings = settings
        self._deadline = deadline
        self._clock = clock
        self._buffer: list[tuple[int, dict[str, Any]]] = []
        self._oldest = 0.0  # when the oldest buffered result arrived

    def urls(self, concurrency: int, fetch_timeout_s: float) -> Iterator[str]:
        """The URLs to start; the stream pulls the next as a slot frees, so ending early is
        "start no more" (the first wave always starts: every part progresses)."""
        urls = list(self._todo)
        no_start = fetch_timeout_s + self._settings.part_margin_s
        for started, url in enumerate(urls):
            if started >= concurrency and self._deadline.remaining() < no_start:
                logger.info("job %s: deadline near, %d URL(s) left", self._ref, len(urls) - started)
                return
            yield url

    def out_of_time(self) -> bool:
        return self._deadline.remaining() <= self._settings.part_margin_s

    def wait_s(self) -> float | None:
        """How long to wait for the next result before flushing or stopping."""
        wait = self._deadline.remaining() - self._settings.part_margin_s
        if self._buffer:
            wait = min(wait, self._oldest + self._settings.flush_interval_s - self._clock())
        elif self._uploads:  # their results join the buffer when they land
            wait = min(wait, self._settings.flush_interval_s)
        return None if math.isinf(wait) else max(0.0, wait)

    async def take(self, result: FetchResult) -> None:
        """Buffer the result for every index of its URL (once its body is stored, when it
        has one to store); flush when it is time."""
        indexes = self._todo.pop(result.url, [])
        stored = result.to_dict()
        if self._bodies is not None and result.body is not None and result.sha256:
            stored["body_key"] = f"{self._ref.object_prefix}{result.sha256}"
            # Waiting for a slot holds the stream back: bodies in memory stay bounded.
            await self._upload_slots.acquire()
            task = asyncio.create_task(
                self._upload(self._bodies, result.body, result.content_type, stored, indexes)
            )
            self._uploads[task] = (result.url, indexes)
            task.add_done_callback(self._landed)
        else:
            self._buffer_results(indexes, stored)
        if self._buffer and (
            len(self._buffer) >= self._settings.flush_every
            or self._clock() - self._oldest >= self._settings.flush_interval_s
        ):
            await self.flush()

    async def _upload(
        self,
        bucket: Bucket,
        body: bytes,
        content_type: str | None,
        stored: dict[str, Any],
        indexes: list[int],
    ) -> None:
        try:
            await bucket.put(stored["body_key"], body, content_type=content_type)
        finally:
            self._upload_slots.release()
        self._buffer_results(indexes, stored)

    def _landed(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is None:
            del self._uploads[task]

    def _buffer_results(self, indexes: list[int], stored: dict[str, Any]) -> None:
        if not self._buffer:
            self._oldest = self._clock()
        self._buffer.extend((index, stored) for index in indexes)

    async def abandon(self) -> None:
        """Cancel the uploads and wait for them to unwind (the part is failing: its record
        comes back, and whatever was not stored is fetched again)."""
        tasks = list(self._uploads)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def settle(self) -> None:
        """Wait for the uploads still running, up to the part's margin before the deadline,
        and cancel the rest. The URL of an upload that failed or was cut goes back to
        ``todo`` (the next part fetches it again); then the first failure is raised."""
        tasks = list(self._uploads)
        if not tasks:
            return
        left = self._deadline.remaining() - self._settings.part_margin_s
        await asyncio.wait(tasks, timeout=None if math.isinf(left) else max(0.0, left))
        for task in tasks:
            task.cancel()  # no-op for those done
        failure: BaseException | None = None
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        for task, outcome in zip(tasks, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                url, indexes = self._uploads.pop(task)
                self._todo[url] = indexes
                if failure is None and not isinstance(outcome, asyncio.CancelledError):
                    failure = outcome
        if failure is not None:
            raise failure

    async def flush(self) -> None:
        if not self._buffer:
            return
        indexes = {index for index, _ in self._buffer}
        await self._jobs.save_results(self._ref, self._buffer, done=len(self._done | indexes))
        self._done.update(indexes)
        self._buffer.clear()


async def _next(iterator: AsyncIterator[T]) -> T | None:
    return await anext(iterator, None)


def _params(params: object) -> tuple[list[str], int, bool]:
    if not isinstance(params, dict):
        raise InvalidJob("params: expected an object")
    urls, concurrency = params.get("urls"), params.get("concurrency")
    if not isinstance(urls, list) or not all(isinstance(url, str) for url in urls):
        raise InvalidJob("params.urls: expected a list of strings")
    if type(concurrency) is not int or not 1 <= concurrency <= MAX_CONCURRENCY:
        raise InvalidJob(f"params.concurrency: expected an integer from 1 to {MAX_CONCURRENCY}")
    store_bodies = params.get("store_bodies", False)
    if type(store_bodies) is not bool:
        raise InvalidJob("params.store_bodies: expected a boolean")
    return urls, concurrency, store_bodies
