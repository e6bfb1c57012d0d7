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
like speech, so a frame counts for onset and confirmation only ``1/echo_evidence`` (those
need ``echo_evidence`` times more such frames, and evidence gathered over the echo is not
worth more once the echo ends) -- unless the frame went through a converged canceller
untouched (``meta.echo_passed``: the user's voice, not echo), which counts in full, so a
barge-in is confirmed after ``confirm_ms`` of speech; while the echo canceller has not converged yet
(``meta.echo_uncertain``, the start of a call) only frames the double-talk detector vouches
for (``meta.double_talk``: the user audible above any echo the agent's voice could cause)
count -- otherwise the agent would interrupt itself, and before that detector the user's
first words were simply lost.

How much silence ends the turn is decided by :mod:`pipeline.dsp.endpoint` from the cues
known at that frame. When a pause begins (``pause_ms`` of silence), and again at
``endpoint.reprobe_ms`` when set (the model judges ends better after ~0.5 s of silence:
on the real and Piper sets, true ends judged "complete" 46 % at 0.15 s, 67 % at 0.5 s --
but long mid-utterance pauses too, docs/turns.md), the detector emits PAUSE with the
utterance so far: the agent runs the end-of-turn model on it and feeds the results back
(:meth:`TurnDetector.hint_probability`, :meth:`TurnDetector.hint_transcript`). A cue
only counts while it still describes the audio: the model's verdict is dropped at the
next voiced frame, a transcript once ``stale_ms`` of speech has come after the audio it
was decoded from (an interim started mid-sentence can land after the user said more).

The utterance starts ``preroll_ms`` before the onset -- and, while the agent's voice is in
the mic, before the run of speech-like frames that led to it (up to ``lookback_ms``):
over the agent's echo, onset evidence can come a second after the user's first word,
and that word must still reach the transcript.
"""

from __future__ import annotations

import bisect
import enum
import time
from dataclasses import dataclass

import numpy as np

from pipeline.dsp.base import FRAME_MS, FrameMeta
from pipeline.dsp.endpoint import EndpointConfig, silence_needed_ms, transcript_cue

ECHO_ONSET_PROBABILITY = 0.6


class TurnEventKind(enum.Enum):
    SPEECH_START = "speech-start"
    SPEECH_CONFIRMED = "speech-confirmed"
    SPEECH_CANCELLED = "speech-cancelled"
    PAUSE = "pause"  # silence began inside an utterance: time to ask the end-of-turn cues
    END_OF_TURN = "end-of-turn"


@dataclass(slots=True)
class TurnEvent:
    kind: TurnEventKind
    t: float  # monotonic time of the frame that decided it
    audio: np.ndarray | None = None  # the utterance (so far, for PAUSE)
    why: str = ""  # END_OF_TURN: the cues that chose the wait (for the logs)


class _State(enum.Enum):
    IDLE = 0
    ONSET = 1
    SPEECH = 2


class TurnDetector:
    """Per-call turn-taking state machine (see module docstring)."""

    def __init__(
        self,
        *,
        endpoint: EndpointConfig | None = None,
        confirm_ms: int = 150,
        onset_ms: int = 30,
        cancel_ms: int = 300,
        max_onset_ms: int = 1500,
        pause_ms: int = 150,
        stale_ms: int = 300,
        echo_evidence: float = 3.0,
        onset_snr_db: float = 6.0,
        preroll_ms: int = 200,
        lookback_ms: int = 1500,
        max_utterance_s: float = 30.0,
    ) -> None:
        self.endpoint = endpoint or EndpointConfig()
        self.confirm_ms = confirm_ms
        self.onset_ms = onset_ms
        self.cancel_ms = cancel_ms
        self.max_onset_ms = max_onset_ms
        self.pause_ms = pause_ms
        self.stale_ms = stale_ms
        self.echo_evidence = echo_evidence
        self.onset_snr_db = onset_snr_db
        self._preroll = preroll_ms // FRAME_MS
        self._lookback = lookback_ms // FRAME_MS
        self._max_frames = int(max_utterance_s * 1000 / FRAME_MS)
        self._frames: list[np.ndarray] = []
        self._speechlike: list[bool] = []  # per frame kept in IDLE: did it sound like speech?
        self._since_echo = self._lookback  # frames since the agent's voice was last in the mic
        self._probability: float | None = None
        self._transcript: str | None = None
        self._voiced_since_hint = 0
        self._voiced_at: list[int] = []  # frames (index in the utterance) the user was voiced in
        self._generation = 0  # utterances so far: a transcript of an earlier one is dropped
        self._refractory = False
        self._state = _State.IDLE
        self._run = 0  # consecutive frames of onset evidence (IDLE)
        self._onset_weight = 0.0  # that run weighed by doubt (see _weight)
        self._voiced = 0.0  # frames of is_speech since the onset began, weighed by doubt
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

    @property
    def silence_ms(self) -> int:
        """Silence since the last voiced frame of the current utterance (0 outside one)."""
        return self._silence * FRAME_MS if self._state is _State.SPEECH else 0

    def hint_probability(self, probability: float) -> None:
        """The end-of-turn model's verdict on the utterance up to the current pause."""
        if self._state is _State.SPEECH and self._silence > 0:
            self._probability = probability

    def position(self) -> tuple[int, int]:
        """Where the current utterance is now (which utterance, how many frames): pass it
        back with a transcript of the audio taken here (:meth:`hint_transcript`)."""
        return self._generation, len(self._frames)

    def hint_transcript(self, text: str, at: tuple[int, int] | None = None) -> None:
        """A transcript of the current utterance up to ``at`` (its :meth:`position` when
        the audio was taken; None: up to now). Speech since ``at`` counts towards its
        staleness -- an interim decoded while the user talked on lands describing audio
        that has since grown -- and one of an earlier utterance is dropped."""
        if at is not None and at[0] != self._generation:
            return
        self._transcript = text
        frames = len(self._frames) if at is None else at[1]
        self._voiced_since_hint = len(self._voiced_at) - bisect.bisect_left(self._voiced_at, frames)

    def end_of_turn_wait_ms(self) -> int:
        """The silence that would end the turn now, from the cues that are still fresh."""
        return silence_needed_ms(self.endpoint, self._probability, self._fresh_transcript())

    def _fresh_transcript(self) -> str | None:
        return self._transcript if self._voiced_since_hint * FRAME_MS <= self.stale_ms else None

    def _why(self) -> str:
        """The cues behind the wait that just ended the turn, for the logs."""
        p = "none" if self._probability is None else f"{self._probability:.2f}"
        return (f"after {self._silence * FRAME_MS} ms of silence: model {p}, "
                f"transcript {transcript_cue(self._fresh_transcript())}")

    def end_turn(self) -> TurnEvent | None:
        """End the current utterance now (the caller pressed ``#``); None when idle."""
        if self._state is _State.IDLE or not self._frames:
            return None
        audio = np.concatenate(self._frames)
        self._reset()
        return TurnEvent(TurnEventKind.END_OF_TURN, time.monotonic(), audio)

    def push(self, frame: np.ndarray, meta: FrameMeta) -> TurnEvent | None:
        self._frames.append(frame)
        self._speechlike.append(meta.is_speech or meta.maybe_speech)
        self._since_echo = 0 if meta.echo_active else self._since_echo + 1
        if self._state is _State.IDLE:
            return self._idle(meta)
        if self._state is _State.ONSET:
            return self._onset(meta)
        return self._speaking(meta)

    def _weight(self, meta: FrameMeta) -> float:
        """What one frame of evidence is worth: less while the agent's echo may be in the mic
        -- unless the double-talk detector hears the user above any echo there could be, or
        the frame went through a converged canceller untouched (``meta.echo_passed``).
        Weighing each frame as it comes (rather than asking for more frames in total) keeps
        evidence gathered over the echo from counting in full the moment the echo ends: a
        run of residual echo must not be confirmed by the first frame past the echo's reach."""
        doubt = meta.echo_active and not (meta.double_talk or meta.echo_passed)
        return 1.0 / self.echo_evidence if doubt else 1.0

    @staticmethod
    def _user_voiced(meta: FrameMeta) -> bool:
        """Speech that is not the agent's own echo: ``is_speech`` once the canceller has
        converged; over the echo, whatever the double-talk detector vouches for (the noise
        suppressor, fed the echo too, is unsure of the user's voice then)."""
        if meta.double_talk:
            return meta.is_speech or meta.maybe_speech
        return meta.is_speech and not meta.echo_uncertain

    def _evidence(self, meta: FrameMeta) -> bool:
        """Is this frame a possible speech onset?"""
        if meta.echo_uncertain:
            return meta.double_talk and meta.maybe_speech
        if meta.echo_active:
            # residual echo often passes one detector, or rides the speech gate's hangover:
            # while the agent may be audible, onset needs both opinions on this very frame,
            # or the double-talk detector's word that the user is above any echo
            if meta.double_talk:
                return meta.maybe_speech
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
            self._onset_weight += self._weight(meta)
            self._voiced += meta.is_speech * self._weight(meta)
        else:
            self._run = self._voiced = self._onset_weight = 0
        if self._onset_weight >= self.onset_ms / FRAME_MS:
            self._state = _State.ONSET
            self._quiet = self._onset_frames = 0
            start = self._utterance_start()
            del self._frames[:start], self._speechlike[:start]
            return TurnEvent(TurnEventKind.SPEECH_START, meta.t)
        # the lookback stays while the frames it holds may hold an onset the echo masked
        keep = self._lookback if self._since_echo < self._lookback else self._preroll + self._run
        drop = max(0, len(self._frames) - keep)
        del self._frames[:drop], self._speechlike[:drop]
        return None

    def _utterance_start(self) -> int:
        """Index of the utterance's first frame among those kept: ``preroll_ms`` before the
        run of speech-like frames (gaps under 100 ms bridged) that ends at the onset."""
        start, gap = len(self._speechlike), 0
        for i in range(len(self._speechlike) - 1, -1, -1):
            if self._speechlike[i]:
                start, gap = i, 0
            else:
                gap += 1
                if gap * FRAME_MS >= 100:
                    break
        return max(0, start - self._preroll)

    def _onset(self, meta: FrameMeta) -> TurnEvent | None:
        self._onset_frames += 1
        self._voiced += self._user_voiced(meta) * self._weight(meta)
        self._quiet = 0 if self._evidence(meta) else self._quiet + 1
        if self._voiced >= self.confirm_ms / FRAME_MS:
            self._state = _State.SPEECH
            self._silence = 0
            return TurnEvent(TurnEventKind.SPEECH_CONFIRMED, meta.t)
        timed_out = self._onset_frames * FRAME_MS >= self.max_onset_ms
        if self._quiet * FRAME_MS >= self.cancel_ms or timed_out:
            self._reset(keep_audio=True)  # an onset confirmed soon after may have begun here
            self._refractory = timed_out  # endless noise: no new onset until it pauses
            return TurnEvent(TurnEventKind.SPEECH_CANCELLED, meta.t)
        return None

    def _speaking(self, meta: FrameMeta) -> TurnEvent | None:
        if self._user_voiced(meta):
            self._silence = 0
            self._voiced_since_hint += 1
            self._voiced_at.append(len(self._frames) - 1)
            self._probability = None  # it judged an ending that turned out not to be one
        else:
            self._silence += 1
        ended = self._silence * FRAME_MS >= self.end_of_turn_wait_ms()
        if not ended and len(self._frames) < self._max_frames:
            if self._silence * FRAME_MS in (self.pause_ms, self.endpoint.reprobe_ms or self.pause_ms):
                return TurnEvent(TurnEventKind.PAUSE, meta.t, self.utterance())
            return None
        keep = len(self._frames) - max(0, self._silence - 10)  # keep 100 ms of the silence
        audio, why = np.concatenate(self._frames[:keep]), self._why()
        self._reset()
        return TurnEvent(TurnEventKind.END_OF_TURN, meta.t, audio, why)

    def _reset(self, *, keep_audio: bool = False) -> None:
        if not keep_audio:
            self._frames.clear()
            self._speechlike.clear()
        self._state = _State.IDLE
        self._run = self._quiet = self._silence = self._onset_frames = 0
        self._voiced = self._onset_weight = 0.0
        self._probability = None
        self._transcript = None
        self._voiced_since_hint = 0
        self._voiced_at.clear()
        self._generation += 1
