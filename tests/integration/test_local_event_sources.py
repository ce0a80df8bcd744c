"""The local stack runs the template's SQS events as Lambda's event source mappings do."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from lambdaloop_local.stack import LocalStack, StackConfig

TEMPLATE = """
Transform: AWS::Serverless-2016-10-31
Resources:
  Jobs:
    Type: AWS::SQS::Queue
    Properties:
      VisibilityTimeout: 30
  Worker:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: code/
      Handler: worker.handler
      Runtime: python3.13
      Timeout: 5
      Environment:
        Variables:
          OUT_DIR: {out}
      Events:
        Work:
          Type: SQS
          Properties:
            Queue: !GetAtt Jobs.Arn
            BatchSize: 4
            FunctionResponseTypes: [ReportBatchItemFailures]
            ScalingConfig:
              MaximumConcurrency: 2
"""

WORKER = """
import os, pathlib

def handler(event, context):
    failures = []
    for record in event["Records"]:
        if record["body"] == "poison":
            failures.append({"itemIdentifier": record["messageId"]})
        else:
            pathlib.Path(os.environ["OUT_DIR"], record["body"]).write_text(record["messageId"])
    return {"batchItemFailures": failures}
"""


def test_sqs_events_become_pollers_that_invoke_the_function(tmp_path: Path) -> None:
    # Given a template whose function consumes a queue
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "worker.py").write_text(WORKER)
    (tmp_path / "template.yaml").write_text(TEMPLATE.format(out=json.dumps(str(out))))
    stack = LocalStack(
        StackConfig(template_path=tmp_path / "template.yaml", aws_port=0, prefer_real_redis=False)
    )
    stack.start()
    try:
        [source] = stack.sqs_event_sources()
        sqs = stack.aws_client("sqs")
        url = stack.resources.refs["Jobs"]
        for body in [f"job-{i}" for i in range(6)] + ["poison"]:
            sqs.send_message(QueueUrl=url, MessageBody=body)

        async def consume() -> set[str]:
            stop = asyncio.Event()
            poller = asyncio.create_task(source.run(stop))
            try:
                for _ in range(300):  # bounded: until the six good jobs are done
                    done = {p.name for p in out.iterdir()}
                    if len(done) == 6:
                        break
                    await asyncio.sleep(0.05)
            finally:
                stop.set()
                await asyncio.wait_for(poller, 30)
                await stack.aclose_functions()
            return done

        done = asyncio.run(consume())
        left = sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
    finally:
        stack.stop()

    # Then the mapping's settings came from the template, the good jobs ran and were deleted,
    # and the reported failure stayed in the queue for redelivery
    assert (source.config.batch_size, source.config.max_concurrency) == (4, 2)
    assert source.config.report_batch_item_failures
    assert done == {f"job-{i}" for i in range(6)}
    assert (
        int(left["ApproximateNumberOfMessages"])
        + int(left["ApproximateNumberOfMessagesNotVisible"])
        == 1
    )
