"""Settings of the blob store: the local filesystem (default) or an S3-compatible bucket."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator


class StorageSettings(BaseModel):
    """Where the instance files live (section ``[storage]``).

    The S3 credentials are never settings of the node: boto3 reads them from the environment
    (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``),
    its shared credentials file or the instance's role.
    """

    model_config = {"extra": "forbid"}

    backend: Literal["filesystem", "s3"] = Field(
        default="filesystem",
        description=(
            "filesystem: blobs in blob_dir; s3: blobs in the S3-compatible bucket s3_bucket "
            "(AWS S3, MinIO, Ceph RGW)."
        ),
    )
    s3_bucket: str | None = Field(
        default=None,
        description="Bucket of the s3 backend; it must exist (the node refuses to start else).",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="Endpoint of an S3-compatible server (e.g. http://minio:9000); empty: AWS.",
    )
    s3_region: str | None = Field(
        default=None, description="Region of the bucket; empty: boto3's default (AWS_REGION)."
    )
    s3_prefix: str = Field(
        default="", description="Put before every object name (one bucket, several uses)."
    )
    s3_multipart_threshold: int = Field(
        default=8 * 1024 * 1024,
        ge=5 * 1024 * 1024,
        description="Blobs of this many bytes or more are uploaded in parts (at least 5 MiB).",
    )

    @model_validator(mode="after")
    def _bucket_for_s3(self) -> StorageSettings:
        if self.backend == "s3" and not self.s3_bucket:
            raise ValueError("storage.backend is s3 but storage.s3_bucket is not set")
        return self
