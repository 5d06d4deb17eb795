"""A sentence encoder for BERT-family sentence-transformers folders in numpy: no torch on a run's critical path.

Importing sentence-transformers pulls torch, transformers and scikit-learn (~5.5 s) before the model loads; this
reads the same `model.safetensors` and `tokenizer.json` with `safetensors` and `tokenizers` (both already installed
with chromadb and transformers) and runs the forward pass in numpy: ~0.2 s to load the bundled all-MiniLM-L6-v2,
a few ms per short text, vectors equal to sentence-transformers' to cosine >= 0.999 (tests/test_memory.py).
It handles the folders sentence-transformers would load as Transformer(BERT) -> mean pooling -> Normalize; others
go through sentence-transformers (`supports`).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings
from threadpoolctl import ThreadpoolController

_FILES = ("config.json", "model.safetensors", "tokenizer.json", "modules.json", "1_Pooling/config.json")


def supports(folder: Path) -> bool:
    """True for a sentence-transformers folder this encoder reproduces exactly: BERT, mean pooling, normalized."""
    if not all((folder / name).is_file() for name in _FILES):
        return False
    config = json.loads((folder / "config.json").read_text())
    pooling = json.loads((folder / "1_Pooling/config.json").read_text())
    modules = [m.get("type", "").rsplit(".", 1)[-1] for m in json.loads((folder / "modules.json").read_text())]
    mean_only = pooling.get("pooling_mode_mean_tokens") and not any(
        pooling.get(k)
        for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")
    )
    return (
        config.get("model_type") == "bert"
        and config.get("hidden_act") == "gelu"
        and config.get("position_embedding_type", "absolute") == "absolute"
        and bool(mean_only)
        and modules[:2] == ["Transformer", "Pooling"]
        and set(modules[2:]) <= {"Normalize"}
    )


def _erf(x: np.ndarray) -> np.ndarray:
    # Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): numpy has no erf, and BERT's GELU is the exact, erf one.
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)))


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


_controller: ThreadpoolController | None = None


def _blas() -> ThreadpoolController:
    global _controller
    if _controller is None:  # scans the loaded libraries (~2 ms): once
        _controller = ThreadpoolController()
    return _controller


class NumpySentenceEncoder(Embeddings):
    """Mean-pooled, L2-normalized BERT sentence vectors, computed in float32 numpy."""

    def __init__(self, folder: str | Path):
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        folder = Path(folder)
        self.name = f"local:{folder.name}"
        self.config = json.loads((folder / "config.json").read_text())
        st_config = folder / "sentence_bert_config.json"
        max_len = json.loads(st_config.read_text()).get("max_seq_length", 512) if st_config.is_file() else 512
        self.max_len = min(int(max_len), int(self.config["max_position_embeddings"]))
        weights: dict[str, Any] = load_file(str(folder / "model.safetensors"))
        # Linear layers stored transposed and contiguous: one BLAS gemm per layer instead of a strided loop.
        self.weights = {
            k: np.ascontiguousarray(v.T) if k.startswith("encoder.") and k.endswith(".weight") and v.ndim == 2 else v
            for k, v in weights.items()
        }
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.max_len)
        self.tokenizer.enable_padding(pad_id=int(self.config.get("pad_token_id", 0)))
        self.heads = int(self.config["num_attention_heads"])
        self.layers = int(self.config["num_hidden_layers"])
        self.eps = float(self.config.get("layer_norm_eps", 1e-12))
        self._lock = threading.Lock()

    def _w(self, name: str) -> np.ndarray:
        return self.weights[name]

    def _dense(self, x: np.ndarray, name: str) -> np.ndarray:
        weight = self._w(f"{name}.weight")  # (in, out)
        return (x.reshape(-1, x.shape[-1]) @ weight + self._w(f"{name}.bias")).reshape(*x.shape[:-1], weight.shape[1])

    def _encode(self, texts: list[str]) -> np.ndarray:
        # One BLAS thread: these matrices are small, and OpenBLAS' worker threads on a busy machine turned a 20 ms
        # query into 300 ms (they wait for cores other processes hold). One encode at a time: the limit is
        # process-wide and the tokenizer's padding state is shared.
        with self._lock, _blas().limit(limits=1, user_api="blas"):
            return self._forward(texts)

    def _forward(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        types = np.array([e.type_ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.float32)
        batch, length = ids.shape
        # Embeddings: word + position + token type, then LayerNorm.
        x = self._w("embeddings.word_embeddings.weight")[ids]
        x = x + self._w("embeddings.position_embeddings.weight")[:length][None]
        x = x + self._w("embeddings.token_type_embeddings.weight")[types]
        x = _layer_norm(x, self._w("embeddings.LayerNorm.weight"), self._w("embeddings.LayerNorm.bias"), self.eps)
        head_dim = x.shape[-1] // self.heads
        bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]  # padding takes no attention
        for i in range(self.layers):
            p = f"encoder.layer.{i}"

            def heads(t: np.ndarray) -> np.ndarray:
                return t.reshape(batch, length, self.heads, head_dim).transpose(0, 2, 1, 3)

            q = heads(self._dense(x, f"{p}.attention.self.query"))
            k = heads(self._dense(x, f"{p}.attention.self.key"))
            v = heads(self._dense(x, f"{p}.attention.self.value"))
            scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(head_dim) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            context = (scores / scores.sum(-1, keepdims=True)) @ v
            context = context.transpose(0, 2, 1, 3).reshape(batch, length, -1)
            attended = self._dense(context, f"{p}.attention.output.dense") + x
            x = _layer_norm(
                attended,
                self._w(f"{p}.attention.output.LayerNorm.weight"),
                self._w(f"{p}.attention.output.LayerNorm.bias"),
                self.eps,
            )
            hidden = self._dense(_gelu(self._dense(x, f"{p}.intermediate.dense")), f"{p}.output.dense") + x
            x = _layer_norm(
                hidden, self._w(f"{p}.output.LayerNorm.weight"), self._w(f"{p}.output.LayerNorm.bias"), self.eps
            )
        pooled = (x * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        # Similar lengths share a batch, so short texts are not padded to a long one's length.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), int(self.config["hidden_size"])), dtype=np.float32)
        for start in range(0, len(order), 16):
            chunk = order[start : start + 16]
            out[chunk] = self._encode([texts[i] for i in chunk])
        return out.tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]
