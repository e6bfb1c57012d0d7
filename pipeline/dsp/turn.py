"""Turn taking: speech onset, barge-in confirmation and end of turn, from per-frame VAD.

A pure state machine fed one 10 ms frame (with its :class:`FrameMeta`) at a time. It says
``SPEECH_START`` quickly (``onset_ms`` of voiced frames) so the agent can pause at once,
``SPEECH_CONFIRMED`` once the speech has lasted ``confirm_ms`` (a cough does not get that
far: it ends in ``SPEECH_CANCELLED`` and the agent resumes), and ``END_OF_TURN`` with the
utterance audio after ``eot_silence_ms`` of silence.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from pipeline.dsp.base import FrameMeta

FRAME_MS = 10


class TurnEventKind(enum.Enum):
    SPEECH_START = "speech-start"
    SPEECH_CONFIRMED = "speech-confirmed"
    SPEECH_CANCELLED = "speech-cancelled"
    END_OF_TURN = "end-of-turn"


@dataclass(slots=True)
class TurnEvent:
    kind: TurnEventKind
    t: float  # monotonic time of the frame that decided it
    audio: np.ndarray | None = None  # the utterance, for END_OF_TURN


class TurnDetector:
    def __init__(
        self,
        *,
        eot_silence_ms: int = 500,
        confirm_ms: int = 250,
        onset_ms: int = 30,
        preroll_ms: int = 200,
        max_utterance_s: float = 30.0,
    ) -> None:
        self.eot_silence_ms = eot_silence_ms
        self.confirm_ms = confirm_ms
        self.onset_ms = onset_ms
        self._preroll = preroll_ms // FRAME_MS
        self._max_frames = int(max_utterance_s * 1000 / FRAME_MS)
        self._frames: list[np.ndarray] = []
        self._in_speech = False
        self._confirmed = False
        self._voiced_run = 0
        self._voiced_total = 0
        self._silence_run = 0

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    def utterance(self) -> np.ndarray:
        """Audio of the utterance so far (for interim transcripts)."""
        return np.concatenate(self._frames) if self._frames else np.zeros(0, np.int16)

    def push(self, frame: np.ndarray, meta: FrameMeta) -> TurnEvent | None:
        self._frames.append(frame)
        if not self._in_speech:
            return self._idle(meta)
        return self._speaking(meta)

    def _idle(self, meta: FrameMeta) -> TurnEvent | None:
        self._voiced_run = self._voiced_run + 1 if meta.is_speech else 0
        if self._voiced_run * FRAME_MS >= self.onset_ms:
            self._in_speech, self._confirmed = True, False
            self._voiced_total, self._silence_run = self._voiced_run, 0
            return TurnEvent(TurnEventKind.SPEECH_START, meta.t)
        del self._frames[: max(0, len(self._frames) - self._preroll)]
        return None

    def _speaking(self, meta: FrameMeta) -> TurnEvent | None:
        if meta.is_speech:
            self._voiced_total += 1
            self._silence_run = 0
        else:
            self._silence_run += 1
        if not self._confirmed and self._voiced_total * FRAME_MS >= self.confirm_ms:
            self._confirmed = True
            return TurnEvent(TurnEventKind.SPEECH_CONFIRMED, meta.t)
        if not self._confirmed and self._silence_run * FRAME_MS >= self.confirm_ms:
            self._reset()
            return TurnEvent(TurnEventKind.SPEECH_CANCELLED, meta.t)
        ended = self._silence_run * FRAME_MS >= self.eot_silence_ms
        if self._confirmed and (ended or len(self._frames) >= self._max_frames):
            keep = len(self._frames) - max(0, self._silence_run - 10)
            audio = np.concatenate(self._frames[:keep])
            self._reset()
            return TurnEvent(TurnEventKind.END_OF_TURN, meta.t, audio)
        return None

    def _reset(self) -> None:
        self._frames.clear()
        self._in_speech = self._confirmed = False
        self._voiced_run = self._voiced_total = self._silence_run = 0
