"""Stage backends. Importing this package registers every backend that can be imported here."""

import importlib
import logging

logger = logging.getLogger(__name__)

for _module in ("local_stt", "local_llm", "local_tts", "openai_backends"):
    try:
        importlib.import_module(f"{__name__}.{_module}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(f"{__name__}."):
            continue  # backend module not present in this build
        logger.warning("backend module %s unavailable: %s", _module, exc)
