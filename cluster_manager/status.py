"""The status record of a story: one small JSON object at ``status_location``.

The newsroom app and operators read it; the watcher writes it as the story moves through
``queued`` -> ``running`` (with the step) -> ``published`` (with the video's URI) or ``failed``
(with the reason). ``digest`` is the SHA-256 of the submitted bytes: a submission whose digest
equals a published record's digest is already done, unless the record asks for the story to be
rendered again (``render_again``, set by ``submit --again``).

Locally the record is written to a temporary file and renamed, in GCS uploaded as one object,
so a reader never sees half a record.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from cluster_manager.config import WatcherConfig
from storyreel.storage import is_gcs_uri, parse_gcs_uri, storage_client

STATES = ("queued", "running", "published", "failed")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def status_location(config: WatcherConfig, story_id: str) -> str:
    """Where the story's record lives: a gs:// URI or an absolute local path."""
    location = config.status_location.replace("{story}", story_id)
    return location if is_gcs_uri(location) else str(config.local_path(location))


def new_record(story_id: str, state: str, data_digest: str, **fields: Any) -> dict[str, Any]:
    record = {
        "story": story_id,
        "state": state,
        "step": None,
        "uri": None,
        "reason": None,
        "attempts": 0,
        "digest": data_digest,
        "updated": None,
        "steps": {},
        "render_again": False,  # a new render of these very bytes was asked for
    }
    record.update(fields)
    return record


def read_status(config: WatcherConfig, story_id: str) -> dict[str, Any] | None:
    """The story's record, or None if it has none (or an unreadable one: it gets rewritten)."""
    location = status_location(config, story_id)
    if is_gcs_uri(location):
        uri = parse_gcs_uri(location)
        blob = storage_client().bucket(uri.bucket).get_blob(uri.name)
        if blob is None:
            return None
        raw = blob.download_as_bytes()
    else:
        try:
            raw = Path(location).read_bytes()
        except FileNotFoundError:
            return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def write_status(config: WatcherConfig, record: dict[str, Any]) -> dict[str, Any]:
    """Store ``record`` (stamped with the time) as the story's record; return it."""
    if record.get("state") not in STATES:
        raise ValueError(f"status state {record.get('state')!r} is not one of {STATES}")
    record = {**record, "updated": now()}
    text = json.dumps(record, ensure_ascii=False, indent=1) + "\n"
    location = status_location(config, record["story"])
    if is_gcs_uri(location):
        uri = parse_gcs_uri(location)
        blob = storage_client().bucket(uri.bucket).blob(uri.name)
        blob.upload_from_string(text, content_type="application/json")
        return record
    path = Path(location)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(partial, 0o644)  # readable by the newsroom app, like the published video
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return record


def step_seconds(story_files: str | Path) -> dict[str, float]:
    """Seconds per finished step, from the story's Snakemake benchmark files.

    ``story_files`` is the story's directory, or its gs:// prefix when the run keeps its files
    in object storage. A benchmark file is ``benchmarks/<step>.tsv`` (render shards:
    ``render-0.tsv``, ...), a header line and one line of values whose first column ``s`` is
    the wall time.
    """
    if is_gcs_uri(str(story_files)):
        prefix = parse_gcs_uri(str(story_files).rstrip("/") + "/benchmarks/")
        blobs = storage_client().list_blobs(prefix.bucket, prefix=prefix.name)
        texts = {
            PurePosixPath(blob.name).stem: blob.download_as_bytes().decode("utf-8", "replace")
            for blob in blobs
            if blob.name.endswith(".tsv")
        }
    else:
        texts = {}
        for path in (Path(story_files) / "benchmarks").glob("*.tsv"):
            try:
                texts[path.stem] = path.read_text(encoding="utf-8")
            except OSError:
                continue
    seconds: dict[str, float] = {}
    for step, text in sorted(texts.items()):
        try:
            rows = list(csv.DictReader(io.StringIO(text), delimiter="\t"))
            seconds[step] = round(float(rows[-1]["s"]), 3)
        except (LookupError, ValueError, TypeError):
            continue  # being written, or not a benchmark: the next look will see it
    return seconds
