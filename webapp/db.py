"""The app's tables (SQLAlchemy 2) and the database they live in, migrated by Alembic.

Times are stored as naive UTC: SQLite keeps no time zone, and every value is written here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import CheckConstraint, ForeignKey, String, Text, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class User(Base):
    """An editor who may sign in."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FirstAccount(Base):
    """The account created on the first-run page (/setup). The key is always 1: of two first-run
    forms sent at once, the database stores one row and refuses the other, whatever the
    transaction isolation; the refused form's account is rolled back with it."""

    __tablename__ = "first_account"
    __table_args__ = (CheckConstraint("id = 1", name="only_one_first_account"),)
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SignIn(Base):
    """A signed-in browser. The cookie carries the token; only its hash is stored, so a copy of
    the database signs nobody in. Signing out deletes the row."""

    __tablename__ = "sign_ins"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    expires_at: Mapped[datetime]
    user: Mapped[User] = relationship()


class Image(Base):
    """An image of the library: checked and stored as a JPEG in the data directory."""

    __tablename__ = "images"
    id: Mapped[int] = mapped_column(primary_key=True)
    file_name: Mapped[str] = mapped_column(String(80), unique=True)
    original_name: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64), unique=True)  # of the uploaded bytes
    width: Mapped[int]
    height: Mapped[int]
    uploaded_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Story(Base):
    """A story as the editors last saved it; what was submitted is known by its digest."""

    __tablename__ = "stories"
    id: Mapped[int] = mapped_column(primary_key=True)
    story_id: Mapped[str] = mapped_column(String(63), unique=True)  # the workflow's story id
    title: Mapped[str] = mapped_column(Text, default="")
    text: Mapped[str] = mapped_column(Text, default="")
    presenter: Mapped[str | None] = mapped_column(String(63))
    voice: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    submitted_at: Mapped[datetime | None]
    submitted_digest: Mapped[str | None] = mapped_column(String(64))  # sha256 of the JSON sent
    images: Mapped[list[StoryImage]] = relationship(
        order_by="StoryImage.position", cascade="all, delete-orphan", back_populates="story"
    )


class StoryImage(Base):
    """One image of a story, in order, with its caption and credit."""

    __tablename__ = "story_images"
    id: Mapped[int] = mapped_column(primary_key=True)
    story_pk: Mapped[int] = mapped_column(ForeignKey("stories.id", ondelete="CASCADE"), index=True)
    position: Mapped[int]
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="RESTRICT"))
    caption: Mapped[str] = mapped_column(Text, default="")
    credit: Mapped[str] = mapped_column(Text, default="")
    story: Mapped[Story] = relationship(back_populates="images")
    image: Mapped[Image] = relationship(lazy="joined")


def make_engine(url: str) -> Engine:
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")  # SQLite ignores ON DELETE without it
    cursor.execute("PRAGMA journal_mode=WAL")  # the list polls while an editor saves
    cursor.close()


def migrate(engine: Engine) -> None:
    """Bring the database to the newest schema (alembic upgrade head)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
