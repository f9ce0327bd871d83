"""Settings derived from the workflow config that more than one rule needs."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A config value that passed the schema but does not fit the rest of the config."""


def video_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The chosen output format (``video.format`` from ``formats``) merged with ``video``."""
    video = dict(config["video"])
    name = video.pop("format")
    try:
        chosen = config["formats"][name]
    except KeyError:
        available = ", ".join(sorted(config["formats"]))
        raise ConfigError(f"video.format {name!r} is not one of formats: {available}") from None
    return {"format": name, **chosen, **video}
