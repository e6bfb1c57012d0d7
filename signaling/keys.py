"""Typed keys of the per-worker resources stored on the aiohttp application."""

from __future__ import annotations

from aiohttp import web

from media_server.call import AgentFactory
from media_server.manager import CallManager
from media_server.rooms import RoomManager
from media_server.sip.server import SipServer
from parley.config import Settings
from personas import Persona
from pipeline.memory import MemoryService
from pipeline.services import Services
from pipeline.window import ConversationWindow
from signaling.auth import TokenIssuer
from signaling.recordings import Recordings
from storage import Store

SETTINGS = web.AppKey("settings", Settings)
CALLS = web.AppKey("calls", CallManager)
ROOMS = web.AppKey("rooms", RoomManager)
TOKENS = web.AppKey("tokens", TokenIssuer)
PERSONAS = web.AppKey("personas", dict[str, Persona])
AGENTS: web.AppKey[AgentFactory] = web.AppKey("agents")
SERVICES = web.AppKey("services", Services)
STORE = web.AppKey("store", Store)
MEMORY = web.AppKey("memory", MemoryService)
WINDOW = web.AppKey("window", ConversationWindow)
SIP = web.AppKey("sip", SipServer)
RECORDINGS = web.AppKey("recordings", Recordings)
