"""Google Cloud Storage: where stories and their images come from, where videos are published.

Small helpers over the official ``google-cloud-storage`` client. The client is made on first
use: with ``STORAGE_EMULATOR_HOST`` set it talks to that emulator with anonymous credentials,
otherwise to GCS with the application default credentials. The Google libraries are imported
only when an object is read or written, so parsing the workflow (and ``snakemake -n``) needs
neither them nor credentials.

Every failure is a :class:`StorageError` whose message names the URI and says what to do.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import logging
import os
import posixpath
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

GCS_SCHEME = "gs://"
EMULATOR_HOST_VARIABLE = "STORAGE_EMULATOR_HOST"
DEFAULT_MAX_OBJECT_BYTES = 50 * 1024 * 1024  # config storage.max_object_bytes

# GCS bucket names: 3-63 characters (up to 222 with dots), lower case, starting and ending
# with a letter or digit.
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
_CHUNK_BYTES = 1 << 20

log = logging.getLogger(__name__)


class StorageError(RuntimeError):
    """An object or bucket that cannot be read or written; the message says what to do."""


@dataclass(frozen=True)
class GcsUri:
    """``gs://BUCKET/NAME``: an object, or a prefix when the name ends with ``/`` or is empty."""

    bucket: str
    name: str

    def __str__(self) -> str:
        return f"{GCS_SCHEME}{self.bucket}/{self.name}"

    @property
    def folder(self) -> GcsUri:
        """The prefix this object lies in, as a file lies in its folder."""
        head, _, _ = self.name.rpartition("/")
        return GcsUri(self.bucket, f"{head}/" if head else "")

    def join(self, relative: str) -> GcsUri:
        """``relative`` (a POSIX path, ``..`` allowed) resolved against this prefix."""
        name = posixpath.normpath(posixpath.join(self.folder.name, relative))
        if relative.startswith("/") or name == ".." or name.startswith("../"):
            raise StorageError(f"{relative!r} relative to {self.folder} leaves the bucket")
        return GcsUri(self.bucket, name)

    def is_under(self, prefix: GcsUri) -> bool:
        """Whether this lies under ``prefix``, read as a folder: ``gs://b/photos`` covers
        ``gs://b/photos/x.jpg`` but not ``gs://b/photos-old/x.jpg``."""
        folder = prefix.name if not prefix.name or prefix.name.endswith("/") else prefix.name + "/"
        return self.bucket == prefix.bucket and self.name.startswith(folder)


def is_gcs_uri(value: object) -> bool:
    return isinstance(value, str) and value.startswith(GCS_SCHEME)


def parse_gcs_uri(uri: str) -> GcsUri:
    """Split ``gs://bucket/path`` into bucket and object name, refusing malformed URIs."""
    if not is_gcs_uri(uri):
        raise StorageError(f"{uri!r} is not a gs://BUCKET/OBJECT URI")
    bucket, _, name = uri.removeprefix(GCS_SCHEME).partition("/")
    if not _BUCKET_NAME.fullmatch(bucket):
        raise StorageError(
            f"{uri}: {bucket!r} is not a bucket name (3-63 lower-case letters, digits, "
            "dashes, underscores or dots, starting and ending with a letter or digit)"
        )
    # GCS does not resolve '.' or '..'; refusing them keeps prefix checks meaning what they say.
    if any(part in (".", "..") for part in name.split("/")):
        raise StorageError(f"{uri}: '.' and '..' are not allowed in object names")
    return GcsUri(bucket, name)


def is_allowed(uri: GcsUri, allowed_prefixes: Iterable[str]) -> bool:
    """Whether ``uri`` lies under one of ``allowed_prefixes`` (gs:// URIs; none: nothing is)."""
    return any(uri.is_under(parse_gcs_uri(prefix)) for prefix in allowed_prefixes)


def read_object(uri: str | GcsUri, max_bytes: int) -> bytes:
    """The bytes of a small object (a story), refused unread when larger than ``max_bytes``."""
    uri = _as_gcs_uri(uri)
    with _explained(uri, writing=False):
        blob = _checked_blob(uri, max_bytes)
        return blob.download_as_bytes(if_generation_match=blob.generation)


def download_object(uri: str | GcsUri, destination: Path, max_bytes: int) -> Path:
    """Stream an object into ``destination``, refused unread when larger than ``max_bytes``.

    The file appears whole or not at all: the object streams into a ``.part`` file beside it,
    which is renamed once the client has checked the object's checksum.
    """
    uri = _as_gcs_uri(uri)
    partial = destination.with_name(destination.name + ".part")
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _explained(uri, writing=False):
            blob = _checked_blob(uri, max_bytes)
            # The generation whose size was checked: a replaced object fails instead of being
            # read past the limit.
            blob.download_to_filename(str(partial), if_generation_match=blob.generation)
        partial.replace(destination)
    finally:
        partial.unlink(missing_ok=True)
    log.info("downloaded %s (%s bytes)", uri, f"{destination.stat().st_size:,}")
    return destination


def publish_file(source: Path, folder: str, content_type: str) -> dict[str, Any]:
    """Store ``source`` under ``folder`` (a ``gs://`` prefix, or a local directory).

    Either way the stored file appears whole or not at all (a GCS object write is atomic, a
    local copy is renamed into place), so callers can order writes to mean something.
    Returns where it went, its size, content type and checksums (base64, as GCS reports them).
    """
    checksums = file_checksums(source)
    if is_gcs_uri(folder):
        target = parse_gcs_uri(folder.rstrip("/") + "/" + source.name)
        generation = _upload(source, target, content_type, checksums)
        uri = str(target)
    else:
        target_path = Path(folder) / source.name
        _copy_atomically(source, target_path)
        generation = None
        uri = target_path.resolve().as_uri()
    log.info("stored %s as %s", source.name, uri)
    return {
        "name": source.name,
        "uri": uri,
        "size": source.stat().st_size,
        "content_type": content_type,
        **checksums,
        "generation": generation,
    }


def file_checksums(path: Path) -> dict[str, str]:
    """MD5 and CRC32C of a file, base64-encoded as GCS reports them (``md5Hash``, ``crc32c``)."""
    import google_crc32c

    md5 = hashlib.md5(usedforsecurity=False)
    crc32c = google_crc32c.Checksum()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK_BYTES):
            md5.update(chunk)
            crc32c.update(chunk)
    return {
        "md5": base64.b64encode(md5.digest()).decode("ascii"),
        "crc32c": base64.b64encode(crc32c.digest()).decode("ascii"),
    }


def storage_client() -> Any:
    """The process's client for the endpoint in force (an emulator, else GCS itself)."""
    return _client_for(os.environ.get(EMULATOR_HOST_VARIABLE))


@functools.cache
def _client_for(emulator_host: str | None) -> Any:
    # emulator_host only keys the cache: the client reads STORAGE_EMULATOR_HOST itself and then
    # uses anonymous credentials; without it, google.auth finds the default credentials.
    from google.cloud import storage

    return storage.Client()


def _as_gcs_uri(uri: str | GcsUri) -> GcsUri:
    return uri if isinstance(uri, GcsUri) else parse_gcs_uri(uri)


def _checked_blob(uri: GcsUri, max_bytes: int) -> Any:
    """The object's metadata, after checking that it exists and is not too large to read."""
    blob = storage_client().bucket(uri.bucket).get_blob(uri.name)
    if blob is None:
        _raise_not_found(uri, writing=False)
    if blob.size > max_bytes:
        raise StorageError(
            f"{uri} is {blob.size:,} bytes; the limit is {max_bytes:,} "
            "(storage.max_object_bytes): make the object smaller or raise the limit"
        )
    return blob


def _upload(source: Path, target: GcsUri, content_type: str, checksums: dict[str, str]) -> int:
    from google.cloud.storage.retry import DEFAULT_RETRY

    with _explained(target, writing=True):
        blob = storage_client().bucket(target.bucket).blob(target.name)
        # The client only retries unconditional writes when told to; writing the same bytes
        # to the same name again is harmless, so a transient failure is retried.
        blob.upload_from_filename(str(source), content_type=content_type, retry=DEFAULT_RETRY)
    if blob.crc32c and blob.crc32c != checksums["crc32c"]:
        raise StorageError(
            f"{target}: stored CRC32C {blob.crc32c} differs from the local file's "
            f"{checksums['crc32c']}: publish again"
        )
    return blob.generation


def _copy_atomically(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        shutil.copyfile(source, partial)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


@contextlib.contextmanager
def _explained(uri: GcsUri, *, writing: bool) -> Iterator[None]:
    """Turn the client's exceptions into StorageErrors that name ``uri`` and say what to do."""
    from google.api_core import exceptions as api
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud.storage.exceptions import DataCorruption
    from requests.exceptions import ConnectionError as NetworkError

    action = "write" if writing else "read"
    try:
        yield
    except StorageError:
        raise
    except DefaultCredentialsError as err:
        raise StorageError(
            f"cannot {action} {uri}: no usable Google Cloud credentials ({str(err)[:200]}); run "
            "`gcloud auth application-default login`, set GOOGLE_APPLICATION_CREDENTIALS, or use "
            f"the cluster's workload identity ({EMULATOR_HOST_VARIABLE} selects an emulator)"
        ) from None
    except api.NotFound:
        _raise_not_found(uri, writing=writing)
    except (api.Forbidden, api.Unauthorized) as err:
        role = "roles/storage.objectUser" if writing else "roles/storage.objectViewer"
        raise StorageError(
            f"cannot {action} {uri}: permission denied ({err.code} {err.message.strip()[:200]}); "
            f"grant the workflow's account {role} on gs://{uri.bucket}"
        ) from None
    except api.PreconditionFailed:
        raise StorageError(f"{uri} changed while it was being read: run the step again") from None
    except DataCorruption:
        raise StorageError(f"{uri} was corrupted in transit (checksum mismatch): retry") from None
    except NetworkError as err:
        raise StorageError(
            f"cannot {action} {uri}: the storage service is unreachable ({type(err).__name__}); "
            f"check the network{_emulator_hint()}"
        ) from None


def _raise_not_found(uri: GcsUri, *, writing: bool) -> NoReturn:
    from google.api_core.exceptions import GoogleAPICallError

    # GCS answers 404 for a missing bucket and a missing object alike: ask which one it is.
    bucket_exists = True
    with contextlib.suppress(GoogleAPICallError):  # may not read bucket metadata: say "object"
        bucket_exists = storage_client().lookup_bucket(uri.bucket) is not None
    if not bucket_exists:
        raise StorageError(
            f"{uri}: bucket '{uri.bucket}' does not exist (check the bucket name in the "
            f"configuration, or create it: gcloud storage buckets create gs://{uri.bucket})"
        ) from None
    if writing:
        raise StorageError(
            f"cannot write {uri}: not found (check that bucket '{uri.bucket}' exists and that "
            "the workflow's account may see it)"
        ) from None
    raise StorageError(
        f"{uri} does not exist: no such object in bucket '{uri.bucket}' "
        "(check the name, or upload the object first)"
    ) from None


def _emulator_hint() -> str:
    host = os.environ.get(EMULATOR_HOST_VARIABLE)
    return f" and that the emulator at {EMULATOR_HOST_VARIABLE}={host} is running" if host else ""
