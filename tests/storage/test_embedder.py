"""The local ONNX MiniLM embedder: shape, normalisation, meaning, registry."""

from __future__ import annotations

import numpy as np

from parley.config import Settings
from pipeline.backends import registry
from pipeline.backends.local_embed import LocalEmbedder, mean_pool


async def test_vectors_are_unit_length_and_carry_meaning(embedder: LocalEmbedder):
    vectors = await embedder.embed([
        "I live in Paris.",
        "My home is in Paris, France.",
        "The stock market fell sharply today.",
    ])
    assert vectors.shape == (3, embedder.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    paraphrase, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert paraphrase > 0.6 > 0.2 > unrelated


async def test_batches_and_padding_do_not_change_a_vector(embedder: LocalEmbedder):
    alone = await embedder.embed(["short"])
    padded = await embedder.embed(["short", "a much longer sentence " * 10])
    np.testing.assert_allclose(alone[0], padded[0], atol=1e-4)
    assert (await embedder.embed([])).shape == (0, embedder.dim)


def test_mean_pool_ignores_padding():
    hidden = np.array([[[1.0, 0.0], [3.0, 0.0], [100.0, 100.0]]], dtype=np.float32)
    mask = np.array([[1, 1, 0]])
    np.testing.assert_allclose(mean_pool(hidden, mask), [[1.0, 0.0]])


def test_registered_as_the_local_embed_backend():
    backend = registry.get("embed", "local", Settings(embed="local"))
    assert isinstance(backend, LocalEmbedder) and backend.dim == 384
