"""Objects in an S3 bucket: store bodies too big or too many for a table item, and hand
them out by presigned URL so they never pass through the API (whose responses are capped
at 6 MB by Lambda)."""

from __future__ import annotations

from typing import Any

from lambdaloop._aws import AwsAdapter
from lambdaloop.clients import run_blocking
from lambdaloop.errors import DependencyError

__all__ = ["Bucket"]


class Bucket(AwsAdapter):
    """One bucket; ``client`` is a boto3 S3 client (by default the environment's, built on
    first use). SDK errors become :class:`~lambdaloop.errors.DependencyError`s."""

    service = "s3"

    def __init__(self, name: str, client: object = None) -> None:
        if not name:
            raise ValueError("a bucket needs a name")
        super().__init__(client)
        self.name = name

    async def put(self, key: str, body: bytes, *, content_type: str | None = None) -> None:
        """Store ``body`` under ``key`` (replacing what is there: a retried put is harmless)."""
        params: dict[str, Any] = {"Bucket": self.name, "Key": key, "Body": body}
        if content_type:
            params["ContentType"] = content_type
        await self._call("put_object", **params)

    async def get(self, key: str) -> bytes:
        """The object's bytes (a missing key is a ``DependencyError`` naming NoSuchKey)."""
        response = await self._call("get_object", Bucket=self.name, Key=key)
        # The stream is read in the pool: it is blocking I/O like the call itself.
        body: bytes = await run_blocking(response["Body"].read)
        return body

    async def presigned_get(self, key: str, expires_s: int = 900) -> str:
        """A URL that GETs the object without credentials for ``expires_s`` seconds.

        Signed locally (no request is made); it grants what the signer's role may do, so
        the role needs ``s3:GetObject`` on the key.
        """
        url: Any = await self._call(
            "generate_presigned_url",
            ClientMethod="get_object",
            Params={"Bucket": self.name, "Key": key},
            ExpiresIn=expires_s,
        )
        if not isinstance(url, str):
            raise DependencyError(self.service, f"no presigned URL for {key!r}")
        return url
