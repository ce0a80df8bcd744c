"""The Lambda context object handed to handlers locally (same attributes as in AWS)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["LocalContext"]

ACCOUNT_ID = "123456789012"


@dataclass(slots=True)
class LocalContext:
    function_name: str
    memory_limit_in_mb: int
    aws_request_id: str
    #: Wall-clock time (epoch ms) at which Lambda would stop the invocation.
    deadline_ms: int
    region: str = "us-east-1"
    function_version: str = "$LATEST"
    log_group_name: str = field(default="")
    log_stream_name: str = "local"
    identity: None = None
    client_context: None = None

    def __post_init__(self) -> None:
        if not self.log_group_name:
            self.log_group_name = f"/aws/lambda/{self.function_name}"

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{ACCOUNT_ID}:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self.deadline_ms - int(time.time() * 1000))
