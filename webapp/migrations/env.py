"""Alembic environment: the app passes its open connection; the alembic command line (see
webapp/alembic.ini) connects to STORYREEL_APP_DATABASE_URL or the default SQLite file."""

from alembic import context
from sqlalchemy import Connection

from webapp.db import Base, make_engine
from webapp.settings import AppSettings


def run_on(connection: Connection) -> None:
    # Batch mode: SQLite can only change a table by copying it.
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url") or AppSettings.from_env().db_url
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    with make_engine(url).begin() as connection:
        run_on(connection)


run()
