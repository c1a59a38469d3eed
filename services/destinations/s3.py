"""``type = "s3"``: an S3 bucket (AWS or any S3-compatible server), through boto3.

Keys are ``<prefix>/<set id>/<file>``; ``prefix`` defaults to the host name so several hosts
share a bucket. Each object carries our SHA-256 in its metadata (a multipart ETag is no MD5).
Artifacts are uploaded first, checked (size and metadata) with a HEAD, and the manifest last:
a copy is listed only once its manifest exists, so an interrupted upload is never a set.
s3transfer streams large files as multipart uploads with bounded memory and aborts the
upload on failure; uploads a killed run left open are aborted before a set is sent again.
Credentials come from boto3's standard chain (environment, ~/.aws, instance role), never from
dcb's file; botocore retries transient errors (5xx, throttling, dropped connections) with
backoff, ``retries`` attempts per request.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
from boto3.s3.transfer import TransferConfig

from dcb.services.artifacts import CHUNK
from dcb.services.destinations.base import (
    MAX_MANIFEST_BYTES,
    Destination,
    SetFile,
    Transfer,
)
from dcb.services.store import MANIFEST, SET_ID_RE

PART = 16 * 1024 * 1024
STALE_UPLOAD = timedelta(days=1)
CONCURRENCY = 8
READ_TIMEOUT = 60.0
"""Seconds an S3 request may wait for an answer, unless the destination's timeout is lower."""


class S3Destination(Destination):
    type = "s3"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        d = self.dcfg
        self.bucket = d.bucket
        self.prefix = (d.prefix or socket.gethostname()).strip("/")
        conf = botocore.config.Config(
            request_checksum_calculation=d.request_checksum_calculation,
            response_checksum_validation=d.request_checksum_calculation,
            retries={"max_attempts": d.retries, "mode": "standard"},
            # A server that accepts and never answers is given up on per request (then
            # retried): at most ``timeout``, 60 s by default.
            connect_timeout=10, read_timeout=min(READ_TIMEOUT, d.timeout),
            max_pool_connections=CONCURRENCY + 2,
        )
        self.client: Any = boto3.session.Session().client(
            "s3", endpoint_url=d.endpoint_url or None, region_name=d.region or None,
            config=conf)
        self.transfer_config = TransferConfig(
            multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=CONCURRENCY,
            io_chunksize=CHUNK, max_io_queue=CONCURRENCY * 2)

    def describe(self) -> str:
        where = f" at {self.dcfg.endpoint_url}" if self.dcfg.endpoint_url else ""
        return f"s3://{self.bucket}/{self.prefix}/{where}"

    def _key(self, set_id: str, name: str = "") -> str:
        return f"{self.prefix}/{set_id}/{name}"

    def _fail(self, e: Exception, doing: str) -> Exception:
        """A one-line DestinationError for a botocore failure (never credentials)."""
        if isinstance(e, botocore.exceptions.ClientError):
            err = e.response.get("Error", {})
            code = str(err.get("Code", "?"))
            if code in ("NoSuchBucket",):
                return self.error(f"bucket {self.bucket!r} does not exist",
                                  hint="create it, or fix [replication] bucket")
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return self.error(f"{doing}: access denied ({code})",
                                  hint="check the credentials boto3 finds (AWS_* env, "
                                       "~/.aws) and the bucket policy")
            return self.error(f"{doing}: {code}: {err.get('Message', '')}".rstrip(": "))
        if isinstance(e, botocore.exceptions.NoCredentialsError):
            return self.error("no S3 credentials found",
                              hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or ~/.aws")
        if isinstance(e, botocore.exceptions.EndpointConnectionError | \
                      botocore.exceptions.ConnectionClosedError | \
                      botocore.exceptions.ReadTimeoutError | \
                      botocore.exceptions.ConnectTimeoutError):
            return self.error(f"{doing}: cannot reach {self.dcfg.endpoint_url or 'S3'} "
                              f"(after {self.dcfg.retries} attempts)")
        return self.error(f"{doing}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")

    def _objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            yield from page.get("Contents", [])

    def list_sets(self) -> list[str]:
        try:
            ids = set()
            for obj in self._objects(self.prefix + "/"):
                rest = obj["Key"][len(self.prefix) + 1:]
                set_id, _, name = rest.partition("/")
                if name == MANIFEST and SET_ID_RE.match(set_id):
                    ids.add(set_id)
            return sorted(ids)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            raise self._fail(e, "listing") from None

    def _abort_open_uploads(self, set_id: str, older_than: timedelta | None = None) -> None:
        """Abort multipart uploads left open under this set (or, with ``older_than``, under
        the whole prefix: a killed run's, for a set never sent again)."""
        prefix = self._key(set_id) if set_id else self.prefix + "/"
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=prefix)
        now = datetime.now(UTC)
        for page in pages:
            for u in page.get("Uploads", []):
                started = u.get("Initiated")
                if older_than is not None and (started is None or now - started < older_than):
                    continue
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=u["Key"],
                                                   UploadId=u["UploadId"])

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=key)
            return head
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    @staticmethod
    def _matches(head: dict[str, Any] | None, f: SetFile) -> bool:
        return (head is not None and head.get("ContentLength") == f.size_bytes
                and head.get("Metadata", {}).get("sha256") == f.sha256)

    def put_set(self, set_dir: Path, set_id: str, files: Sequence[SetFile],
                transfer: Transfer) -> None:
        artifacts = [f for f in files if f.name != MANIFEST]
        manifest = next(f for f in files if f.name == MANIFEST)
        uploaded: list[str] = []
        try:
            self._abort_open_uploads("", older_than=STALE_UPLOAD)
            self._abort_open_uploads(set_id)
            for f in artifacts:
                key = self._key(set_id, f.name)
                if self._matches(self._head(key), f):  # a killed run sent it already
                    transfer.add(f.size_bytes)
                    continue
                self._upload(set_dir / f.name, key, f, transfer)
                uploaded.append(key)
                if not self._matches(self._head(key), f):
                    raise self.error(f"the copy of {f.name} does not verify (size or SHA-256)")
            # The manifest last: only now is the copy a set.
            self._upload(set_dir / MANIFEST, self._key(set_id, MANIFEST), manifest, transfer)
            if not self._matches(self._head(self._key(set_id, MANIFEST)), manifest):
                raise self.error("the manifest's copy does not verify")
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            err = self._fail(e, f"uploading {set_id}")
            self._cleanup(set_id, uploaded)
            raise err from None
        except BaseException:
            self._cleanup(set_id, uploaded)
            raise

    def _cleanup(self, set_id: str, keys: list[str]) -> None:
        """Best effort after a failure: no open multipart upload, no orphan objects."""
        try:
            self._abort_open_uploads(set_id)
            for key in keys:
                self.client.delete_object(Bucket=self.bucket, Key=key)
        except Exception:  # the server may be gone; the next run sweeps again
            return

    def _upload(self, path: Path, key: str, f: SetFile, transfer: Transfer) -> None:
        # Our SHA-256 of the bytes sent: hash while checking the local file is what the
        # manifest says (replication never spreads a damaged set).
        h = hashlib.sha256()
        with open(path, "rb") as r:
            while b := r.read(CHUNK):
                transfer.check()
                h.update(b)
        if f.sha256 is not None and h.hexdigest() != f.sha256:
            raise self.error(f"{path} does not match its manifest (damaged?)",
                             hint="`dcb verify` the set")
        extra: dict[str, Any] = {"Metadata": {"sha256": h.hexdigest()}}
        if self.dcfg.storage_class:
            extra["StorageClass"] = self.dcfg.storage_class
        lock = threading.Lock()

        def progress(n: int) -> None:
            with lock:
                transfer.add(n)

        self.client.upload_file(str(path), self.bucket, key, ExtraArgs=extra,
                                Callback=progress, Config=self.transfer_config)

    def read_manifest(self, set_id: str) -> bytes:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(set_id, MANIFEST))
            data: bytes = obj["Body"].read(MAX_MANIFEST_BYTES + 1)
            return data
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise self.error(f"no set {set_id} under s3://{self.bucket}/{self.prefix}/",
                                 hint=f"`dcb list --from {self.name}` shows its sets") from None
            raise self._fail(e, f"reading {set_id}") from None
        except botocore.exceptions.BotoCoreError as e:
            raise self._fail(e, f"reading {set_id}") from None

    def fetch_files(self, set_id: str, names: Sequence[str], dest: Path,
                    transfer: Transfer) -> None:
        try:
            for name in names:
                self.client.download_file(self.bucket, self._key(set_id, name),
                                          str(dest / name), Callback=transfer.add,
                                          Config=self.transfer_config)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            raise self._fail(e, f"fetching {set_id}") from None

    def delete_set(self, set_id: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(set_id, MANIFEST))
            keys = [o["Key"] for o in self._objects(self._key(set_id))]
            for i in range(0, len(keys), 1000):
                self.client.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            raise self._fail(e, f"deleting {set_id}") from None

    def close(self) -> None:
        self.client.close()


DESTINATION = S3Destination
