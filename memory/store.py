"""`ChromaStore`: LangGraph's cross-thread `BaseStore` interface over a Chroma collection.

Items live in one collection: the id is `namespace/key`, the value is JSON in the metadata (its scalar fields
flattened as `v_<field>` so `filter` works), the vector embeds the `index` fields (default: the store's
`index_fields`). Embeddings always come from the caller's model, never from Chroma's default (which downloads
weights on first use). Search scores are cosine similarity, as in LangGraph's own stores.

Embedded (`chromadb.PersistentClient` in a folder) by default: every batch takes a file lock and opens a fresh
client, so threads and processes can share one folder without losing writes. A Chroma server
(`chromadb.HttpClient`) when `host` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock
from langgraph.store.base import (
    BaseStore,
    GetOp,
    Item,
    ListNamespacesOp,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
)

from gems.configs import GemsError, GemsSettings
from gems.configs.errors import short
from gems.memory.embeddings import get_embeddings

Embed = Callable[[list[str]], list[list[float]]]
_thread_lock = threading.Lock()
_FILTER_OPS = {"$eq", "$ne", "$gt", "$gte", "$lt", "$lte"}


class StoreError(GemsError, RuntimeError):
    """The store cannot be used; the message says what to do."""


def one_line(exc: BaseException) -> str:
    """An exception as one short line, for the one-line errors the CLI prints."""
    return short(f"{type(exc).__name__}: {exc}", 200)


def _when(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


class ChromaStore(BaseStore):
    """A LangGraph store in Chroma, embedded in a folder or on a Chroma server.

    Args:
        embed: texts -> vectors (e.g. `Embeddings.embed_documents`); called outside the lock.
        path: the embedded store's folder (ignored with `host`).
        host, port, ssl, headers: a Chroma server.
        collection: the collection name.
        index_fields: value fields embedded when `put` gives no `index`.
    """

    def __init__(
        self,
        embed: Embed,
        *,
        path: Path | None = None,
        host: str | None = None,
        port: int = 8000,
        ssl: bool = False,
        headers: dict[str, str] | None = None,
        collection: str = "gems_store",
        index_fields: tuple[str, ...] = ("prompt",),
    ):
        if path is None and host is None:
            raise ValueError("ChromaStore needs a folder (path) or a server (host)")
        self.embed = embed
        self.path, self.host, self.port, self.ssl, self.headers = path, host, port, ssl, headers or {}
        self.collection_name = collection
        self.index_fields = index_fields

    @property
    def where(self) -> str:
        return f"Chroma server {self.host}:{self.port}" if self.host else str(self.path)

    # ---- Chroma plumbing ----

    def _open(self, client: Any) -> Any:
        return client.get_or_create_collection(
            self.collection_name, embedding_function=None, metadata={"hnsw:space": "cosine"}
        )

    @contextlib.contextmanager
    def _collection(self) -> Iterator[Any]:
        # chromadb is heavy (~1 s to import): only a store that is used pays for it.
        import chromadb
        from chromadb.config import Settings as ChromaClientSettings

        client_settings = ChromaClientSettings(anonymized_telemetry=False, allow_reset=False)
        if self.host:
            try:
                client = chromadb.HttpClient(
                    host=self.host, port=self.port, ssl=self.ssl, headers=self.headers or None, settings=client_settings
                )
                yield self._open(client)
            except StoreError:
                raise
            except Exception as exc:
                raise StoreError(f"cannot use the {self.where}: {one_line(exc)}") from exc
            return
        assert self.path is not None
        self.path.mkdir(parents=True, exist_ok=True)
        with _thread_lock, FileLock(self.path / ".gems.lock"):
            client = None
            try:
                try:
                    client = chromadb.PersistentClient(path=str(self.path), settings=client_settings)
                    collection = self._open(client)
                except Exception as exc:
                    raise StoreError(
                        f"the store at {self.path} is unreadable ({one_line(exc)}); "
                        "move the folder away and gems will start a new one"
                    ) from exc
                yield collection
            finally:
                if client is not None:
                    # A fresh client per batch: another process may have written since the last one.
                    with contextlib.suppress(Exception):
                        client.close()

    # ---- item encoding ----

    @staticmethod
    def _id(namespace: tuple[str, ...], key: str) -> str:
        return json.dumps([*namespace, key], ensure_ascii=False)

    def _text(self, value: Mapping[str, Any], index: Any) -> str:
        fields = self.index_fields if index is None or index is True else tuple(index or ())
        parts = [str(value[f]) for f in fields if value.get(f) not in (None, "")]
        return " ".join(parts) or json.dumps(value, ensure_ascii=False)[:2000]

    @staticmethod
    def _metadata(namespace: tuple[str, ...], key: str, value: Mapping[str, Any], created: float) -> dict[str, Any]:
        meta: dict[str, Any] = {"ns": json.dumps(list(namespace)), "ns_depth": len(namespace), "key": key}
        meta |= {f"ns_{i}": part for i, part in enumerate(namespace)}
        meta |= {"value": json.dumps(dict(value), ensure_ascii=False), "created_at": created, "updated_at": time.time()}
        meta |= {f"v_{k}": v for k, v in value.items() if isinstance(v, str | int | float | bool)}
        return meta

    @staticmethod
    def _item(meta: dict[str, Any], score: float | None = None) -> Item | SearchItem:
        namespace = tuple(json.loads(meta["ns"]))
        value = json.loads(meta["value"])
        created, updated = _when(meta["created_at"]), _when(meta["updated_at"])
        if score is None:
            return Item(value=value, key=meta["key"], namespace=namespace, created_at=created, updated_at=updated)
        return SearchItem(namespace, meta["key"], value, created, updated, score=score)

    @staticmethod
    def _where(prefix: tuple[str, ...], filter: dict[str, Any] | None) -> dict[str, Any] | None:
        clauses: list[dict[str, Any]] = [{f"ns_{i}": part} for i, part in enumerate(prefix)]
        for field, cond in (filter or {}).items():
            if isinstance(cond, dict):
                unknown = set(cond) - _FILTER_OPS
                if unknown:
                    raise ValueError(f"unsupported filter operator(s) {sorted(unknown)} on {field!r}")
                clauses += [{f"v_{field}": {op: arg}} for op, arg in cond.items()]
            else:
                clauses.append({f"v_{field}": cond})
        if not clauses:
            return None
        return clauses[0] if len(clauses) == 1 else {"$and": clauses}

    # ---- operations ----

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        ops = list(ops)
        # Embed first, outside the lock: the model is the slow part and needs no store access.
        texts = {}
        for n, op in enumerate(ops):
            if isinstance(op, PutOp) and op.value is not None and op.index is not False:
                texts[n] = self._text(op.value, op.index)
            elif isinstance(op, PutOp) and op.value is not None:
                texts[n] = op.key
            elif isinstance(op, SearchOp) and op.query:
                texts[n] = op.query
        vectors = dict(zip(texts, self.embed(list(texts.values())), strict=True)) if texts else {}
        with self._collection() as col:
            return [self._apply(col, op, vectors.get(n), texts.get(n)) for n, op in enumerate(ops)]

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return await asyncio.to_thread(self.batch, list(ops))

    def _apply(self, col: Any, op: Op, vector: list[float] | None, text: str | None) -> Result:
        if isinstance(op, GetOp):
            found = col.get(ids=[self._id(op.namespace, op.key)], include=["metadatas"])
            return self._item(found["metadatas"][0]) if found["ids"] else None
        if isinstance(op, PutOp):
            item_id = self._id(op.namespace, op.key)
            if op.value is None:
                col.delete(ids=[item_id])
                return None
            old = col.get(ids=[item_id], include=["metadatas"])
            created = old["metadatas"][0]["created_at"] if old["ids"] else time.time()
            meta = self._metadata(op.namespace, op.key, op.value, created)
            col.upsert(ids=[item_id], embeddings=[vector], documents=[text], metadatas=[meta])
            return None
        if isinstance(op, SearchOp):
            where = self._where(op.namespace_prefix, op.filter)
            if vector is not None:
                if col.count() == 0:
                    return []
                found = col.query(
                    query_embeddings=[vector],
                    n_results=op.limit + op.offset,
                    where=where,
                    include=["metadatas", "distances"],
                )
                hits = [
                    self._item(meta, score=round(max(0.0, 1.0 - float(distance)), 6))
                    for meta, distance in zip(found["metadatas"][0], found["distances"][0], strict=True)
                ]
                return hits[op.offset :]
            found = col.get(where=where, include=["metadatas"])
            metas = sorted(found["metadatas"], key=lambda m: m["updated_at"], reverse=True)
            return [self._item(m, score=None) for m in metas[op.offset : op.offset + op.limit]]  # type: ignore[misc]
        if isinstance(op, ListNamespacesOp):
            found = col.get(include=["metadatas"])
            spaces = {tuple(json.loads(m["ns"])) for m in found["metadatas"]}
            for cond in op.match_conditions or ():
                spaces = {ns for ns in spaces if _matches(ns, cond.path, cond.match_type)}
            if op.max_depth is not None:
                spaces = {ns[: op.max_depth] for ns in spaces}
            return sorted(spaces)[op.offset : op.offset + op.limit]
        raise NotImplementedError(f"unknown store operation {type(op).__name__}")


def _matches(namespace: tuple[str, ...], path: tuple[str, ...], match_type: str) -> bool:
    """A namespace matches a prefix or suffix path, where `*` stands for any one part."""
    if len(namespace) < len(path):
        return False
    part = namespace[: len(path)] if match_type == "prefix" else namespace[len(namespace) - len(path) :]
    return all(p in ("*", q) for p, q in zip(path, part, strict=True))


def open_store(settings: GemsSettings, path: Path | None = None) -> ChromaStore:
    """The lesson store the settings describe: embedded under the data dir, or `memory.chroma.host`."""
    chroma = settings.memory.chroma
    embeddings = settings.embeddings

    def embed(texts: list[str]) -> list[list[float]]:
        return get_embeddings(embeddings).embed_documents(texts)  # loaded on first use, cached per process

    return ChromaStore(
        embed,
        path=path or settings.chroma_path,
        host=chroma.host,
        port=chroma.port,
        ssl=chroma.ssl,
        headers=chroma.headers,
        collection=chroma.collection,
    )
