"""Stories between the editor and the watcher: the story JSON, its checks, publishing through
``submit_story``, and the progress read back from the status records."""

from __future__ import annotations

import hashlib
import html
import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from sqlalchemy.orm import Session

from cluster_manager.status import read_status
from cluster_manager.submit import AlreadyRendering, submit_story
from storyreel.storage import is_gcs_uri
from storyreel.story import STORY_ID_PATTERN, StoryError, validate_story
from webapp.db import Story, utcnow
from webapp.library import image_path
from webapp.settings import AppSettings

log = logging.getLogger(__name__)

SOURCE = "newsroom app"
# The demo story: 85 written words (92 once its numbers are spelled out) read in 33.7 s with
# tts.length_scale 1.1. The editor counts written words, so the rate is per written word.
DEMO_WORDS, DEMO_SECONDS, DEMO_LENGTH_SCALE = 85, 33.7, 1.1
PUBLISHED_FILES = {"final.mp4": "video/mp4", "preview.png": "image/png", "captions.vtt": "text/vtt"}
RENDERING = ("queued", "running")

FieldErrors = dict[str, list[str]]  # field ("title", "images", "images[2]", "form") -> messages


# --- the editor's choices and the length estimate -------------------------------------------


def presenter_choices(workflow: dict[str, Any]) -> list[str]:
    return sorted(workflow["presenter"]["presenters"])


def voice_choices(workflow: dict[str, Any]) -> list[tuple[str, str]]:
    """(value, label): "" keeps the config's voice, so a later change of config applies."""
    tts = workflow["tts"]
    default = tts.get("voice") or f"{tts['backend']}'s default voice"
    choices = [("", f"Config default ({default})")]
    if tts.get("voice"):
        choices.append((tts["voice"], tts["voice"]))
    return choices


def estimate_settings(workflow: dict[str, Any]) -> dict[str, float]:
    """What the editor's length estimate needs: words per second and the fixed cards."""
    length_scale = workflow["tts"].get("length_scale", 1.0)
    return {
        "words_per_second": round(DEMO_WORDS / DEMO_SECONDS * DEMO_LENGTH_SCALE / length_scale, 3),
        "intro": workflow["video"].get("intro_seconds", 0.0),
        "outro": workflow["video"].get("outro_seconds", 0.0),
    }


def estimated_seconds(text: str, workflow: dict[str, Any]) -> float:
    rate = estimate_settings(workflow)
    words = len(text.split())
    if not words:
        return 0.0
    return words / rate["words_per_second"] + rate["intro"] + rate["outro"]


def suggested_id(title: str) -> str:
    """A story id from the title: "Council approves budget!" -> "council-approves-budget"."""
    words = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return words[:63].rstrip("-")


# --- the story JSON and its checks ----------------------------------------------------------


def story_document(story: Story, settings: AppSettings) -> dict[str, Any]:
    """The story as the watcher receives it; images by their absolute path in the library."""
    images = []
    for entry in story.images:
        image: dict[str, str] = {"uri": str(image_path(settings, entry.image))}
        if entry.caption:
            image["caption"] = entry.caption
        if entry.credit:
            image["credit"] = entry.credit
        images.append(image)
    document: dict[str, Any] = {
        "id": story.story_id,
        "title": story.title,
        "text": story.text,
        "images": images,
        "language": "en",
    }
    if story.presenter:
        document["presenter"] = story.presenter
    if story.voice:
        document["voice"] = story.voice
    return document


def story_bytes(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_story(document: dict[str, Any], workflow: dict[str, Any]) -> FieldErrors:
    """The schema's verdict (storyreel.story.validate_story), each message under its field."""
    errors: FieldErrors = {}
    try:
        validate_story(document, source=SOURCE)
    except StoryError as err:
        errors = field_errors(str(err))
    presenter = document.get("presenter")
    if presenter and "presenter" not in errors and presenter not in presenter_choices(workflow):
        available = ", ".join(presenter_choices(workflow))
        errors["presenter"] = [f"presenter {presenter!r} is not configured ({available})"]
    return errors


_MESSAGE_START = r"; (?=missing required field|field '|unknown field|the story must)"


def field_errors(message: str) -> FieldErrors:
    """Split validate_story's one-line message into its problems, keyed by the field named."""
    problems = re.sub(rf"^.*?{SOURCE}\)?: ", "", message, count=1)
    errors: FieldErrors = {}
    for problem in re.split(_MESSAGE_START, problems):
        named = re.search(r"field '([a-z]+)(\[\d+\])?", problem)
        field = "form" if named is None else named.group(1) + (named.group(2) or "")
        errors.setdefault(field, []).append(problem)
    return errors


# --- publishing and progress ----------------------------------------------------------------


def publish(db: Session, settings: AppSettings, story: Story, force: bool = False) -> FieldErrors:
    """Check the story and submit it to the watcher; the problems found, or {} once submitted.

    ``force``: render it again from its first step even if it is published unchanged."""
    if is_gcs_uri(settings.watcher.story_source):
        # init_story refuses local image paths in a story read from GCS.
        return {
            "form": [
                f"the watcher reads stories from {settings.watcher.story_source}, but the app "
                "keeps images on this machine: publishing to a GCS story source is not supported"
            ]
        }
    document = story_document(story, settings)
    errors = check_story(document, settings.workflow)
    if errors:
        return errors
    data = story_bytes(document)
    try:
        submit_story(settings.watcher, data, label=SOURCE, force=force)
    except StoryError as err:
        return field_errors(str(err))
    except AlreadyRendering as err:
        return {"form": [str(err)]}
    except Exception as err:  # the queue or the disk: tell the editor, keep the draft
        log.exception("story '%s': submitting failed", story.story_id)
        return {"form": [f"the story could not be submitted: {err}"]}
    story.submitted_digest = digest(data)
    story.submitted_at = utcnow()
    db.commit()
    log.info("story '%s' submitted (%s)", story.story_id, story.submitted_digest[:12])
    return {}


@dataclass
class Progress:
    state: str  # draft | queued | running | published | failed
    label: str
    changed: bool  # edited since it was last submitted
    updated: datetime
    record: dict[str, Any] | None

    def as_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "label": self.label,
            "changed": self.changed,
            "updated": when(self.updated),
        }


def progress(story: Story, settings: AppSettings) -> Progress:
    if story.submitted_digest is None:
        return Progress("draft", "draft", False, story.updated_at, None)
    changed = digest(story_bytes(story_document(story, settings))) != story.submitted_digest
    record = read_status(settings.watcher, story.story_id)
    if record is None:  # submitted, and the watcher has not written its record yet
        return Progress("queued", "queued", changed, story.updated_at, None)
    state = record.get("state", "queued")
    again = " again" if record.get("render_again") else ""  # asked to render it again
    step = f", step {record['step']}" if record.get("step") else ""
    label = {
        "queued": "queued to render again" if again else "queued",
        "running": f"rendering{again}{step}",
        "published": "published",
        "failed": f"failed: {record.get('reason') or 'no reason recorded'}",
    }.get(state, state)
    updated = max(story.updated_at, _parse_time(record.get("updated")) or story.updated_at)
    return Progress(state, label, changed, updated, record)


def when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


# --- the published video --------------------------------------------------------------------


def published_location(record: dict[str, Any] | None) -> str | None:
    if record and record.get("state") == "published" and isinstance(record.get("uri"), str):
        return record["uri"]
    return None


def published_file(settings: AppSettings, record: dict[str, Any] | None, name: str) -> Path | None:
    """A local published file (final.mp4, preview.png, captions.vtt) of the status record's
    video; None when there is none, or it is in GCS (not served by the app)."""
    uri = published_location(record)
    if uri is None or name not in PUBLISHED_FILES or is_gcs_uri(uri):
        return None
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        return None
    video = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(uri)
    path = (settings.watcher.workdir / video).parent / name
    return path if path.is_file() else None


@dataclass(frozen=True)
class Cue:
    start: str
    text: str


def caption_cues(vtt: Path) -> list[Cue]:
    """The cues of captions.vtt, for reading along below the video."""
    cues = []
    for block in vtt.read_text(encoding="utf-8").split("\n\n"):
        lines = block.strip().splitlines()
        for number, line in enumerate(lines):
            if "-->" in line:
                start = line.split("-->")[0].strip()
                text = html.unescape(" ".join(lines[number + 1 :]))
                cues.append(Cue(start.removeprefix("00:"), text))
                break
    return cues


def is_story_id(value: str) -> bool:
    return re.fullmatch(STORY_ID_PATTERN, value) is not None
