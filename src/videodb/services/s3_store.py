"""The S3 backend (boto3): SeaweedFS's gateway run by the platform, or any S3 endpoint.

Keys under the configured prefix: `videos/<sha256>`, `posters/<sha256>.jpg`, and uploads in
progress under `staging/`. An upload streams into an S3 multipart upload as the request arrives
(parts of `part_mb`, sent in order from one worker thread per upload; at most two parts of it in
memory), is checked, then copied server-side to its digest's key inside the recording
transaction. A ranged read that breaks half way is resumed from the byte reached.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, SecretStr

from videodb.services.storage import (
    ByteReader,
    MissingBytesError,
    PendingUpload,
    StoredFile,
    StoredObject,
    StoreUnavailableError,
    VideoStore,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger(__name__)

T = TypeVar("T")
NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchBucket"})
READ_RESUMES = 3
MEDIA_URL_TTL_S = 600


class S3Settings(BaseModel):
    """What the applications need to reach an S3 store (written into conf/apps.json, 0600)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: str
    bucket: str
    prefix: str = ""
    region: str = "us-east-1"
    access_key: str
    secret_key: SecretStr
    part_bytes: int = 8 * 1024 * 1024
    settle_s: float = 0.0  # a missing video is looked for again this long before a 404


def _not_found(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code", "")) in NOT_FOUND


class S3Pending(PendingUpload):
    def __init__(self, store: S3Store, declared_type: str | None) -> None:
        super().__init__(store.max_bytes, declared_type)
        self.store = store
        self.key = store.key("staging", uuid.uuid4().hex)
        self._buffer = bytearray()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s3-upload")
        self._jobs: list[Future[object]] = []
        self._upload_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []
        self._staged = False  # the staging object exists (multipart completed or one PUT)
        self._discarded = False

    # -- on the event loop: buffer, and hand whole parts to this upload's worker thread --------

    def _stage(self, chunk: bytes | memoryview) -> None:
        self._buffer += chunk
        size = self.store.settings.part_bytes
        while len(self._buffer) >= size:
            part = bytes(self._buffer[:size])
            del self._buffer[:size]
            self._jobs.append(self._pool.submit(self._send_part, part))

    def backpressure(self) -> Future[object] | None:
        pending = [job for job in self._jobs if not job.done()]
        return pending[0] if len(pending) > 1 else None

    # -- in the worker thread ------------------------------------------------------------------

    def _send_part(self, data: bytes) -> object:
        client = self.store.client
        if self._upload_id is None:
            made = self.store.call(
                "start a multipart upload",
                lambda: client.create_multipart_upload(Bucket=self.store.bucket, Key=self.key),
            )
            self._upload_id = made["UploadId"]
        number = len(self._parts) + 1
        upload_id = self._upload_id
        sent = self.store.call(
            f"send part {number}",
            lambda: client.upload_part(
                Bucket=self.store.bucket,
                Key=self.key,
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
            ),
        )
        self._parts.append({"ETag": sent["ETag"], "PartNumber": number})
        return None

    def _complete_staging(self) -> None:
        for job in self._jobs:
            job.result()  # a failed part raises here
        client, bucket = self.store.client, self.store.bucket
        rest = bytes(self._buffer)
        self._buffer.clear()
        if self._upload_id is None:
            self.store.call(
                "store the upload",
                lambda: client.put_object(Bucket=bucket, Key=self.key, Body=rest),
            )
        else:
            if rest:
                self._pool.submit(self._send_part, rest).result()
            upload_id = self._upload_id
            self.store.call(
                "complete the multipart upload",
                lambda: client.complete_multipart_upload(
                    Bucket=bucket,
                    Key=self.key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": self._parts},
                ),
            )
            self._upload_id = None
        self._staged = True

    def media_source(self) -> str:
        return self.store.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.store.bucket, "Key": self.key},
            ExpiresIn=MEDIA_URL_TTL_S,
        )

    def publish(self) -> StoredFile:
        assert self.result is not None and self._staged, "finish() first"
        store = self.store
        final = store.key("videos", self.result.sha256)
        if not store.exists(self.result.sha256):
            store.call(
                "copy the upload into place",
                lambda: store.client.copy(
                    {"Bucket": store.bucket, "Key": self.key}, store.bucket, final
                ),
            )
        self._drop_staged()
        return self.result

    def _drop_staged(self) -> None:
        if self._staged:
            store = self.store
            store.call(
                "remove the staged upload",
                lambda: store.client.delete_object(Bucket=store.bucket, Key=self.key),
            )
            self._staged = False

    def discard(self) -> None:
        """Abort what is in progress, remove what is staged (after the parts in flight)."""
        if self._discarded:
            return
        self._discarded = True
        try:
            self._pool.submit(self._abort).result()
        except Exception as exc:  # the sweeper removes what this could not
            log.warning(
                "could not remove the staged upload %s (the sweeper will): %s", self.key, exc
            )
        finally:
            self._pool.shutdown(wait=False)

    def _abort(self) -> None:
        if self._upload_id is not None:
            upload_id = self._upload_id
            self.store.call(
                "abort the multipart upload",
                lambda: self.store.client.abort_multipart_upload(
                    Bucket=self.store.bucket, Key=self.key, UploadId=upload_id
                ),
            )
            self._upload_id = None
        self._drop_staged()


class S3Reader(ByteReader):
    """A ranged GET; a body that breaks is asked again from the byte reached (3 times)."""

    def __init__(self, store: S3Store, sha256: str, start: int, length: int) -> None:
        self.store = store
        self.key = store.key("videos", sha256)
        self._offset = start
        self._end = start + length
        self._resumes = 0
        self._body: Any = None
        if length > 0:
            self._open()

    def _open(self) -> None:
        store = self.store
        give_up = time.monotonic() + store.settings.settle_s
        wanted = f"bytes={self._offset}-{self._end - 1}"
        while True:
            answer = store.lookup(
                lambda: store.client.get_object(Bucket=store.bucket, Key=self.key, Range=wanted)
            )
            if answer is not None:
                break
            if time.monotonic() >= give_up:
                raise MissingBytesError(f"not in {store.describe()} ({self.key})")
            time.sleep(0.1)  # another host's filer may not have shared the object yet
        self._body = answer["Body"]

    def read(self, size: int) -> bytes:
        while self._offset < self._end:
            try:
                chunk: bytes = self._body.read(min(size, self._end - self._offset))
            except Exception as exc:  # urllib3 / botocore stream errors: resume
                chunk = b""
                why = f"{type(exc).__name__}: {exc}"
            else:
                why = "the body ended early"
            if chunk:
                self._offset += len(chunk)
                return chunk
            if self._resumes >= READ_RESUMES:
                raise StoreUnavailableError(
                    f"reading {self.key} from {self.store.describe()} failed at byte "
                    f"{self._offset} after {READ_RESUMES} resumes ({why})"
                )
            self._resumes += 1
            log.warning("resuming %s at byte %d (%s)", self.key, self._offset, why)
            self._close_body()
            self._open()
        return b""

    def _close_body(self) -> None:
        if self._body is not None:
            with contextlib.suppress(Exception):  # a broken connection: nothing to release
                self._body.close()
            self._body = None

    def close(self) -> None:
        self._close_body()


class S3Store(VideoStore):
    backend = "s3"

    def __init__(self, settings: S3Settings, max_bytes: int) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self.max_bytes = max_bytes
        config = Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=3,
            read_timeout=30,
            max_pool_connections=64,
        )
        self.client: S3Client = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.endpoint,
            region_name=settings.region,
            aws_access_key_id=settings.access_key,
            aws_secret_access_key=settings.secret_key.get_secret_value(),
            config=config,
        )

    def key(self, kind: str, name: str) -> str:
        return f"{self.settings.prefix}{kind}/{name}"

    def describe(self) -> str:
        return f"S3 bucket {self.bucket} at {self.settings.endpoint}"

    def call(self, what: str, action: Callable[[], T]) -> T:
        """One S3 call; a failure becomes StoreUnavailableError saying what failed."""
        try:
            return action()
        except (ClientError, BotoCoreError) as exc:
            raise StoreUnavailableError(f"{self.describe()}: could not {what}: {exc}") from exc

    def begin(self, declared_type: str | None) -> PendingUpload:
        return S3Pending(self, declared_type)

    def ensure_ready(self) -> None:
        if self.lookup(lambda: self.client.head_bucket(Bucket=self.bucket)) is None:
            self.call("create the bucket", lambda: self.client.create_bucket(Bucket=self.bucket))
        probe = self.key("staging", f"probe-{uuid.uuid4().hex}")
        self.call("write", lambda: self.client.put_object(Bucket=self.bucket, Key=probe, Body=b""))
        self.call("delete", lambda: self.client.delete_object(Bucket=self.bucket, Key=probe))

    def lookup(self, action: Callable[[], T]) -> T | None:
        """One S3 call about an object: None when it is not there; StoreUnavailableError when
        the store fails or does not answer."""
        try:
            return action()
        except ClientError as exc:
            if _not_found(exc):
                return None
            raise StoreUnavailableError(f"{self.describe()}: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailableError(f"{self.describe()} did not answer: {exc}") from exc

    def exists(self, sha256: str) -> bool:
        key = self.key("videos", sha256)
        return self.lookup(lambda: self.client.head_object(Bucket=self.bucket, Key=key)) is not None

    def open_range(self, sha256: str, start: int, length: int) -> ByteReader:
        return S3Reader(self, sha256, start, length)

    def remove(self, sha256: str) -> None:
        for key in (self.key("videos", sha256), self.key("posters", f"{sha256}.jpg")):
            self._delete(key)

    def _delete(self, key: str) -> None:
        self.call(f"delete {key}", lambda: self.client.delete_object(Bucket=self.bucket, Key=key))

    def put_file(self, sha256: str, path: Path) -> None:
        key = self.key("videos", sha256)
        self.call(f"store {key}", lambda: self.client.upload_file(str(path), self.bucket, key))

    def put_poster(self, sha256: str, jpeg: bytes) -> None:
        key = self.key("posters", f"{sha256}.jpg")
        self.call(
            "store the poster",
            lambda: self.client.put_object(
                Bucket=self.bucket, Key=key, Body=jpeg, ContentType="image/jpeg"
            ),
        )

    def poster(self, sha256: str) -> bytes | None:
        key = self.key("posters", f"{sha256}.jpg")
        answer = self.lookup(lambda: self.client.get_object(Bucket=self.bucket, Key=key))
        if answer is None:
            return None
        data: bytes = answer["Body"].read()
        return data

    def listing(self) -> Iterator[StoredObject]:
        pages = self.client.get_paginator("list_objects_v2")
        for kind, folder in (("staged", "staging"), ("poster", "posters"), ("video", "videos")):
            base = self.key(folder, "")
            for page in pages.paginate(Bucket=self.bucket, Prefix=base):
                for item in page.get("Contents", []):
                    name = item["Key"][len(base) :]
                    if kind == "poster":
                        name = name.removesuffix(".jpg")
                    yield StoredObject(kind, name, item["LastModified"])  # type: ignore[arg-type]
        uploads = self.client.get_paginator("list_multipart_uploads")
        base = self.key("staging", "")
        for listed in uploads.paginate(Bucket=self.bucket, Prefix=base):
            for upload in listed.get("Uploads", []):
                name = f"{upload['Key'][len(base) :]}#{upload['UploadId']}"
                yield StoredObject("staged", name, self._last_activity(upload))

    def _last_activity(self, upload: Any) -> datetime:
        """When a multipart upload last received a part (its start if none yet): an upload
        still sending after the grace period is not abandoned."""
        newest: datetime = upload["Initiated"]
        parts = self.lookup(
            lambda: self.client.list_parts(
                Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
        )
        if parts is not None:
            for part in parts.get("Parts", []):
                newest = max(newest, part["LastModified"])
        return newest

    def remove_object(self, item: StoredObject) -> None:
        if item.kind == "staged" and "#" in item.name:
            name, upload_id = item.name.split("#", 1)
            self.call(
                "abort a multipart upload",
                lambda: self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self.key("staging", name), UploadId=upload_id
                ),
            )
            return
        folder = {"staged": "staging", "poster": "posters", "video": "videos"}[item.kind]
        name = f"{item.name}.jpg" if item.kind == "poster" else item.name
        key = self.key(folder, name)
        self.call(f"delete {key}", lambda: self.client.delete_object(Bucket=self.bucket, Key=key))

    def close(self) -> None:
        self.client.close()
