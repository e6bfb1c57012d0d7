"""Signaling: the aiohttp HTTP/WebSocket API, auth, and the web page."""
