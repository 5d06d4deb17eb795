"""The one checkpointer factory: SQLite by default, Postgres for shared use, in-memory for tests; sync or async.

`open_checkpointer(settings)` is a context manager for the CLI and the bench; `open_checkpointer(settings,
asynchronous=True)` an async one for `gems serve` and, through `server_checkpointer`, the Agent Server
(`langgraph.json` -> `checkpointer.path`).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from gems.configs import ConfigError, GemsSettings, load_settings

# With WAL, NORMAL syncs at WAL checkpoints instead of every commit: a killed process loses nothing, a power cut
# may lose the last steps (a resume redoes them). A step's commit then costs no fsync (bench/throughput.py).
_SYNCHRONOUS = "PRAGMA synchronous=NORMAL"


def open_checkpointer(settings: GemsSettings, *, asynchronous: bool = False, sqlite_path: Path | None = None) -> Any:
    """The checkpointer `storage.checkpointer` asks for, as a context manager that closes its connection.

    Args:
        settings: `storage.checkpointer` (sqlite, postgres, memory), `storage.sqlite_path`, `storage.postgres_dsn`.
        asynchronous: an async context manager yielding an async saver (for servers and `ainvoke`).
        sqlite_path: another SQLite file than the settings' (servers keep their threads apart from the CLI's).

    Raises:
        ConfigError: the database cannot be opened, or postgres is asked for without its DSN or extra.
    """
    kind = settings.storage.checkpointer
    path = sqlite_path or settings.sqlite_path
    if kind == "postgres" and settings.storage.postgres_dsn is None:
        raise ConfigError("storage.checkpointer is postgres but storage.postgres_dsn is not set")
    if asynchronous:
        return _async_saver(kind, path, settings)
    return _sync_saver(kind, path, settings)


@contextlib.contextmanager
def _sync_saver(kind: str, path: Path, settings: GemsSettings) -> Iterator[Any]:
    if kind == "memory":
        from langgraph.checkpoint.memory import InMemorySaver

        yield InMemorySaver()
    elif kind == "sqlite":
        from langgraph.checkpoint.sqlite import SqliteSaver

        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(str(path), check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(_SYNCHRONOUS)
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"cannot open checkpoint database {path}: {exc}") from exc
        try:
            saver = SqliteSaver(conn)
            saver.setup()
            yield saver
        finally:
            conn.close()
    else:
        saver_cls = _postgres("PostgresSaver")
        with saver_cls.from_conn_string(settings.storage.postgres_dsn.get_secret_value()) as saver:  # type: ignore[union-attr]
            saver.setup()
            yield saver


@contextlib.asynccontextmanager
async def _async_saver(kind: str, path: Path, settings: GemsSettings) -> AsyncIterator[Any]:
    if kind == "memory":
        from langgraph.checkpoint.memory import InMemorySaver

        yield InMemorySaver()
    elif kind == "sqlite":
        import aiosqlite
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = await aiosqlite.connect(str(path))
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"cannot open checkpoint database {path}: {exc}") from exc
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute(_SYNCHRONOUS)
            yield AsyncSqliteSaver(conn)
        finally:
            await conn.close()
    else:
        saver_cls = _postgres("AsyncPostgresSaver")
        async with saver_cls.from_conn_string(settings.storage.postgres_dsn.get_secret_value()) as saver:  # type: ignore[union-attr]
            await saver.setup()
            yield saver


def _postgres(name: str) -> Any:
    # The postgres extra is optional: psycopg and its driver load only when asked for.
    try:
        if name == "PostgresSaver":
            from langgraph.checkpoint.postgres import PostgresSaver

            return PostgresSaver
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

        return AsyncPostgresSaver
    except ImportError:
        raise ConfigError(
            "storage.checkpointer: postgres needs the postgres extra: pip install 'gems-agent[postgres]'"
        ) from None


@contextlib.asynccontextmanager
async def server_checkpointer() -> AsyncIterator[Any]:
    """The Agent Server's checkpointer (`langgraph.json` -> `checkpointer.path`), from `GEMS_CONFIG` / `GEMS_*`.

    `langgraph dev` would otherwise keep threads in pickle files in the working folder; with SQLite this puts
    them next to the CLI's checkpoints, in `<data_dir>/server-checkpoints.sqlite`.
    """
    settings = load_settings()
    async with open_checkpointer(
        settings, asynchronous=True, sqlite_path=settings.data_dir / "server-checkpoints.sqlite"
    ) as saver:
        yield saver
