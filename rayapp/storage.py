"""Where datasets and runs live: local paths, file://, s3:// and gs:// through pyarrow filesystems.

S3 settings come from the standard AWS variables, so any S3-compatible store works:
``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) for the endpoint, ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` or ``AWS_PROFILE`` for credentials,
``AWS_REGION`` / ``AWS_DEFAULT_REGION`` for the region. Errors from storage are turned into one line
that names the URI and what to check.

Transient failures (the endpoint unreachable, 5xx, throttling) are retried with exponential
backoff: ``RAYAPP_IO_RETRIES`` times (default 4) starting at ``RAYAPP_IO_RETRY_DELAY`` seconds
(default 0.5: 0.5 + 1 + 2 + 4 s, then the error), on top of pyarrow's own quick retries
(``RAYAPP_S3_MAX_ATTEMPTS``). A storage that stays away fails within seconds, never hangs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
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
    "exists",
    "list_dir",
    "delete",
    "write_stream",
    "read_stream",
    "s3_endpoint",
    "is_transient",
    "is_storage_failure",
    "retry_io",
    "STORAGE_ENV",
]

log = logging.getLogger(__name__)

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
    "RAYAPP_IO_RETRIES",
    "RAYAPP_IO_RETRY_DELAY",
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
    # unreachable (DNS, refused, timeout) or lost mid-request (reset, broken pipe, curl 52/55/56:
    # an endpoint that died while a shard was going up)
    r"NETWORK_CONNECTION|curlCode: (6|7|28|52|55|56)\b|Could not connect|Couldn't connect|Connection refused|timed out"
    r"|Connection reset|Broken pipe|Empty reply from server",
    re.I,
)
_DENIED = re.compile(
    r"ACCESS_DENIED|AccessDenied|InvalidAccessKeyId|SignatureDoesNotMatch|403|Forbidden|InvalidToken|ExpiredToken",
    re.I,
)
_NO_BUCKET = re.compile(r"NoSuchBucket|NO_SUCH_BUCKET|bucket does not exist|Bucket '.*' not found", re.I)
_NO_CREDS = re.compile(r"credentials|Unable to locate|No response body", re.I)
# what is worth retrying: the endpoint gone or overloaded (the patterns of Ray Data's
# DEFAULT_RETRIED_IO_ERRORS, plus the curl/socket wordings of a refused or timed-out connection)
_TRANSIENT = re.compile(
    _NETWORK.pattern
    + r"|INTERNAL_FAILURE|SLOW_DOWN|SlowDown|SERVICE_UNAVAILABLE|ServiceUnavailable|HTTP status 50[0-4]"
    r"|InternalError|RequestTimeout|Connection reset|Broken pipe",
    re.I,
)


def is_storage_failure(err: BaseException) -> bool:
    """Whether an error is storage refusing or out of reach (as opposed to, say, a bug)."""
    msg = str(err)
    return any(r.search(msg) for r in (_NETWORK, _DENIED, _NO_BUCKET)) or bool(
        re.search(r"AWS Error|curlCode", msg)
    )


def is_transient(err: BaseException, extra: Iterable[str] = ()) -> bool:
    """Whether a storage error may go away by itself (worth a retry); `extra`: more substrings
    (e.g. Ray Data's `DataContext.retried_io_errors`)."""
    if not isinstance(err, OSError):
        return False
    msg = str(err)
    if _DENIED.search(msg) or _NO_BUCKET.search(msg):  # a refusal does not go away by waiting
        return False
    return bool(_TRANSIENT.search(msg)) or any(p and p in msg for p in extra)


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


def retry_io(fn: Callable[[], object], uri: str, extra: Iterable[str] = ()):
    """Call `fn`, retrying transient storage errors with exponential backoff (a bounded number of
    times, see the module docstring); the last failure becomes a StorageError naming `uri`."""
    retries = int(os.environ.get("RAYAPP_IO_RETRIES", "4"))
    delay = float(os.environ.get("RAYAPP_IO_RETRY_DELAY", "0.5"))
    t0 = time.monotonic()
    for attempt in range(retries + 1):
        try:
            return fn()
        except StorageError:
            raise
        except OSError as e:
            if attempt == retries or not is_transient(e, extra):
                tried = (
                    f" (gave up after {attempt + 1} attempts in {time.monotonic() - t0:.1f} s)"
                    if attempt
                    else ""
                )
                raise StorageError(explain(uri, e) + tried) from e
            log.info("%s; retry %d/%d in %.1f s", explain(uri, e), attempt + 1, retries, delay)
            time.sleep(delay)
            delay = min(2 * delay, 8.0)
    raise AssertionError("unreachable")


def write_bytes_atomic(loc: Location, data: bytes) -> None:
    """Write a small file so readers see the old content or the new, never a part.

    Locally: a temporary name and a rename. On object storage: one upload, visible on completion.
    """
    retry_io(lambda: _write(loc, data), loc.uri)


def _write(loc: Location, data: bytes) -> None:
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
    def read() -> bytes:
        with loc.fs.open_input_stream(loc.path) as f:
            return f.read()

    return retry_io(read, loc.uri)


def exists(loc: Location) -> bool:
    return retry_io(lambda: loc.fs.get_file_info(loc.path).type != pafs.FileType.NotFound, loc.uri)


def list_dir(loc: Location) -> list[tuple[str, bool]]:
    """(name, is a folder) of what a folder holds; [] when it does not exist."""

    def ls() -> list[tuple[str, bool]]:
        if loc.fs.get_file_info(loc.path).type == pafs.FileType.NotFound:
            return []
        infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=False))
        return sorted((i.base_name, i.type == pafs.FileType.Directory) for i in infos if i.base_name)

    return retry_io(ls, loc.uri)


def delete(loc: Location) -> None:
    """Remove a file or a folder with everything in it; nothing there is fine."""

    def rm() -> None:
        kind = loc.fs.get_file_info(loc.path).type
        if kind == pafs.FileType.Directory:
            loc.fs.delete_dir(loc.path)
        elif kind != pafs.FileType.NotFound:
            loc.fs.delete_file(loc.path)

    retry_io(rm, loc.uri)


def write_stream(loc: Location, write: Callable[[object], None]) -> None:
    """`write(f)` into a new file, streamed (for files too large to hold twice in memory); visible
    whole or not at all like `write_bytes_atomic`. A retry calls `write` again from the start."""

    def attempt() -> None:
        if loc.is_local:
            parent = os.path.dirname(loc.path)
            os.makedirs(parent, exist_ok=True)
            tmp = os.path.join(parent, f"_tmp-{uuid.uuid4().hex}-{os.path.basename(loc.path)}")
            try:
                with open(tmp, "wb") as f:
                    write(f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, loc.path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:
            with loc.fs.open_output_stream(loc.path) as f:
                write(f)

    retry_io(attempt, loc.uri)


def read_stream(loc: Location, read: Callable[[object], object]):
    """`read(f)` over a file opened for reading (streamed), retried like `read_bytes`."""

    def attempt():
        # buffered: an unbuffered S3 stream makes one ranged GET per small read (pickle.load: 12 s
        # instead of 0.2 s for 28 MB from a loopback server)
        with loc.fs.open_input_stream(loc.path, buffer_size=8 << 20) as f:
            return read(f)

    return retry_io(attempt, loc.uri)
