"""Stage backends: the interfaces (``base``), the registry by (stage, name), the local models,
the OpenAI-compatible clients and the resilience guards around remote stages.

Importing this package is cheap: backend modules (which import model runtimes) are loaded
by :func:`pipeline.backends.registry.get` the first time a backend is asked for.
"""
