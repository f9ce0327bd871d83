"""The watcher's settings (watcher.yaml), checked before anything starts.

Relative paths: ``workdir`` is relative to the folder of the settings file (or the current
directory without one); every other local path or template (``stories_dir``, ``story_source``,
``status_location``, ``source.inbox``, ``snakefile``) is relative to ``workdir``, where
Snakemake runs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cluster_manager.scaler import ScalerSettings
from storyreel.storage import is_gcs_uri


class ConfigError(ValueError):
    """Settings that cannot be used; the message names the file and the field."""


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InboxSourceSettings(_Settings):
    kind: Literal["inbox"] = "inbox"
    inbox: Path = Path("inbox")  # done/, failed/ and processing/ live inside it
    poll_s: float = Field(1.0, gt=0)


class PubSubSourceSettings(_Settings):
    kind: Literal["pubsub"]
    project: str = Field(min_length=1)
    subscription: str = Field(min_length=1)  # the watcher pulls from it
    topic: str = Field(min_length=1)  # `submit` publishes to it
    dead_letter_topic: str | None = None


class MetricsSettings(_Settings):
    host: str = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535)  # 0: pick a free port (logged)


def _default_snakemake() -> Path:
    return Path(sys.executable).with_name("snakemake")


def _story_template(value: str) -> str:
    if "{story}" not in value:
        raise ValueError(f"{value!r} must contain {{story}}, the place of the story id")
    return value


class WatcherConfig(_Settings):
    workdir: Path = Path(".")
    snakefile: Path | None = None  # None: the Snakefile in workdir
    snakemake: Path = Field(default_factory=_default_snakemake)  # null: the default
    profile: str | None = None  # None: a local run (--cores all); or e.g. "profiles/gke"
    snakemake_args: list[str] = Field(default_factory=list)
    stories_dir: str = "stories"
    # The profile's default-storage-prefix when jobs share files through object storage
    # (profiles/gke: $STORYREEL_GCS_PREFIX): a story's files, published.json and benchmarks
    # among them, are then there and not in workdir. None: local files.
    storage_prefix: str | None = None
    story_source: str = "queue/{story}.json"
    status_location: str = "published/{story}/status.json"
    max_parallel_stories: int = Field(2, ge=1)
    max_attempts: int = Field(3, ge=1)
    story_timeout_s: float = Field(14400, gt=0)
    drain_timeout_s: float = Field(600, ge=0)
    stop_grace_s: float = Field(30, ge=0)
    source: Annotated[InboxSourceSettings | PubSubSourceSettings, Field(discriminator="kind")] = (
        Field(default_factory=InboxSourceSettings)
    )
    scaler: ScalerSettings = Field(default_factory=ScalerSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    _check_story_source = field_validator("story_source")(_story_template)
    _check_status_location = field_validator("status_location")(_story_template)

    @field_validator("storage_prefix")
    @classmethod
    def _gcs_prefix(cls, value: str | None) -> str | None:
        if value is not None and not is_gcs_uri(value):
            raise ValueError(f"{value!r} is not a gs://BUCKET/PATH prefix")
        return value

    @field_validator("source", mode="before")
    @classmethod
    def _inbox_by_default(cls, value: object) -> object:
        if isinstance(value, dict) and "kind" not in value:
            return {"kind": "inbox", **value}
        return value

    @field_validator("snakemake", mode="before")
    @classmethod
    def _default_when_null(cls, value: object) -> object:
        return _default_snakemake() if value is None else value

    @field_validator("snakemake_args")
    @classmethod
    def _no_config_option(cls, args: list[str]) -> list[str]:
        # A second --config replaces the first: the watcher's own story_source would be lost.
        if any(arg == "--config" or arg.startswith("--config=") for arg in args):
            raise ValueError("must not contain --config (the watcher sets it); use --configfile")
        return args

    def local_path(self, path: str | Path) -> Path:
        """A local path of the settings, made absolute against workdir."""
        return self.workdir / path

    @property
    def inbox(self) -> Path | None:
        if isinstance(self.source, InboxSourceSettings):
            return self.local_path(self.source.inbox)
        return None


def load_config(path: Path | None) -> WatcherConfig:
    """The settings in ``path`` (None: the defaults, a local inbox), with workdir made absolute."""
    if path is None:
        config = WatcherConfig()
        base = Path.cwd()
    else:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise ConfigError(f"{path}: cannot read the watcher settings: {err.strerror}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the watcher settings must be a mapping of keys to values")
        try:
            config = WatcherConfig.model_validate(raw)
        except ValidationError as err:
            raise ConfigError(f"{path}: {_describe(err)}") from None
        base = path.resolve().parent
    workdir = (base / config.workdir).resolve()
    scaler = config.scaler
    if scaler.cluster_spec is not None:  # relative to workdir, like every other path
        scaler = scaler.model_copy(update={"cluster_spec": workdir / scaler.cluster_spec})
    return config.model_copy(update={"workdir": workdir, "scaler": scaler})


def _describe(err: ValidationError) -> str:
    problems = []
    for problem in err.errors():
        location = [str(part) for part in problem["loc"]]
        if location[:1] == ["source"] and location[1:2] in (["inbox"], ["pubsub"]):
            del location[1]  # the tag pydantic adds for the chosen kind of source
        field = ".".join(location) or "(settings)"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown field"
        problems.append(f"field '{field}': {message}")
    return "; ".join(problems)
