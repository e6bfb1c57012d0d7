"""The agent side of a call: turn taking and barge-in (``base``), the loopback echo
persona (``echo``) and the voice agent, STT → LLM → TTS (``voice``)."""

from __future__ import annotations

from typing import Any

from pipeline.agent.base import Agent, AgentContext, Emit, Playout, Speaker
from pipeline.agent.echo import EchoAgent
from pipeline.agent.voice import VoiceAgent

__all__ = ["Agent", "AgentContext", "Emit", "EchoAgent", "Playout", "Speaker", "VoiceAgent", "create_agent"]


def create_agent(persona: Any, speaker: Speaker, emit: Emit, ctx: AgentContext) -> Agent:
    """The agent for ``persona``: the loopback echo, or the voice agent (STT → LLM → TTS)."""
    if getattr(persona, "kind", "agent") == "echo":
        return EchoAgent(persona, speaker, emit, ctx)
    if ctx.services is None:
        raise RuntimeError(f"persona {persona.id!r} needs the model services, which are not loaded")
    return VoiceAgent(persona, speaker, emit, ctx)
