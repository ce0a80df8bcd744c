"""The SQS publisher: 1,000 messages with batched sends against one send per message, the
HTTP requests counted.

One run starts the local stack's AWS side (moto in server mode on a free port, in its own
child process with the stack's patches, the template's resources created), points the layer
at it the way ``make dev`` does (``AWS_ENDPOINT_URL``, region, test credentials) and sends
1,000 envelopes (``type`` ``user.created``, a small payload, a ``correlation_id`` message
attribute) to NotifyQueue in each of these ways:

- ``publish_many``: one :meth:`~lambdaloop.queue.Publisher.publish_many` call with the 1,000
  messages: cut into SendMessageBatch calls of 10, sent concurrently;
- ``publish, awaited in turn``: 1,000 :meth:`~lambdaloop.queue.Publisher.publish` calls, each
  awaited before the next (one SendMessageBatch of one entry each);
- ``publish, gathered``: the same 1,000 calls started at once (``asyncio.gather``);
- ``boto3 send_message loop``: a plain boto3 client (default configuration), 1,000
  SendMessage calls one after the other, as a seed-tutorial function does;
- ``boto3 send_message_batch loop``: the same client, 100 SendMessageBatch calls of 10 one
  after the other: batching without the concurrency.

The Publisher uses the layer's own client (:func:`~lambdaloop.clients.aws_client`: adaptive
retries, 32 connections) and thread pool, on the environment's loop. Requests are counted with
a botocore ``before-send`` hook on each client, so a retry counts as a request too. After each
timed run (outside the clock) the queue must hold exactly the 1,000 messages; it is then purged
(moto's 60-second purge limit is turned off for the bench). Peers run round-robin (the one
going first rotates) after an uncounted warm-up run of 20 messages each.

Plain moto makes every message sent cost O(queue depth) (its queue counters scan every
message, and SendMessage reads them); the stack's moto child indexes its queues
(:mod:`lambdaloop_local.moto_sqs`), so a run times the client, not moto's O(n^2).

moto shares this machine's cores with the client, and the loopback round trip is far
shorter than SQS's. ``--rtt-ms N`` adds N ms to every request (a
sleep in the hook, on the sending thread) to see what concurrency is worth against a network.

Run it with ``make bench`` or, from any directory, ``.venv/bin/python bench/publisher.py``
(``--runs N`` for more runs, ``--messages N`` for another count, ``--json`` for the raw
numbers too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from benchkit import BenchError, import_paths, p90, quiet_logs

if TYPE_CHECKING:
    from lambdaloop.queue import OutgoingMessage, Publisher
    from lambdaloop_local.stack import LocalStack


MESSAGES = 1_000
MESSAGE_TYPE = "user.created"
CORRELATION_ID = "bench-correlation"
#: SendMessageBatch's limit: the fewest requests 1,000 messages can take.
BATCH = 10
#: Messages of each peer's uncounted warm-up run (clients built, connections and threads up).
WARMUP_MESSAGES = 20


# ----------------------------------------------------------------------------- counting


class RequestCounter:
    """Counts a client's HTTP requests by operation (botocore ``before-send``, every attempt),
    optionally sleeping ``rtt_s`` on the sending thread to stand for a network round trip."""

    def __init__(self, client: Any, rtt_s: float) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._rtt_s = rtt_s
        client.meta.events.register("before-send.sqs.*", self._on_send)

    def _on_send(self, event_name: str, **kwargs: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        with self._lock:
            self._counts[operation] += 1
        if self._rtt_s:
            time.sleep(self._rtt_s)

    def take(self) -> Counter[str]:
        """The counts since the last call; counting starts again from zero."""
        with self._lock:
            counts, self._counts = self._counts, Counter()
        return counts


# --------------------------------------------------------------------------------- peers


def messages(count: int) -> list[OutgoingMessage]:
    from lambdaloop.queue import Envelope, OutgoingMessage

    return [
        OutgoingMessage(
            Envelope(MESSAGE_TYPE, uuid.uuid4().hex, payload(n)), correlation_id=CORRELATION_ID
        )
        for n in range(count)
    ]


def payload(n: int) -> dict[str, Any]:
    return {"user_id": n, "email": f"user{n}@example.com", "name": f"User {n}"}


@dataclass(frozen=True, slots=True)
class Peer:
    name: str
    label: str
    #: Sends ``count`` messages (untimed preparation done inside is kept small).
    send: Callable[[int], None]
    counter: RequestCounter


def publisher_peers(
    publisher: Publisher, counter: RequestCounter, loop: asyncio.AbstractEventLoop
) -> list[Peer]:
    async def one_by_one(count: int) -> None:
        for n in range(count):
            await publisher.publish(MESSAGE_TYPE, payload(n), correlation_id=CORRELATION_ID)

    async def gathered(count: int) -> None:
        await asyncio.gather(
            *(
                publisher.publish(MESSAGE_TYPE, payload(n), correlation_id=CORRELATION_ID)
                for n in range(count)
            )
        )

    return [
        Peer(
            "publish_many",
            "Publisher.publish_many",
            lambda count: loop.run_until_complete(_publish_many(publisher, count)),
            counter,
        ),
        Peer(
            "publish_each",
            "Publisher.publish, awaited in turn",
            lambda count: loop.run_until_complete(one_by_one(count)),
            counter,
        ),
        Peer(
            "publish_gather",
            "Publisher.publish, gathered",
            lambda count: loop.run_until_complete(gathered(count)),
            counter,
        ),
    ]


async def _publish_many(publisher: Publisher, count: int) -> None:
    # The messages are built inside the clock, as publish() builds its envelope inside it.
    await publisher.publish_many(messages(count))


def boto3_peers(client: Any, counter: RequestCounter, queue_url: str) -> list[Peer]:
    attributes = {"correlation_id": {"DataType": "String", "StringValue": CORRELATION_ID}}

    def body(n: int) -> str:
        from lambdaloop.queue import Envelope

        return Envelope(MESSAGE_TYPE, uuid.uuid4().hex, payload(n)).to_json()

    def send_each(count: int) -> None:
        for n in range(count):
            client.send_message(
                QueueUrl=queue_url, MessageBody=body(n), MessageAttributes=attributes
            )

    def send_batches(count: int) -> None:
        for start in range(0, count, BATCH):
            entries = [
                {"Id": str(n), "MessageBody": body(n), "MessageAttributes": attributes}
                for n in range(start, min(count, start + BATCH))
            ]
            response = client.send_message_batch(QueueUrl=queue_url, Entries=entries)
            if response.get("Failed"):
                raise BenchError(f"send_message_batch failed entries: {response['Failed']}")

    return [
        Peer("boto3_each", "boto3 send_message loop", send_each, counter),
        Peer("boto3_batch", "boto3 send_message_batch loop", send_batches, counter),
    ]


# ------------------------------------------------------------------------------ measuring


@dataclass(slots=True)
class Samples:
    seconds: list[float] = field(default_factory=list)
    requests: list[Counter[str]] = field(default_factory=list)


class Queue:
    """Checks and empties the queue between runs, with its own (uncounted) client."""

    def __init__(self, stack: LocalStack, url: str) -> None:
        self.client = stack.aws_client("sqs")
        self.url = url

    def count(self) -> int:
        attributes = self.client.get_queue_attributes(
            QueueUrl=self.url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed"],
        )["Attributes"]
        return sum(int(value) for value in attributes.values())

    def purge(self) -> None:
        self.client.purge_queue(QueueUrl=self.url)
        if (left := self.count()) != 0:
            raise BenchError(f"the queue still holds {left} message(s) after a purge")


def run_once(peer: Peer, queue: Queue, count: int) -> tuple[float, Counter[str]]:
    peer.counter.take()
    started = time.perf_counter()
    peer.send(count)
    elapsed = time.perf_counter() - started
    requests = peer.counter.take()
    if (held := queue.count()) != count:
        raise BenchError(f"{peer.label}: the queue holds {held} message(s), not {count}")
    queue.purge()
    return elapsed, requests


def round_robin(peers: Sequence[Peer], queue: Queue, count: int, runs: int) -> dict[str, Samples]:
    queue.purge()
    for peer in peers:
        run_once(peer, queue, min(count, WARMUP_MESSAGES))
    samples = {peer.name: Samples() for peer in peers}
    for round_no in range(runs):
        shift = round_no % len(peers)
        for peer in [*peers[shift:], *peers[:shift]]:
            elapsed, requests = run_once(peer, queue, count)
            samples[peer.name].seconds.append(elapsed)
            samples[peer.name].requests.append(requests)
    return samples


def measure(args: argparse.Namespace) -> dict[str, Samples]:
    from lambdaloop_local.stack import LOCAL_CREDENTIALS, LocalStack, StackConfig

    # moto refuses a second PurgeQueue within 60 s, as SQS does; the bench purges every run.
    os.environ["MOTO_SQS_ENFORCE_STRICT_QUEUE_PURGE_BEHAVIOUR"] = "false"
    stack = LocalStack(StackConfig(aws_port=0, prefer_real_redis=False))
    stack.start()
    try:
        os.environ.update(
            {
                **LOCAL_CREDENTIALS,
                "AWS_ENDPOINT_URL": stack.aws_endpoint,
                "AWS_REGION": "us-east-1",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            }
        )
        return _measure(stack, args)
    finally:
        stack.stop()


def _measure(stack: LocalStack, args: argparse.Namespace) -> dict[str, Samples]:
    from lambdaloop.clients import aws_client
    from lambdaloop.queue import Publisher
    from lambdaloop.runtime import get_loop
    from lambdaloop.settings import reset_settings

    reset_settings()  # read from the environment just set
    url = str(stack.resources.refs["NotifyQueue"])
    rtt_s = args.rtt_ms / 1e3
    # The Publisher builds aws_client("sqs") on first use; building it here gives the same
    # (cached) client, with the counter on it.
    layer_counter = RequestCounter(aws_client("sqs"), rtt_s)
    raw_client = stack.aws_client("sqs")
    raw_counter = RequestCounter(raw_client, rtt_s)
    peers = [
        *publisher_peers(Publisher(url), layer_counter, get_loop()),
        *boto3_peers(raw_client, raw_counter, url),
    ]
    return round_robin(peers, Queue(stack, url), args.messages, args.runs)


# --------------------------------------------------------------------------------- report


def requests_text(counts: Sequence[Counter[str]]) -> str:
    """The requests of a run, by operation; ``a-b`` when runs differed."""
    totals = sorted({sum(c.values()) for c in counts})
    total = str(totals[0]) if len(totals) == 1 else f"{totals[0]}-{totals[-1]}"
    operations = sorted({op for c in counts for op in c})
    return f"{total} ({', '.join(operations)})"


def render_table(samples: dict[str, Samples], args: argparse.Namespace) -> list[str]:
    labels = {
        "publish_many": "Publisher.publish_many",
        "publish_each": "Publisher.publish, awaited in turn",
        "publish_gather": "Publisher.publish, gathered",
        "boto3_each": "boto3 send_message loop",
        "boto3_batch": "boto3 send_message_batch loop",
    }
    medians = {name: statistics.median(s.seconds) for name, s in samples.items()}
    ours = medians["publish_many"]
    rtt = f"+{args.rtt_ms:g} ms per request" if args.rtt_ms else "no added latency"
    lines = [
        f"publisher: {args.messages:,} messages to NotifyQueue on the moto child ({rtt}; "
        f"N={args.runs} runs, medians; python {platform.python_version()})",
        f"{'way':<36}{'requests':<26}{'median ms':>10}{'p90 ms':>9}{'us/msg':>8}"
        f"{'vs publish_many':>17}",
    ]
    for name, label in labels.items():
        s = samples[name]
        lines.append(
            f"{label:<36}{requests_text(s.requests):<26}{medians[name] * 1e3:>10.1f}"
            f"{p90(s.seconds) * 1e3:>9.1f}{medians[name] / args.messages * 1e6:>8.0f}"
            f"{medians[name] / ours:>16.2f}x"
        )
    fewest = -(-args.messages // BATCH)
    sent = {sum(c.values()) for c in samples["publish_many"].requests}
    each = statistics.median(samples["publish_each"].seconds)
    lines.append(
        f"goal: publish_many sends ceil({args.messages:,}/{BATCH}) = {fewest} requests -> "
        f"{'met' if sent == {fewest} else 'NOT met'} ({'/'.join(map(str, sorted(sent)))}); "
        f"{each / ours:.1f}x faster than one publish per message awaited in turn"
    )
    lines.extend(
        [
            "requests: HTTP requests the client sent during the run (botocore before-send, retries",
            "  included), by operation; the queue held exactly the messages after every run;",
            "Publisher: the layer's client (adaptive retries, 32 connections) in its thread pool",
            "  (32 threads), on the environment's loop; publish() sends a SendMessageBatch of one;",
            "boto3: a plain client (default configuration) in this thread;",
            "moto runs in the stack's child process (loopback, same cores): see --rtt-ms for a",
            "  network's cost; its queues are indexed, so a send does not scan the queue.",
        ]
    )
    return lines


def raw_numbers(samples: dict[str, Samples], args: argparse.Namespace) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "messages": args.messages,
        "runs": args.runs,
        "rtt_ms": args.rtt_ms,
        "peers": {
            name: {"seconds": s.seconds, "requests": [dict(c) for c in s.requests]}
            for name, s in samples.items()
        },
    }


# ----------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per way (default 3)")
    parser.add_argument(
        "--messages", type=int, default=MESSAGES, help=f"messages per run ({MESSAGES:,})"
    )
    parser.add_argument(
        "--rtt-ms",
        type=float,
        default=0.0,
        help="milliseconds added to every request, for a network's round trip (0)",
    )
    parser.add_argument("--json", action="store_true", help="also print the raw numbers as JSON")
    args = parser.parse_args(argv)
    if args.runs < 2:
        parser.error("--runs must be at least 2")
    if args.messages < 1:
        parser.error("--messages must be at least 1")
    if args.rtt_ms < 0:
        parser.error("--rtt-ms must not be negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import_paths()
    quiet_logs()
    try:
        samples = measure(args)
    except BenchError as exc:
        print(f"publisher: {exc}", file=sys.stderr)
        return 1
    print("\n".join(render_table(samples, args)))
    if args.json:
        print(json.dumps(raw_numbers(samples, args), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
