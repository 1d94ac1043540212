"""Engines and sessions of the catalog database (SQLite in WAL mode, or PostgreSQL)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

_MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK_ID = 0x7061_6373  # "pacs": one PostgreSQL advisory lock for schema upgrades


class CatalogUnavailableError(RuntimeError):
    """The catalog database cannot be reached or used."""


class Database:
    """The catalog's engines: one for reads, one for writes.

    On SQLite every write transaction starts with ``BEGIN IMMEDIATE``, so concurrent writers
    (threads or processes) queue on the database lock instead of failing when a read lock
    would have to be upgraded; reads use their own engine and are never blocked in WAL mode.
    On PostgreSQL both are the same engine.
    """

    def __init__(self, url: str, *, sqlite_synchronous: str = "FULL", busy_timeout: float = 30.0):
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            self._prepare_sqlite_folder()
            self.read_engine = self._sqlite_engine(sqlite_synchronous, busy_timeout, "BEGIN")
            self.write_engine = self._sqlite_engine(
                sqlite_synchronous, busy_timeout, "BEGIN IMMEDIATE"
            )
        else:
            engine = create_engine(self.url, pool_pre_ping=True, pool_size=10, max_overflow=20)
            self.read_engine = self.write_engine = engine
        self._reader = sessionmaker(self.read_engine, expire_on_commit=False)
        self._writer = sessionmaker(self.write_engine, expire_on_commit=False)

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for queries; nothing it does is committed."""
        with self._reader() as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction: committed on success, rolled back on any exception."""
        with self._writer() as session, session.begin():
            yield session

    def migrate(self) -> None:
        """Bring the schema to the newest revision (Alembic ``upgrade head``)."""
        from alembic import command  # 0.5 s to import: only the commands that migrate pay
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))
        with self.write_engine.connect() as connection:
            if not self.is_sqlite:
                connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK_ID})
                connection.commit()
            try:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
                connection.commit()
            finally:
                if not self.is_sqlite:
                    connection.execute(
                        text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK_ID}
                    )
                    connection.commit()

    def check(self) -> None:
        """Raise :class:`CatalogUnavailableError` unless a trivial query answers."""
        try:
            with self.read_engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as exc:
            raise CatalogUnavailableError(f"catalog unavailable: {type(exc).__name__}") from exc

    def dispose(self) -> None:
        self.read_engine.dispose()
        self.write_engine.dispose()

    def describe(self) -> str:
        """The URL without its password, for logs."""
        return self.url.render_as_string(hide_password=True)

    def _prepare_sqlite_folder(self) -> None:
        if self.url.database and self.url.database != ":memory:":
            Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)

    def _sqlite_engine(self, synchronous: str, busy_timeout: float, begin: str) -> Engine:
        engine = create_engine(
            self.url, connect_args={"timeout": busy_timeout, "check_same_thread": False}
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Any) -> None:
            connection.exec_driver_sql(begin)

        return engine
