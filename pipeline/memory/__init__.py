"""Long-term memory: embeddings (local MiniLM), the Milvus index and the memory service.

Importing this package registers the ``("embed", "local")`` backend.
"""

from pipeline.memory.capture import Statement, extract_statements, redact
from pipeline.memory.embedder import Embedder, LocalEmbedder
from pipeline.memory.service import MAX_MEMORY_CHARS, MemoryPolicy, MemoryService, open_memory
from pipeline.memory.vectors import Hit, LiteBusyError, VectorItem, VectorStore

__all__ = [
    "MAX_MEMORY_CHARS",
    "Embedder",
    "Hit",
    "LiteBusyError",
    "LocalEmbedder",
    "MemoryPolicy",
    "MemoryService",
    "Statement",
    "VectorItem",
    "VectorStore",
    "extract_statements",
    "open_memory",
    "redact",
]
