"""Where the app keeps its data and which watcher and workflow settings it follows.

Every setting has an environment variable, so the same code serves a laptop (SQLite in
``data/``) and a server (Postgres through ``STORYREEL_APP_DATABASE_URL``).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from cluster_manager.config import WatcherConfig

DEFAULT_WATCHER_CONFIG = Path("watcher.yaml")


@dataclass(frozen=True)
class AppSettings:
    data_dir: Path = Path("data")
    database_url: str | None = None  # None: SQLite in data_dir/webapp.db
    watcher_config: Path | None = None  # None: watcher.yaml if present, else the defaults
    workflow_config: Path | None = None  # None: config.yaml in the watcher's workdir
    secret_key: str | None = None  # None: generated once into data_dir/secret_key
    max_upload_bytes: int | None = None  # None: the workflow's limits.image_bytes
    session_hours: float = 12.0
    # Opens the first-run page (/setup) to any address that gives it; None: loopback only.
    setup_token: str | None = None

    @classmethod
    def from_env(cls, **overrides: Any) -> AppSettings:
        env = os.environ
        values: dict[str, Any] = {
            "data_dir": Path(env.get("STORYREEL_APP_DATA", "data")),
            "database_url": env.get("STORYREEL_APP_DATABASE_URL") or None,
            "watcher_config": _path(env.get("STORYREEL_WATCHER_CONFIG")),
            "workflow_config": _path(env.get("STORYREEL_WORKFLOW_CONFIG")),
            "secret_key": env.get("STORYREEL_APP_SECRET") or None,
            "setup_token": env.get("STORYREEL_APP_SETUP_TOKEN") or None,
        }
        values.update((key, value) for key, value in overrides.items() if value is not None)
        return cls(**values)

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'webapp.db').resolve()}"

    @property
    def images_dir(self) -> Path:
        return (self.data_dir / "images").resolve()

    @property
    def upload_dir(self) -> Path:
        """Uploads wait here while they are checked; same disk as images_dir."""
        return (self.data_dir / "uploads").resolve()

    @property
    def watcher_file(self) -> Path | None:
        if self.watcher_config is None and DEFAULT_WATCHER_CONFIG.exists():
            return DEFAULT_WATCHER_CONFIG
        return self.watcher_config

    @cached_property
    def watcher(self) -> WatcherConfig:
        # Imported when needed: the watcher's settings load a cloud client, slow to import.
        from cluster_manager.config import load_config

        return load_config(self.watcher_file)

    @cached_property
    def workflow(self) -> dict[str, Any]:
        """The workflow's config.yaml: presenters, voice, limits and video timing."""
        path = self.workflow_config or self.watcher.workdir / "config.yaml"
        with open(path, encoding="utf-8") as config_file:
            return yaml.safe_load(config_file)

    @property
    def upload_limit(self) -> int:
        return self.max_upload_bytes or int(self.workflow["limits"]["image_bytes"])

    def session_secret(self) -> str:
        if self.secret_key:
            return self.secret_key
        key_file = self.data_dir / "secret_key"
        if not key_file.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            # Created readable by the owner only, before the key is written into it.
            descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as out:
                out.write(secrets.token_urlsafe(48))
        return key_file.read_text().strip()


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None
