"""s3:// storage through boto3, for AWS S3 and S3-compatible stores (MinIO, Ceph, R2...).

Transient trouble (500/503, throttling, dropped connections) is retried by botocore's "standard"
retry mode with a bounded number of attempts (KUBETUNE_S3_MAX_ATTEMPTS, default 5); what is left
after that is an InfraError, so the Job's backoffLimit gets another go. Mistakes a retry cannot fix
(no such bucket, access denied, bad keys) are UserErrors naming the URI, never the credentials.

Credentials: the role's own (from its credentialsSecret), else the environment's default chain where that is
allowed (a local run; in a pod, an entry with ambientCredentials), else none: in a pod, an entry with neither
is read anonymously (unsigned requests), so a public bucket works and a private one is refused, and the node's
or instance's cloud identity is never used behind the spec's back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from kubetune.api.credentials import endpoint_for, lookup, may_use_ambient
from kubetune.api.uris import parse_uri
from kubetune_trainer.errors import InfraError, UserError
from kubetune_trainer.storage import Storage

if TYPE_CHECKING:
    from kubetune.api.v1alpha1 import Spec

_USER_CODES = {
    "NoSuchBucket": "the bucket does not exist",
    "AccessDenied": "access denied (check the credentialsSecret and the bucket policy)",
    "InvalidAccessKeyId": "the access key is not valid (check the credentialsSecret)",
    "SignatureDoesNotMatch": "the secret key does not match the access key (check the credentialsSecret)",
    "InvalidBucketName": "the bucket name is not valid",
    "AllAccessDisabled": "access to the bucket is disabled",
    "403": "access denied (check the credentialsSecret and the bucket policy)",
}


def _split(uri: str) -> tuple[str, str]:
    parsed = parse_uri(uri)
    return parsed.location, parsed.path


_ANONYMOUS = (
    " (read without credentials: this URI's entry names no credentialsSecret and does not ask for ambientCredentials)"
)


def _translate(err: Exception, uri: str, endpoint: str | None, anonymous: bool = False) -> Exception:
    """botocore/boto3 exception -> UserError / InfraError / FileNotFoundError."""
    translated = _translate_error(err, uri, endpoint)
    if anonymous and isinstance(translated, UserError):
        return UserError(f"{translated}{_ANONYMOUS}")
    return translated


def _translate_error(err: Exception, uri: str, endpoint: str | None) -> Exception:
    from boto3.exceptions import RetriesExceededError, S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

    where = f" at {endpoint}" if endpoint else ""
    if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
        return UserError(
            f"{uri}: no S3 credentials found (set credentialsSecret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        )
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in ("NoSuchKey", "404", "NotFound"):
            return FileNotFoundError(uri)
        if code in _USER_CODES:
            return UserError(f"{uri}: {_USER_CODES[code]}")
        if 400 <= status < 500 and status not in (408, 429):
            return UserError(f"{uri}: S3 refused the request ({code or status})")
        return InfraError(f"{uri}: S3{where} failed after retries ({code or status})")
    if isinstance(err, S3UploadFailedError):
        text = str(err)
        for code, meaning in _USER_CODES.items():
            if f"({code})" in text:
                return UserError(f"{uri}: {meaning}")
        return InfraError(f"{uri}: upload to S3{where} failed after retries")
    if isinstance(err, RetriesExceededError):  # s3transfer's download gave up (dropped/cut-off responses)
        return InfraError(f"{uri}: download from S3{where} failed after retries")
    if isinstance(err, BotoCoreError):
        return InfraError(f"{uri}: cannot reach S3{where} ({type(err).__name__})")
    return err


class S3Storage(Storage):
    def __init__(self, client, endpoint: str | None, anonymous: bool = False):
        self._client = client
        self._endpoint = endpoint
        self._anonymous = anonymous

    @classmethod
    def for_role(cls, role: str, spec: Spec | None) -> S3Storage:
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config

        # A role without a spec entry (the model cache's store, "cache") names its own: KUBETUNE_CACHE_AWS_ENDPOINT_URL.
        endpoint = (
            (endpoint_for(spec, role) if spec is not None else None)
            or lookup(role, "AWS_ENDPOINT_URL")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )
        region = (
            (spec.output.region if spec is not None else None)
            or lookup(role, "AWS_REGION")
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
        )
        attempts = int(os.environ.get("KUBETUNE_S3_MAX_ATTEMPTS", "5"))
        config = Config(
            retries={"mode": "standard", "max_attempts": attempts},
            connect_timeout=10,
            read_timeout=120,
            # Custom endpoints (MinIO & co.) rarely have wildcard DNS for virtual-host buckets.
            s3={"addressing_style": "path" if endpoint else "auto"},
        )
        key_id, secret_key = lookup(role, "AWS_ACCESS_KEY_ID"), lookup(role, "AWS_SECRET_ACCESS_KEY")
        # No keys of its own and no leave to use the environment's: unsigned requests, so botocore's credential
        # chain (which ends at the instance metadata service) is never consulted.
        anonymous = not (key_id or secret_key) and not may_use_ambient(role)
        if anonymous:
            config = config.merge(Config(signature_version=UNSIGNED))
        session = boto3.session.Session(
            aws_access_key_id=key_id,
            aws_secret_access_key=secret_key,
            aws_session_token=lookup(role, "AWS_SESSION_TOKEN"),
            region_name=region,
        )
        return cls(session.client("s3", endpoint_url=endpoint, config=config), endpoint, anonymous)

    def _fail(self, err: Exception, uri: str):
        raise _translate(err, uri, self._endpoint, self._anonymous) from None

    def list(self, prefix: str) -> list[str]:
        return [uri for uri, _, _ in self.list_objects(prefix)]

    def list_objects(self, prefix: str) -> list[tuple[str, int, str]]:
        """(URI, size, ETag) of every object under `prefix`, sorted by URI: what a listing says of each object."""
        bucket, key = _split(prefix)
        out = []
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
                out.extend(
                    (f"s3://{bucket}/{obj['Key']}", int(obj.get("Size") or 0), str(obj.get("ETag") or ""))
                    for obj in page.get("Contents", [])
                )
        except Exception as err:  # noqa: BLE001 - translated below
            self._fail(err, prefix)
        # A prefix "a/b" must not match "a/bc/...": keep exact matches and children only.
        if key and not key.endswith("/"):
            out = [o for o in out if o[0] == f"s3://{bucket}/{key}" or o[0].startswith(f"s3://{bucket}/{key}/")]
        return sorted(out)

    def exists(self, uri: str) -> bool:
        bucket, key = _split(uri)
        try:
            self._client.head_object(Bucket=bucket, Key=key)
            return True
        except Exception as err:  # noqa: BLE001
            translated = _translate(err, uri, self._endpoint, self._anonymous)
            if isinstance(translated, FileNotFoundError):
                return False
            raise translated from None

    def download_file(self, uri: str, local_path: str | Path) -> Path:
        bucket, key = _split(uri)
        dst = Path(local_path)
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._client.download_file(bucket, key, str(dst))
        except Exception as err:  # noqa: BLE001
            self._fail(err, uri)
        return dst

    def upload_file(self, local_path: str | Path, uri: str) -> None:
        bucket, key = _split(uri)
        try:
            self._client.upload_file(str(local_path), bucket, key)
        except Exception as err:  # noqa: BLE001
            self._fail(err, uri)

    def write_text(self, uri: str, text: str) -> None:
        bucket, key = _split(uri)
        try:
            self._client.put_object(Bucket=bucket, Key=key, Body=text.encode("utf-8"))
        except Exception as err:  # noqa: BLE001
            self._fail(err, uri)

    def read_text(self, uri: str) -> str:
        from botocore.exceptions import ResponseStreamingError

        bucket, key = _split(uri)
        attempts = int(os.environ.get("KUBETUNE_S3_MAX_ATTEMPTS", "5"))
        for attempt in range(1, attempts + 1):
            try:
                return self._client.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
            except ResponseStreamingError as err:
                # botocore retries a request until its headers arrive; a body cut off after that is ours to retry.
                if attempt == attempts:
                    self._fail(err, uri)
            except Exception as err:  # noqa: BLE001
                self._fail(err, uri)

    def delete_prefix(self, prefix: str) -> None:
        bucket, _ = _split(prefix)
        keys = [_split(u)[1] for u in self.list(prefix)]
        try:
            for i in range(0, len(keys), 1000):
                chunk = keys[i : i + 1000]
                self._client.delete_objects(
                    Bucket=bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True}
                )
        except Exception as err:  # noqa: BLE001
            self._fail(err, prefix)
