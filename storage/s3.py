"""S3-compatible blob store (AWS S3, MinIO, Ceph RGW) through boto3.

Objects are named ``<prefix><key>``, with the same random keys as the filesystem store
(UUID hex, never derived from what a sender put in the file). ``put`` returns only once S3
has answered the upload (PutObject, or CompleteMultipartUpload above the multipart threshold):
S3 stores an object completely or not at all, so a failed upload leaves no blob behind, at
most an unfinished multipart upload, which :meth:`S3BlobStore.stale_temporaries` lists.

Credentials are never part of the node's settings: boto3 reads them itself from the
environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_PROFILE``), its shared files or an instance role.
"""

from __future__ import annotations

import errno
import hashlib
import io
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, BinaryIO, cast

from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from storage.base import BlobInfo, BlobNotFoundError, BlobRef, StorageError

if TYPE_CHECKING:
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client

_KEY = re.compile(r"^[0-9a-f]{32}$")
MIB = 1024 * 1024
# S3 refuses multipart parts under 5 MiB (the last one excepted)
_MIN_PART = 5 * MIB
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
_UPLOAD_MARK = "?uploadId="
_ERRORS = (ClientError, BotoCoreError, Boto3Error)


def _reason(exc: BaseException) -> str:
    """A short reason for an S3 failure: the error code, or the kind of connection failure.

    Never the request or the data: the message goes to logs and to DICOM/HTTP peers."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return str(error.get("Code") or "error")
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, Boto3Error) and isinstance(cause, _ERRORS):
        return _reason(cause)
    return type(exc).__name__


def _not_found(exc: BaseException) -> bool:
    return isinstance(exc, ClientError) and _reason(exc) in _NOT_FOUND


class S3BlobStore:
    """A :class:`storage.BlobStore` in one bucket of an S3-compatible object store.

    Parameters
    ----------
    bucket
        The bucket; it must exist (:meth:`check` says whether it answers).
    client
        A boto3 S3 client (endpoint, region and retries are the caller's choice).
    prefix
        Put before every object name, so that one bucket can hold other things too.
    multipart_threshold
        Blobs of this size or more are uploaded in parts (parts of at least 5 MiB, sent in
        parallel); smaller ones in one PutObject.
    """

    def __init__(
        self,
        bucket: str,
        client: S3Client,
        *,
        prefix: str = "",
        multipart_threshold: int = 8 * MIB,
    ) -> None:
        self.bucket = bucket
        self.client = client
        self.prefix = prefix
        self.transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=max(multipart_threshold, _MIN_PART),
        )

    def _name(self, key: str) -> str:
        if not _KEY.match(key):
            raise BlobNotFoundError(f"not a blob key: {key!r}")
        return f"{self.prefix}{key}"

    def _error(self, what: str, exc: BaseException) -> StorageError:
        return StorageError(errno.EIO, f"{what} in S3 bucket {self.bucket}: {_reason(exc)}")

    def check(self) -> None:
        """Raise :class:`StorageError` unless the bucket exists and answers (HeadBucket)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except _ERRORS as exc:
            if _not_found(exc) or _reason(exc) == "NoSuchBucket":
                raise StorageError(
                    errno.ENOENT, f"S3 bucket {self.bucket} does not exist (create it first)"
                ) from exc
            raise self._error("cannot reach the blob store", exc) from exc

    def put(self, data: bytes) -> BlobRef:
        return self.put_stream((data,))

    def put_stream(self, chunks: Iterable[bytes]) -> BlobRef:
        key = uuid.uuid4().hex
        source = _Chunks(chunks)
        try:
            self.client.upload_fileobj(
                io.BufferedReader(source, MIB), self.bucket, self._name(key), Config=self.transfer
            )
        except _ERRORS as exc:
            raise self._error("cannot write blob", exc) from exc
        return BlobRef(key=key, sha256=source.digest.hexdigest(), size=source.size)

    def open(self, key: str) -> BinaryIO:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self._name(key))
        except _ERRORS as exc:
            if _not_found(exc):
                raise BlobNotFoundError(f"no blob {key}") from exc
            raise self._error(f"cannot read blob {key}", exc) from exc
        return cast(BinaryIO, io.BufferedReader(_Body(answer["Body"], self, key), 1 * MIB))

    def remove(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._name(key))
        except _ERRORS as exc:
            if not _not_found(exc):
                raise self._error(f"cannot remove blob {key}", exc) from exc

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except BlobNotFoundError:
            return False
        return True

    def stat(self, key: str) -> BlobInfo:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._name(key))
        except _ERRORS as exc:
            if _not_found(exc):
                raise BlobNotFoundError(f"no blob {key}") from exc
            raise self._error(f"cannot read blob {key}", exc) from exc
        return BlobInfo(size=head["ContentLength"], modified=head["LastModified"].timestamp())

    def keys(self, prefix: str = "") -> Iterator[str]:
        if not re.fullmatch(r"[0-9a-f]{0,32}", prefix):
            return
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix
        )
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    key = item["Key"][len(self.prefix) :]
                    if _KEY.match(key):
                        yield key
        except _ERRORS as exc:
            raise self._error("cannot list blobs", exc) from exc

    def stale_temporaries(self, older_than: float) -> Iterator[str]:
        """Multipart uploads started more than ``older_than`` seconds ago and never completed
        or aborted (a node that crashed, or lost the endpoint, mid-upload), as
        ``<object name>?uploadId=<id>``."""
        limit = time.time() - older_than
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        try:
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"].timestamp() < limit:
                        yield f"{upload['Key']}{_UPLOAD_MARK}{upload['UploadId']}"
        except _ERRORS as exc:
            raise self._error("cannot list unfinished uploads", exc) from exc

    def remove_temporary(self, name: str) -> None:
        """Abort an unfinished multipart upload found by :meth:`stale_temporaries`."""
        object_name, _, upload_id = name.partition(_UPLOAD_MARK)
        key = object_name[len(self.prefix) :]
        if not (upload_id and object_name.startswith(self.prefix) and _KEY.match(key)):
            raise BlobNotFoundError(f"not an unfinished upload of this store: {name!r}")
        try:
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=object_name, UploadId=upload_id
            )
        except _ERRORS as exc:
            if _reason(exc) not in {"NoSuchUpload", *_NOT_FOUND}:
                raise self._error("cannot abort an unfinished upload", exc) from exc


class _Body(io.RawIOBase):
    """The streamed body of one GetObject; a connection lost mid-read is a StorageError."""

    def __init__(self, body: StreamingBody, store: S3BlobStore, key: str) -> None:
        self._body = body
        self._store = store
        self._key = key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        try:
            chunk = self._body.read(len(buffer))
        except _ERRORS as exc:
            raise self._store._error(f"cannot read blob {self._key}", exc) from exc
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class _Chunks(io.RawIOBase):
    """Chunks as a readable file for ``upload_fileobj``, hashed and counted as they go."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending = memoryview(b"")
        self.digest = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self.digest.update(chunk)
            self.size += len(chunk)
            self._pending = memoryview(chunk)
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count
