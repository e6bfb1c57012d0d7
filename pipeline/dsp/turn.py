"""Turn taking: speech onset, barge-in confirmation and end of turn, from per-frame VAD.

A pure state machine fed one 10 ms frame (with its :class:`FrameMeta`) at a time:

``IDLE`` --(``onset_ms`` of onset evidence)--> SPEECH_START, ``ONSET``
    The agent pauses at once. Evidence is ``is_speech``, or ``maybe_speech`` standing
    ``onset_snr_db`` out of the noise floor: permissive on purpose, a false alarm costs a
    short pause.
``ONSET`` --(``confirm_ms`` of ``is_speech``)--> SPEECH_CONFIRMED, ``SPEECH``
    A real barge-in: the agent stops and drops the rest of its reply.
``ONSET`` --(``cancel_ms`` without evidence, or ``max_onset_ms`` unconfirmed)-->
    SPEECH_CANCELLED, ``IDLE``: a cough, a door, a burst of noise; the agent resumes.
    After a time-out the noise must pause before the next onset, so a steady noise that
    fools the fast VAD cannot pause the agent over and over.
``SPEECH`` --(silence for the end-of-turn wait)--> END_OF_TURN with the audio, ``IDLE``

While the far end carries the agent's voice (``meta.echo_active``), residual echo can look
like speech, so onset and confirmation both need ``echo_evidence`` times more frames; while
the echo canceller has not converged yet (``meta.echo_uncertain``, the start of a call)
nothing counts as evidence at all -- otherwise the agent would interrupt itself.

The end-of-turn wait follows the transcript when the STT gives one
(:meth:`TurnDetector.hint_transcript`): a finished sentence ("... in Paris?") ends the turn
after ``sentence_end_ms``; a trailing "and", "so", "um", "but", "because" means the user is
still thinking, so the wait grows to ``trailing_word_ms``; otherwise ``eot_silence_ms``. A
hint only counts while it still covers the audio: after ``stale_ms`` of new speech it
describes an old prefix and is ignored.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import numpy as np

from pipeline.dsp.base import FRAME_MS, FrameMeta

ECHO_ONSET_PROBABILITY = 0.6
TRAILING_WORDS = frozenset({"and", "so", "um", "uh", "erm", "but", "because", "or"})
_SENTENCE_END = re.compile(r"[.?!]['\")\]]*\s*$")
_LAST_WORD = re.compile(r"([a-z']+)\W*$")


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


class _State(enum.Enum):
    IDLE = 0
    ONSET = 1
    SPEECH = 2


def transcript_wait_ms(text: str, *, default: int, sentence_end: int, trailing: int) -> int:
    """End-of-turn silence implied by an interim transcript."""
    stripped = text.strip().lower()
    if _SENTENCE_END.search(stripped):
        return sentence_end
    last = _LAST_WORD.search(stripped)
    if last is not None and last.group(1) in TRAILING_WORDS:
        return trailing
    return default


class TurnDetector:
    """Per-call turn-taking state machine (see module docstring)."""

    def __init__(
        self,
        *,
        eot_silence_ms: int = 500,
        confirm_ms: int = 250,
        onset_ms: int = 30,
        cancel_ms: int = 300,
        max_onset_ms: int = 1500,
        sentence_end_ms: int = 150,
        trailing_word_ms: int = 1200,
        stale_ms: int = 300,
        echo_evidence: float = 2.0,
        onset_snr_db: float = 6.0,
        preroll_ms: int = 200,
        max_utterance_s: float = 30.0,
    ) -> None:
        self.eot_silence_ms = eot_silence_ms
        self.confirm_ms = confirm_ms
        self.onset_ms = onset_ms
        self.cancel_ms = cancel_ms
        self.max_onset_ms = max_onset_ms
        self.sentence_end_ms = sentence_end_ms
        self.trailing_word_ms = trailing_word_ms
        self.stale_ms = stale_ms
        self.echo_evidence = echo_evidence
        self.onset_snr_db = onset_snr_db
        self._preroll = preroll_ms // FRAME_MS
        self._max_frames = int(max_utterance_s * 1000 / FRAME_MS)
        self._frames: list[np.ndarray] = []
        self._hint_wait_ms: int | None = None
        self._voiced_since_hint = 0
        self._refractory = False
        self._state = _State.IDLE
        self._run = 0  # consecutive frames of onset evidence (IDLE)
        self._voiced = 0  # frames of is_speech since the onset began
        self._quiet = 0  # frames without onset evidence (ONSET)
        self._onset_frames = 0  # frames spent in ONSET
        self._silence = 0  # frames without speech (SPEECH)
        self._reset()

    @property
    def in_speech(self) -> bool:
        """True from SPEECH_START until the utterance is cancelled or ends."""
        return self._state is not _State.IDLE

    def utterance(self) -> np.ndarray:
        """Audio of the utterance so far (for interim transcripts)."""
        return np.concatenate(self._frames) if self._frames else np.zeros(0, np.int16)

    def hint_transcript(self, text: str) -> None:
        """The latest interim transcript of the current utterance (see module docstring)."""
        self._hint_wait_ms = transcript_wait_ms(
            text,
            default=self.eot_silence_ms,
            sentence_end=self.sentence_end_ms,
            trailing=self.trailing_word_ms,
        )
        self._voiced_since_hint = 0

    def end_of_turn_wait_ms(self) -> int:
        """The silence that would end the turn now."""
        if self._hint_wait_ms is None or self._voiced_since_hint * FRAME_MS > self.stale_ms:
            return self.eot_silence_ms
        return self._hint_wait_ms

    def push(self, frame: np.ndarray, meta: FrameMeta) -> TurnEvent | None:
        self._frames.append(frame)
        if self._state is _State.IDLE:
            return self._idle(meta)
        if self._state is _State.ONSET:
            return self._onset(meta)
        return self._speaking(meta)

    def _needed(self, ms: int, meta: FrameMeta) -> float:
        """Frames of evidence for ``ms``, more while the agent's echo may be in the mic."""
        return ms / FRAME_MS * (self.echo_evidence if meta.echo_active else 1.0)

    def _evidence(self, meta: FrameMeta) -> bool:
        """Is this frame a possible speech onset?"""
        if meta.echo_uncertain:
            return False
        if meta.echo_active:
            # residual echo often passes one detector, or rides the speech gate's hangover:
            # while the agent may be audible, onset needs both opinions on this very frame
            return meta.maybe_speech and meta.speech_probability >= ECHO_ONSET_PROBABILITY
        if meta.is_speech:
            return True
        return meta.maybe_speech and meta.level_db >= meta.noise_level_db + self.onset_snr_db

    def _idle(self, meta: FrameMeta) -> TurnEvent | None:
        evidence = self._evidence(meta)
        if self._refractory:
            self._refractory = evidence
        elif evidence:
            self._run += 1
            self._voiced += meta.is_speech
        else:
            self._run = self._voiced = 0
        if self._run >= self._needed(self.onset_ms, meta):
            self._state = _State.ONSET
            self._quiet = self._onset_frames = 0
            return TurnEvent(TurnEventKind.SPEECH_START, meta.t)
        del self._frames[: max(0, len(self._frames) - self._preroll)]
        return None

    def _onset(self, meta: FrameMeta) -> TurnEvent | None:
        self._onset_frames += 1
        self._voiced += meta.is_speech and not meta.echo_uncertain
        self._quiet = 0 if self._evidence(meta) else self._quiet + 1
        if self._voiced >= self._needed(self.confirm_ms, meta):
            self._state = _State.SPEECH
            self._silence = 0
            return TurnEvent(TurnEventKind.SPEECH_CONFIRMED, meta.t)
        timed_out = self._onset_frames * FRAME_MS >= self.max_onset_ms
        if self._quiet * FRAME_MS >= self.cancel_ms or timed_out:
            self._reset()
            self._refractory = timed_out  # endless noise: no new onset until it pauses
            return TurnEvent(TurnEventKind.SPEECH_CANCELLED, meta.t)
        return None

    def _speaking(self, meta: FrameMeta) -> TurnEvent | None:
        if meta.is_speech and not meta.echo_uncertain:
            self._silence = 0
            self._voiced_since_hint += 1
        else:
            self._silence += 1
        ended = self._silence * FRAME_MS >= self.end_of_turn_wait_ms()
        if not ended and len(self._frames) < self._max_frames:
            return None
        keep = len(self._frames) - max(0, self._silence - 10)  # keep 100 ms of the silence
        audio = np.concatenate(self._frames[:keep])
        self._reset()
        return TurnEvent(TurnEventKind.END_OF_TURN, meta.t, audio)

    def _reset(self) -> None:
        self._frames.clear()
        self._state = _State.IDLE
        self._run = self._voiced = self._quiet = self._silence = self._onset_frames = 0
        self._hint_wait_ms = None
        self._voiced_since_hint = 0
