"""Submitting a story: validate it, record it as queued, hand it to the watcher's source.

In local mode the story lands in the inbox as ``inbox/<id>.json`` in one rename, so the watcher
never reads half a file; with Pub/Sub it is published to the topic. A story published already is
rendered again only when asked (``force``): the request travels in its status record, so both
sources carry it without a change to the message.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from cluster_manager.config import InboxSourceSettings, WatcherConfig
from cluster_manager.status import digest, new_record, read_status, write_status
from storyreel.storage import is_gcs_uri
from storyreel.story import parse_story


class AlreadyRendering(ValueError):
    """A render of the same story version was asked for while one is running."""


def submit_story(
    config: WatcherConfig,
    data: bytes,
    base_dir: Path | None = None,
    label: str = "story",
    force: bool = False,
) -> str:
    """Validate ``data`` and queue it; return the story id. Raises StoryError if invalid.

    ``base_dir`` is the folder of the submitted file: relative image paths are made absolute
    against it (when stories are read from local files), since the story moves elsewhere.
    ``label`` names the story in errors (e.g. its file name). ``force``: render the story again
    from its first step even if these very bytes are published already (the status record asks
    the watcher for it with ``render_again``); raises AlreadyRendering while they are rendering.
    """
    story = parse_story(data, source=label)
    story_id = story["id"]
    if base_dir is not None and not is_gcs_uri(config.story_source):
        data = absolute_image_paths(data, base_dir)
    data_digest = digest(data)
    previous = read_status(config, story_id)
    same = previous is not None and previous.get("digest") == data_digest
    if force:
        if same and previous.get("state") == "running":
            # The run's own records would overwrite the request: it would be lost silently.
            step = f" (step {previous['step']})" if previous.get("step") else ""
            raise AlreadyRendering(
                f"story '{story_id}' is being rendered now{step}: ask for it to be rendered "
                "again once that run has ended"
            )
        write_status(config, new_record(story_id, "queued", data_digest, render_again=True))
    elif not (same and previous.get("state") in ("running", "published")):
        # A running or published record of these very bytes stays: the watcher settles the
        # duplicate. Anything else (new version, or a retry after giving up) starts afresh.
        write_status(config, new_record(story_id, "queued", data_digest))
    if isinstance(config.source, InboxSourceSettings):
        _drop_into_inbox(config.local_path(config.source.inbox), f"{story_id}.json", data)
    else:
        from cluster_manager import pubsub  # the Pub/Sub client loads only when used

        pubsub.publish_story(config, story_id, data)
    return story_id


def absolute_image_paths(data: bytes, base_dir: Path) -> bytes:
    """The story with each relative image path made absolute against ``base_dir``.

    Returns ``data`` itself when nothing is relative, so its digest stays the submitted one.
    """
    story = json.loads(data.decode("utf-8-sig"))
    changed = False
    for image in story.get("images", []):
        uri = image.get("uri", "")
        if not urlparse(uri).scheme and not uri.startswith("/"):
            image["uri"] = str((Path(base_dir) / uri).resolve())
            changed = True
    if not changed:
        return data
    return (json.dumps(story, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def _drop_into_inbox(inbox: Path, name: str, data: bytes) -> None:
    inbox.mkdir(parents=True, exist_ok=True)
    # A dot name: the watcher leaves it alone until the rename makes it a story file.
    handle, partial = tempfile.mkstemp(dir=inbox, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(partial, 0o644)  # mkstemp's 0600 would hide it from a watcher of another user
        os.replace(partial, inbox / name)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
