from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FarEnd(_message.Message):
    __slots__ = ("pcm", "t")
    PCM_FIELD_NUMBER: _ClassVar[int]
    T_FIELD_NUMBER: _ClassVar[int]
    pcm: bytes
    t: float
    def __init__(self, pcm: _Optional[bytes] = ..., t: _Optional[float] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("session_id", "pcm", "rate", "seq", "t", "far_end")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PCM_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    T_FIELD_NUMBER: _ClassVar[int]
    FAR_END_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    pcm: bytes
    rate: int
    seq: int
    t: float
    far_end: _containers.RepeatedCompositeFieldContainer[FarEnd]
    def __init__(self, session_id: _Optional[str] = ..., pcm: _Optional[bytes] = ..., rate: _Optional[int] = ..., seq: _Optional[int] = ..., t: _Optional[float] = ..., far_end: _Optional[_Iterable[_Union[FarEnd, _Mapping]]] = ...) -> None: ...

class FrameInfo(_message.Message):
    __slots__ = ("t", "speech_probability", "vad", "maybe_speech", "noise_level_db", "level_db", "echo_active", "echo_uncertain", "has_echo_delay", "echo_delay_ms", "gain_db")
    T_FIELD_NUMBER: _ClassVar[int]
    SPEECH_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    VAD_FIELD_NUMBER: _ClassVar[int]
    MAYBE_SPEECH_FIELD_NUMBER: _ClassVar[int]
    NOISE_LEVEL_DB_FIELD_NUMBER: _ClassVar[int]
    LEVEL_DB_FIELD_NUMBER: _ClassVar[int]
    ECHO_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    ECHO_UNCERTAIN_FIELD_NUMBER: _ClassVar[int]
    HAS_ECHO_DELAY_FIELD_NUMBER: _ClassVar[int]
    ECHO_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    GAIN_DB_FIELD_NUMBER: _ClassVar[int]
    t: float
    speech_probability: float
    vad: bool
    maybe_speech: bool
    noise_level_db: float
    level_db: float
    echo_active: bool
    echo_uncertain: bool
    has_echo_delay: bool
    echo_delay_ms: float
    gain_db: float
    def __init__(self, t: _Optional[float] = ..., speech_probability: _Optional[float] = ..., vad: _Optional[bool] = ..., maybe_speech: _Optional[bool] = ..., noise_level_db: _Optional[float] = ..., level_db: _Optional[float] = ..., echo_active: _Optional[bool] = ..., echo_uncertain: _Optional[bool] = ..., has_echo_delay: _Optional[bool] = ..., echo_delay_ms: _Optional[float] = ..., gain_db: _Optional[float] = ...) -> None: ...

class ProcessedChunk(_message.Message):
    __slots__ = ("session_id", "seq", "pcm", "rate", "speech_probability", "noise_level", "vad", "frames", "latency_ms", "process_ms")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PCM_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    SPEECH_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    NOISE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    VAD_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    PROCESS_MS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    seq: int
    pcm: bytes
    rate: int
    speech_probability: float
    noise_level: float
    vad: bool
    frames: _containers.RepeatedCompositeFieldContainer[FrameInfo]
    latency_ms: float
    process_ms: float
    def __init__(self, session_id: _Optional[str] = ..., seq: _Optional[int] = ..., pcm: _Optional[bytes] = ..., rate: _Optional[int] = ..., speech_probability: _Optional[float] = ..., noise_level: _Optional[float] = ..., vad: _Optional[bool] = ..., frames: _Optional[_Iterable[_Union[FrameInfo, _Mapping]]] = ..., latency_ms: _Optional[float] = ..., process_ms: _Optional[float] = ...) -> None: ...

class FlushRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Stats(_message.Message):
    __slots__ = ("sessions_active", "sessions_total", "chunks_total", "frames_total", "frame_ms_mean", "uptime_s", "aec", "rnnoise_kernel")
    SESSIONS_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FRAMES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FRAME_MS_MEAN_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    AEC_FIELD_NUMBER: _ClassVar[int]
    RNNOISE_KERNEL_FIELD_NUMBER: _ClassVar[int]
    sessions_active: int
    sessions_total: int
    chunks_total: int
    frames_total: int
    frame_ms_mean: float
    uptime_s: float
    aec: str
    rnnoise_kernel: str
    def __init__(self, sessions_active: _Optional[int] = ..., sessions_total: _Optional[int] = ..., chunks_total: _Optional[int] = ..., frames_total: _Optional[int] = ..., frame_ms_mean: _Optional[float] = ..., uptime_s: _Optional[float] = ..., aec: _Optional[str] = ..., rnnoise_kernel: _Optional[str] = ...) -> None: ...
