"""Where datasets and runs live: local paths, file://, s3:// and gs:// through pyarrow filesystems.

S3 settings come from the standard AWS variables, so any S3-compatible store works:
``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) for the endpoint, ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` or ``AWS_PROFILE`` for credentials,
``AWS_REGION`` / ``AWS_DEFAULT_REGION`` for the region. Errors from storage are turned into one line
that names the URI and what to check.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlparse

import pyarrow.fs as pafs

from rayapp.errors import StorageError

__all__ = [
    "Location",
    "resolve",
    "storage_errors",
    "join",
    "write_bytes_atomic",
    "read_bytes",
    "s3_endpoint",
    "is_transient",
    "retry_transient",
    "STORAGE_ENV",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

# What says where storage is and how to talk to it, besides credentials: the driver passes these to
# the processes it starts (collectors), so they write where the driver checked.
STORAGE_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_EC2_METADATA_DISABLED",
    "RAYAPP_S3_CONNECT_TIMEOUT",
    "RAYAPP_S3_REQUEST_TIMEOUT",
    "RAYAPP_S3_MAX_ATTEMPTS",
    "RAYAPP_STORAGE_ATTEMPTS",
    "RAYAPP_STORAGE_BACKOFF_S",
)


def s3_endpoint() -> str | None:
    """The S3 endpoint URL from the environment, or None for AWS itself."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _s3_filesystem() -> pafs.S3FileSystem:
    kwargs: dict = {
        "connect_timeout": float(os.environ.get("RAYAPP_S3_CONNECT_TIMEOUT", "5")),
        "request_timeout": float(os.environ.get("RAYAPP_S3_REQUEST_TIMEOUT", "60")),
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(
            max_attempts=int(os.environ.get("RAYAPP_S3_MAX_ATTEMPTS", "3"))
        ),
    }
    endpoint = s3_endpoint()
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
        kwargs["scheme"] = parsed.scheme or "https"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region or endpoint:
        kwargs["region"] = region or "us-east-1"
    return pafs.S3FileSystem(**kwargs)


@dataclass(frozen=True)
class Location:
    """A resolved URI: the filesystem, the path inside it, and the URI as the user wrote it."""

    fs: pafs.FileSystem
    path: str
    uri: str
    scheme: str  # "file", "s3" or "gs"

    def join(self, *parts: str) -> Location:
        return Location(self.fs, join(self.path, *parts), join(self.uri, *parts), self.scheme)

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"


def join(base: str, *parts: str) -> str:
    out = base.rstrip("/")
    for p in parts:
        out = f"{out}/{p.strip('/')}"
    return out


def resolve(uri: str) -> Location:
    """Turn a dataset or run URI into a filesystem and a path."""
    if not uri:
        raise StorageError(
            "empty storage URI: set data.uri (a path, s3://bucket/prefix or gs://bucket/prefix)"
        )
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
        path = parsed.path if scheme == "file" else uri
        path = os.path.abspath(os.path.expanduser(path))
        return Location(pafs.LocalFileSystem(), path, uri, "file")
    if scheme in ("s3", "s3a"):
        if not parsed.netloc:
            raise StorageError(f"{uri}: an S3 URI needs a bucket, e.g. s3://replays/breakout")
        path = (parsed.netloc + parsed.path).rstrip("/")
        return Location(_s3_filesystem(), path, f"s3://{path}", "s3")
    if scheme in ("gs", "gcs"):
        if not parsed.netloc:
            raise StorageError(f"{uri}: a GCS URI needs a bucket, e.g. gs://replays/breakout")
        with storage_errors(uri):
            fs, path = pafs.FileSystem.from_uri(f"gs://{parsed.netloc}{parsed.path}")
        return Location(fs, path.rstrip("/"), f"gs://{path}", "gs")
    raise StorageError(f"{uri}: unsupported storage scheme '{scheme}://' (use a local path, s3:// or gs://)")


_NETWORK = re.compile(
    r"NETWORK_CONNECTION|curlCode: (6|7|28)|Could not connect|Couldn't connect|Connection refused|timed out",
    re.I,
)
_DENIED = re.compile(
    r"ACCESS_DENIED|AccessDenied|InvalidAccessKeyId|SignatureDoesNotMatch|403|Forbidden|InvalidToken|ExpiredToken",
    re.I,
)
_NO_BUCKET = re.compile(r"NoSuchBucket|NO_SUCH_BUCKET|bucket does not exist|Bucket '.*' not found", re.I)
_NO_CREDS = re.compile(r"credentials|Unable to locate|No response body", re.I)


def explain(uri: str, err: BaseException) -> str:
    """One line for a storage failure: what, where, and what to do."""
    msg = " ".join(str(err).split())
    detail = msg.split("Details: ", 1)[-1][:160]
    scheme = urlparse(uri).scheme.lower()
    where = f" at {s3_endpoint()}" if scheme.startswith("s3") and s3_endpoint() else ""
    if _NO_BUCKET.search(msg):
        bucket = urlparse(uri).netloc
        return f"{uri}: bucket '{bucket}' does not exist{where}; create it first (e.g. `aws s3 mb s3://{bucket}`)"
    if _DENIED.search(msg):
        return (
            f"{uri}: storage{where} refused the credentials; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
            f"(or AWS_PROFILE) and the bucket policy"
        )
    if _NETWORK.search(msg):
        if scheme.startswith("s3"):
            target = s3_endpoint() or "AWS S3"
            return f"{uri}: cannot reach the S3 endpoint {target}; check AWS_ENDPOINT_URL and that the server is up ({detail})"
        return f"{uri}: cannot reach storage ({detail})"
    if isinstance(err, FileNotFoundError):
        return f"{uri}: not found ({msg[-160:]})"
    if isinstance(err, PermissionError):
        return f"{uri}: permission denied ({msg[-160:]})"
    if scheme.startswith("s3") and _NO_CREDS.search(msg):
        return f"{uri}: no usable S3 credentials; set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE ({msg[-120:]})"
    return f"{uri}: storage error: {msg[-240:]}"


@contextlib.contextmanager
def storage_errors(uri: str) -> Iterator[None]:
    """Turn pyarrow/OS errors inside the block into a StorageError naming `uri`."""
    try:
        yield
    except StorageError:
        raise
    except OSError as e:
        raise StorageError(explain(uri, e)) from e


def write_bytes_atomic(loc: Location, data: bytes) -> None:
    """Write a small file so readers see the old content or the new, never a part.

    Locally: a temporary name and a rename. On object storage: one upload, visible on completion.
    """
    with storage_errors(loc.uri):
        if loc.is_local:
            parent = os.path.dirname(loc.path)
            os.makedirs(parent, exist_ok=True)
            tmp = os.path.join(parent, f"_tmp-{uuid.uuid4().hex}-{os.path.basename(loc.path)}")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, loc.path)
        else:
            with loc.fs.open_output_stream(loc.path) as f:
                f.write(data)


def read_bytes(loc: Location) -> bytes:
    with storage_errors(loc.uri):
        with loc.fs.open_input_stream(loc.path) as f:
            return f.read()


def exists(loc: Location) -> bool:
    with storage_errors(loc.uri):
        return loc.fs.get_file_info(loc.path).type != pafs.FileType.NotFound


_BUSY = re.compile(
    r"SLOW_DOWN|SlowDown|SERVICE_UNAVAILABLE|ServiceUnavailable|INTERNAL_FAILURE|InternalError|"
    r"REQUEST_TIMEOUT|RequestTimeout|THROTTL|Throttl",
    re.I,
)


def is_transient(err: BaseException) -> bool:
    """A storage error worth retrying: the endpoint unreachable or busy, not a refusal."""
    if not isinstance(err, OSError):
        return False
    msg = str(err)
    if _DENIED.search(msg) or _NO_BUCKET.search(msg):
        return False
    return bool(_NETWORK.search(msg) or _BUSY.search(msg))


def retry_transient(uri: str, op: Callable[[], T]) -> T:
    """Run `op`, retrying transient storage errors with exponential backoff a bounded number of times.

    ``RAYAPP_STORAGE_ATTEMPTS`` (default 4) attempts, the first pause ``RAYAPP_STORAGE_BACKOFF_S``
    (default 0.5 s) and doubling; each attempt has the S3 client's own retries inside. What still
    fails is a `StorageError` naming `uri`, the cause and how long it was tried.
    """
    attempts = max(1, int(os.environ.get("RAYAPP_STORAGE_ATTEMPTS", "4")))
    pause = float(os.environ.get("RAYAPP_STORAGE_BACKOFF_S", "0.5"))
    t0 = time.monotonic()
    for attempt in range(1, attempts + 1):
        try:
            return op()
        except OSError as e:
            if attempt == attempts or not is_transient(e):
                tried = (
                    f" (gave up after {attempt} attempts over {time.monotonic() - t0:.1f} s)"
                    if attempt > 1
                    else ""
                )
                raise StorageError(explain(uri, e) + tried) from e
            log.info(
                "%s: %s; attempt %d of %d in %.1f s",
                uri,
                " ".join(str(e).split())[:200],
                attempt + 1,
                attempts,
                pause,
            )
            time.sleep(pause)
            pause = min(2 * pause, 30.0)
    raise AssertionError("unreachable")
