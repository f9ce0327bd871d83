"""The story contract: loading and validating a submitted story.

Every intake (the workflow's ``init_story``, the watcher, the newsroom app) goes through
:func:`load_story` (a local file), :func:`parse_story` (bytes read from elsewhere, e.g. GCS) and
:func:`validate_story`, so a story is judged by one set of rules and a bad one is refused with a
message that names the story, the file and the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema


class StoryError(ValueError):
    """A story that cannot be rendered, with a message a newsroom editor can act on."""


@cache
def story_schema() -> dict[str, Any]:
    schema_file = resources.files("storyreel").joinpath("schemas/story.schema.json")
    return json.loads(schema_file.read_text(encoding="utf-8"))


# The schema is the single source of the id rule; the workflow's wildcard constraint reads it too.
STORY_ID_PATTERN: str = story_schema()["properties"]["id"]["pattern"]
_STORY_ID_RE = re.compile(STORY_ID_PATTERN)
_ID_RULE = "1-63 lower-case letters, digits or hyphens, starting with a letter or digit"


def check_story_id(story_id: object) -> str:
    """Return ``story_id`` if it is a safe story id, else raise StoryError.

    Ids become directory names, so anything that could name another path (``..``, ``/``,
    dots, upper case, spaces, empty) is refused before the disk is touched.
    """
    if not isinstance(story_id, str) or not _STORY_ID_RE.fullmatch(story_id):
        raise StoryError(f"story id {_short(story_id)} is not valid: it must be {_ID_RULE}")
    return story_id


def load_story(path: str | Path, expected_id: str | None = None) -> dict[str, Any]:
    """Read, decode and validate a story file; return the story with defaults filled in."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise StoryError(f"story file {path} does not exist") from None
    return parse_story(raw, source=str(path), expected_id=expected_id)


def parse_story(raw: bytes, source: str, expected_id: str | None = None) -> dict[str, Any]:
    """Decode and validate a story's bytes, read from ``source`` (a path or a gs:// URI)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise StoryError(
            f"story file {source} is not UTF-8 text: byte 0x{raw[err.start]:02x} at offset "
            f"{err.start} cannot be decoded (save the story as UTF-8)"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise StoryError(
            f"story file {source} is not valid JSON: {err.msg} at line {err.lineno}, "
            f"column {err.colno}"
        ) from None
    return validate_story(data, source=source, expected_id=expected_id)


def validate_story(
    data: Any, source: str = "story", expected_id: str | None = None
) -> dict[str, Any]:
    """Validate a decoded story against the schema; return a copy with defaults filled in."""
    errors = sorted(_validator().iter_errors(data), key=_error_order)
    if errors:
        where = _story_label(data, source)
        # dict.fromkeys: one missing-fields sentence covers every 'required' error of an object.
        messages = list(dict.fromkeys(_describe(err) for err in errors))
        more = f" (and {len(messages) - 5} more problems)" if len(messages) > 5 else ""
        messages = messages[:5]
        raise StoryError(f"{where}: " + "; ".join(messages) + more)
    if expected_id is not None and data["id"] != expected_id:
        raise StoryError(
            f"{_story_label(data, source)}: field 'id' is {data['id']!r} but the story was "
            f"requested as {expected_id!r}"
        )
    story = dict(data)
    story.setdefault("language", story_schema()["properties"]["language"]["default"])
    return story


@cache
def _validator() -> jsonschema.protocols.Validator:
    schema = story_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _story_label(data: Any, source: str) -> str:
    story_id = data.get("id") if isinstance(data, dict) else None
    if isinstance(story_id, str) and _STORY_ID_RE.fullmatch(story_id):
        return f"story '{story_id}' ({source})"
    return source


def _error_order(err: jsonschema.ValidationError) -> tuple:
    return (len(err.path), list(map(str, err.path)), err.validator)


def _field_name(path: Iterable[Any]) -> str:
    name = ""
    for part in path:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "...'"


_SCHEMA_TYPES = {"object": "an object", "array": "a list", "string": "a string"}
_JSON_TYPES = {
    dict: "an object",
    list: "a list",
    str: "a string",
    bool: "true/false",
    int: "a number",
    float: "a number",
    type(None): "null",
}


def _describe(err: jsonschema.ValidationError) -> str:
    """One editor-readable sentence for a schema violation, naming the field."""
    field = _field_name(err.absolute_path)
    value = err.instance
    kind = err.validator
    if kind == "required":
        missing = [name for name in err.validator_value if name not in value]
        prefix = f"{field}." if field else ""
        return ", ".join(f"missing required field '{prefix}{name}'" for name in missing)
    if kind == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(value) - set(allowed))
        where = f" in '{field}'" if field else ""
        return (
            f"unknown field(s) {', '.join(map(repr, extra))}{where} (allowed: {', '.join(allowed)})"
        )
    if kind == "type":
        wanted = _SCHEMA_TYPES.get(err.validator_value, err.validator_value)
        got = _JSON_TYPES.get(type(value), type(value).__name__)
        if not field:
            return f"the story must be {wanted}, not {got}"
        return f"field '{field}' must be {wanted}, not {got}"
    if kind == "maxLength":
        limit = err.validator_value
        return f"field '{field}' is {len(value):,} characters long; the limit is {limit:,}"
    if kind == "minLength" or (kind == "pattern" and err.validator_value == "\\S"):
        return f"field '{field}' is empty"
    if kind == "pattern" and field == "id":
        return f"field 'id' is {_short(value)}: it must be {_ID_RULE}"
    if kind == "pattern":
        return f"field '{field}' is {_short(value)}, which does not match {err.validator_value}"
    if kind == "maxItems":
        return f"field '{field}' has {len(value)} entries; the limit is {err.validator_value}"
    if kind == "minItems":
        return f"field '{field}' is empty: at least {err.validator_value} needed"
    if kind == "enum":
        options = ", ".join(map(repr, err.validator_value))
        return f"field '{field}' is {_short(value)}; it must be one of {options}"
    return f"field '{field or '(story)'}': {err.message[:200]}"
