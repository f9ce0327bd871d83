"""Structured logs: one JSON object per line, with the story id on every line about a story.

The story a thread works on is kept in a context variable (``with story_context("council"):``),
so every log call inside it, in any module, carries ``"story": "council"`` without passing the
id around. journald, Cloud Logging and ``jq`` read the lines as they are.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

_current_story: contextvars.ContextVar[str | None] = contextvars.ContextVar("story", default=None)


@contextlib.contextmanager
def story_context(story_id: str | None) -> Iterator[None]:
    """Tag every log line written inside the block with ``story_id``."""
    token = _current_story.set(story_id)
    try:
        yield
    finally:
        _current_story.reset(token)


class StoryFilter(logging.Filter):
    """Adds ``record.story`` from the context (an explicit ``extra={"story": ...}`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "story", None) is None:
            record.story = _current_story.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        story = getattr(record, "story", None)
        if story is not None:
            entry["story"] = story
        entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: int = logging.INFO) -> None:
    """Send every log record of the process to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(StoryFilter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
