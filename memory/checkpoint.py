"""Checkpointer factories: SQLite by default, Postgres for shared use, in-memory for tests."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from typing import TYPE_CHECKING

from gems.configs import ConfigError, GemsSettings

if TYPE_CHECKING:
    from langgraph.checkpoint.base import BaseCheckpointSaver


@contextlib.contextmanager
def open_checkpointer(settings: GemsSettings) -> Iterator[BaseCheckpointSaver]:
    """Yield the checkpointer the settings ask for, closing its connection afterwards."""
    kind = settings.storage.checkpointer
    if kind == "memory":
        from langgraph.checkpoint.memory import InMemorySaver

        yield InMemorySaver()
    elif kind == "sqlite":
        from langgraph.checkpoint.sqlite import SqliteSaver

        path = settings.sqlite_path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(str(path), check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"cannot open checkpoint database {path}: {exc}") from exc
        try:
            saver = SqliteSaver(conn)
            saver.setup()
            yield saver
        finally:
            conn.close()
    elif kind == "postgres":
        dsn = settings.storage.postgres_dsn
        if dsn is None:
            raise ConfigError("storage.checkpointer is postgres but storage.postgres_dsn is not set")
        try:
            from langgraph.checkpoint.postgres import PostgresSaver
        except ImportError:
            raise ConfigError(
                "storage.checkpointer: postgres needs the postgres extra: pip install 'gems-agent[postgres]'"
            ) from None
        with PostgresSaver.from_conn_string(dsn.get_secret_value()) as saver:
            saver.setup()
            yield saver
    else:  # pragma: no cover - pydantic rejects other values
        raise ConfigError(f"unknown storage.checkpointer: {kind}")


@contextlib.asynccontextmanager
async def server_checkpointer():
    """The Agent Server's checkpointer (`langgraph.json` → `checkpointer.path`): async SQLite under the data dir.

    `langgraph dev` would otherwise keep threads in pickle files in the working folder; this puts them next to
    the CLI's checkpoints, in `<data_dir>/server-checkpoints.sqlite`.
    """
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    from gems.configs import load_settings

    settings = load_settings()
    path = settings.data_dir / "server-checkpoints.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    async with AsyncSqliteSaver.from_conn_string(str(path)) as saver:
        yield saver
