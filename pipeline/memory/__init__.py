"""Long-term memory: what to remember (capture), the Milvus index and the memory service.

The embedders it uses are stage backends (``pipeline.backends``: local MiniLM or OpenAI).
"""

from pipeline.memory.capture import Statement, extract_statements, redact
from pipeline.memory.service import MAX_MEMORY_CHARS, MemoryPolicy, MemoryService, open_memory
from pipeline.memory.vectors import Hit, LiteBusyError, VectorItem, VectorStore, VectorStoreUnavailable

__all__ = [
    "MAX_MEMORY_CHARS",
    "Hit",
    "LiteBusyError",
    "MemoryPolicy",
    "MemoryService",
    "Statement",
    "VectorItem",
    "VectorStore",
    "VectorStoreUnavailable",
    "extract_statements",
    "open_memory",
    "redact",
]
