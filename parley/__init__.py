"""Parley: a real-time voice-agent media server (WebRTC, WHIP, WebSocket, SIP, rooms) with local or cloud AI stages."""

__version__ = "0.1.0"
