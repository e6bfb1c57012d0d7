"""Typed keys of the per-worker resources stored on the aiohttp application."""

from __future__ import annotations

from aiohttp import web

from media_server.call import AgentFactory
from media_server.manager import CallManager
from parley.config import Settings
from personas import Persona
from pipeline.services import Services
from signaling.auth import TokenIssuer

SETTINGS = web.AppKey("settings", Settings)
CALLS = web.AppKey("calls", CallManager)
TOKENS = web.AppKey("tokens", TokenIssuer)
PERSONAS = web.AppKey("personas", dict[str, Persona])
AGENTS = web.AppKey("agents", AgentFactory)
SERVICES = web.AppKey("services", Services)
