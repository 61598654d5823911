"""The wire format, version 1: pure encode/decode functions shared by the publisher and the client.

Every message is a ZeroMQ multipart message:

- part 0, topic (ASCII): ``audio`` (the output stream), ``audio.<stage-name>`` (a debug tap),
  ``event`` or ``stats``;
- part 1, header: a compact UTF-8 JSON object, always with ``v`` (1) and ``stream`` (an id that changes
  at every daemon start);
- part 2, payload (audio topics only): raw little-endian interleaved PCM, exactly
  ``samples × channels × width`` bytes (width 2 for ``s16le``, 4 for ``f32le``).

Audio headers carry ``seq``, ``pts``, ``t``, ``rate``, ``channels``, ``format``, ``samples``, ``speech``
plus optional scalar side values; event headers carry ``type``, ``seq`` (the audio seq it refers to,
or null) and ``t`` plus free fields; stats headers carry ``t`` plus counters.

Nothing here touches a socket, so the same bytes can be produced offline and checked in tests.
:func:`float_to_s16` is the one float → int16 conversion of the project: the offline ``voxd process``
writer uses it too, so the daemon's stream and an offline file are bit-identical.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from voxd.frame import header_side

__all__ = [
    "AUDIO_KEYS",
    "EVENT_KEYS",
    "FORMATS",
    "STATS_KEYS",
    "TOPIC_AUDIO",
    "TOPIC_EVENT",
    "TOPIC_STATS",
    "WIRE_VERSION",
    "AudioMessage",
    "EventMessage",
    "Message",
    "StatsMessage",
    "WireError",
    "decode",
    "decode_pcm",
    "encode_audio",
    "encode_event",
    "encode_pcm",
    "encode_stats",
    "float_to_s16",
    "is_audio_topic",
    "sample_width",
]

WIRE_VERSION = 1

TOPIC_AUDIO = "audio"
TOPIC_EVENT = "event"
TOPIC_STATS = "stats"
_TAP_PREFIX = TOPIC_AUDIO + "."

#: Sample formats on the wire and their width in bytes per sample.
FORMATS: dict[str, int] = {"s16le": 2, "f32le": 4}
_DTYPES: dict[str, str] = {"s16le": "<i2", "f32le": "<f4"}

#: Header keys with a fixed meaning; anything else in a header is a side value / free field.
AUDIO_KEYS = frozenset({"v", "stream", "seq", "pts", "t", "rate", "channels", "format", "samples", "speech"})
EVENT_KEYS = frozenset({"v", "stream", "type", "seq", "t"})
STATS_KEYS = frozenset({"v", "stream", "t"})

# Bounds that only reject nonsense (a corrupt or hostile header), never a real stream.
_MAX_CHANNELS = 1024
_MAX_RATE = 10_000_000

_ONE = np.float32(1.0)
_ONE_NEG = np.float32(-1.0)
_S16_SCALE = np.float32(32768.0)
_S16_MAX = np.float32(32767.0)
_S16_INV = np.float32(1.0 / 32768.0)  # 2**-15: exact, so s16 → float is lossless


class WireError(ValueError):
    """A message that does not follow wire format v1 (or a value that cannot be encoded in it)."""


# ---------------------------------------------------------------------------------------------- PCM


def sample_width(fmt: str) -> int:
    """Bytes per sample of wire format ``fmt`` (``s16le`` → 2, ``f32le`` → 4); WireError if unknown."""
    try:
        return FORMATS[fmt]
    except (KeyError, TypeError):
        raise WireError(f"unknown sample format {fmt!r} (expected one of {', '.join(FORMATS)})") from None


def is_audio_topic(topic: str) -> bool:
    """True for ``audio`` and ``audio.<stage-name>`` (a tap); False for ``event``, ``stats``, ``audiox``."""
    return topic == TOPIC_AUDIO or (topic.startswith(_TAP_PREFIX) and len(topic) > len(_TAP_PREFIX))


def float_to_s16(x: np.ndarray) -> np.ndarray:
    """Convert float samples (nominal full scale ±1.0) to int16, exactly ``clip(rint(x * 32768))``.

    ``x``: float32 array of any shape, typically ``(channels, n)``; returns int16 of the same shape.
    Values are rounded half to even and clipped to [-32768, 32767], so +1.0 becomes 32767 and -1.0
    becomes -32768. NaN becomes 0 (a stage that produced NaN must not turn into full-scale noise).

    This is THE conversion of the project: the daemon's stream and ``voxd process`` both use it, so
    their output is bit-identical. Inputs are taken as float32 first for the same reason.
    """
    # Clipping before scaling is equivalent to clipping after (|x| > 1 always rounds beyond the
    # int16 range) and keeps huge values and ±inf from overflowing float32 with a warning. Plain
    # ufuncs with out=: this runs once per published frame.
    a = np.asarray(x, dtype=np.float32)
    y = np.maximum(a, _ONE_NEG, out=np.empty_like(a))  # out=: an array even for 0-d input
    np.minimum(y, _ONE, out=y)
    y *= _S16_SCALE
    np.rint(y, out=y)
    np.minimum(y, _S16_MAX, out=y)
    if np.isnan(y.sum()):  # NaN survives the clipping; the cheap sum test keeps the common case fast
        y[np.isnan(y)] = 0.0
    return y.astype(np.int16)


def encode_pcm(x: np.ndarray, fmt: str) -> bytes:
    """Encode float samples ``(channels, n)`` as interleaved little-endian PCM in ``fmt``.

    Returns ``n × channels × width`` bytes: sample 0 of every channel, then sample 1, ...
    ``s16le`` goes through :func:`float_to_s16`; ``f32le`` is the float32 value itself.
    """
    sample_width(fmt)  # validates fmt
    if np.ndim(x) != 2:
        raise WireError(f"audio samples must be 2-D (channels, n), got shape {np.shape(x)}")
    data = float_to_s16(x).astype("<i2", copy=False) if fmt == "s16le" else np.asarray(x, dtype="<f4")
    # The transpose is (n, channels); tobytes() writes it in C order, which is the interleaved layout.
    return data.T.tobytes()


def decode_pcm(buf: bytes | bytearray | memoryview, channels: int, fmt: str) -> np.ndarray:
    """Decode interleaved little-endian PCM into float32 ``(channels, n)``, C-contiguous and writable.

    ``s16le`` is scaled by 1/32768 (exact), ``f32le`` is returned as is. Raises WireError when the
    buffer is not a whole number of sample frames.
    """
    width = sample_width(fmt)
    if channels < 1:
        raise WireError(f"channels must be >= 1, got {channels}")
    nbytes = memoryview(buf).nbytes
    if nbytes % (width * channels):
        raise WireError(f"payload of {nbytes} bytes is not a whole number of {channels}-channel {fmt} frames")
    interleaved = np.frombuffer(buf, dtype=_DTYPES[fmt]).reshape(-1, channels)
    out = np.array(interleaved.T, dtype=np.float32, order="C")  # always a copy: frombuffer is read-only
    if fmt == "s16le":
        out *= _S16_INV
    return out


# ------------------------------------------------------------------------------------------ messages


@dataclass(slots=True)
class AudioMessage:
    """A decoded audio frame.

    ``samples``: float32 ``(channels, n)`` decoded from ``pcm`` (the raw interleaved payload bytes);
    ``seq``/``pts``/``t``/``rate``/``format``/``speech``: from the header (``header`` keeps all of it,
    side values included). ``gap`` (frames missed just before this one on this topic) and ``restart``
    (first frame of a new stream id) are set by :class:`voxd.client.Subscriber`; decode leaves 0/False.
    """

    topic: str
    header: dict[str, Any] = field(repr=False)
    stream: str
    seq: int
    pts: int
    t: float
    rate: int
    channels: int
    format: str
    samples: np.ndarray = field(repr=False)  # reprs stay one line in logs and test failures
    pcm: bytes = field(repr=False)
    speech: bool
    gap: int = 0
    restart: bool = False

    @property
    def n(self) -> int:
        """Samples per channel in this frame."""
        return int(self.samples.shape[1])

    @property
    def side(self) -> dict[str, Any]:
        """The optional side values of the header (``speech_prob``, ``doa_deg``, ...)."""
        return {k: v for k, v in self.header.items() if k not in AUDIO_KEYS}

    def pcm_array(self) -> np.ndarray:
        """The payload as stored on the wire: ``(n, channels)`` int16 or float32, read-only, no scaling.

        Writing this (rather than ``samples``) to a file keeps s16 output bit-exact.
        """
        return np.frombuffer(self.pcm, dtype=_DTYPES[self.format]).reshape(-1, self.channels)


@dataclass(slots=True)
class EventMessage:
    """A decoded event: ``type``, the audio ``seq`` it refers to (or None), ``t`` and free ``fields``."""

    topic: str
    header: dict[str, Any]
    stream: str
    type: str
    seq: int | None
    t: float
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class StatsMessage:
    """Decoded periodic statistics: ``t`` and the counters in ``fields``."""

    topic: str
    header: dict[str, Any]
    stream: str
    t: float
    fields: dict[str, Any] = field(default_factory=dict)


Message = AudioMessage | EventMessage | StatsMessage


# -------------------------------------------------------------------------------------------- encode


def encode_audio(
    samples: np.ndarray,
    *,
    stream: str,
    seq: int,
    pts: int,
    t: float,
    rate: int,
    fmt: str,
    speech: bool,
    side: dict[str, Any] | None = None,
    topic: str = TOPIC_AUDIO,
) -> list[bytes]:
    """Encode one audio frame as ``[topic, header, payload]``.

    ``samples``: float32 ``(channels, n)``; ``seq``: +1 per frame of this topic; ``pts``: index of the
    first sample since stream start; ``t``: capture time of the first sample (Unix seconds); ``rate``
    in Hz. ``side``: frame side values; only JSON scalars travel (see :func:`voxd.frame.header_side`),
    and a side value named like a fixed header key is ignored (the explicit argument wins).
    """
    if not is_audio_topic(topic):
        raise WireError(f"{topic!r} is not an audio topic (audio or audio.<stage-name>)")
    x = np.asarray(samples)
    if x.ndim != 2 or x.shape[0] < 1:
        raise WireError(f"audio samples must be (channels >= 1, n), got shape {x.shape}")
    payload = encode_pcm(x, fmt)
    header: dict[str, Any] = {
        "v": WIRE_VERSION,
        "stream": stream,
        "seq": int(seq),
        "pts": int(pts),
        "t": float(t),
        "rate": int(rate),
        "channels": int(x.shape[0]),
        "format": fmt,
        "samples": int(x.shape[1]),
        "speech": bool(speech),
    }
    if side:
        for key, value in header_side(side).items():
            header.setdefault(key, value)
    return [topic.encode("ascii"), _dumps(header), payload]


def encode_event(
    type: str, *, stream: str, seq: int | None, t: float | None = None, **fields: Any
) -> list[bytes]:
    """Encode an event as ``[b"event", header]``.

    ``type``: ``speech_start``, ``speech_end``, ``end_of_stream``, ``reload``, ``stage_error``,
    ``overrun``, ...; ``seq``: the audio seq it refers to, or None; ``t``: Unix seconds (now if None);
    ``fields``: free JSON-serialisable values (numpy scalars and arrays are converted).
    """
    if not isinstance(type, str) or not type:
        raise WireError(f"event type must be a non-empty string, got {type!r}")
    _check_free(fields, EVENT_KEYS)
    header: dict[str, Any] = {
        "v": WIRE_VERSION,
        "stream": stream,
        "type": type,
        "seq": None if seq is None else int(seq),
        "t": time.time() if t is None else float(t),
        **fields,
    }
    return [TOPIC_EVENT.encode("ascii"), _dumps(header)]


def encode_stats(*, stream: str, t: float | None = None, **fields: Any) -> list[bytes]:
    """Encode periodic counters as ``[b"stats", header]``; ``t``: Unix seconds (now if None)."""
    _check_free(fields, STATS_KEYS)
    header: dict[str, Any] = {
        "v": WIRE_VERSION,
        "stream": stream,
        "t": time.time() if t is None else float(t),
        **fields,
    }
    return [TOPIC_STATS.encode("ascii"), _dumps(header)]


def _check_free(fields: dict[str, Any], reserved: frozenset[str]) -> None:
    clash = sorted(reserved.intersection(fields))
    if clash:
        raise WireError(f"field(s) {', '.join(clash)} are reserved header keys")


def _dumps(header: dict[str, Any]) -> bytes:
    """Compact JSON. NaN/±inf are not JSON (consumers in other languages reject them): sent as null."""
    try:
        text = _ENCODER.encode(header)
    except ValueError:
        # Rare path: only taken when some value is not finite, so the common case pays nothing.
        text = _ENCODER.encode(_finite(header))
    return text.encode("utf-8")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"value of type {type(value).__name__} is not JSON serialisable")


# One encoder for every message: json.dumps with options would build a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=_json_default)


def _finite(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# -------------------------------------------------------------------------------------------- decode


def decode(parts: list[bytes]) -> Message:
    """Decode one multipart message into an :class:`AudioMessage`, :class:`EventMessage` or
    :class:`StatsMessage`. Anything that is not wire format v1 raises :class:`WireError` (one line).
    """
    if not isinstance(parts, list | tuple) or len(parts) < 2:
        count = len(parts) if isinstance(parts, list | tuple) else type(parts).__name__
        raise WireError(f"expected 2 or 3 message parts, got {count}")
    topic = _text(parts[0], "topic")
    if is_audio_topic(topic):
        _expect_parts(parts, 3, topic)
        return _decode_audio(topic, _header(parts[1]), parts[2])
    if topic == TOPIC_EVENT:
        _expect_parts(parts, 2, topic)
        return _decode_event(topic, _header(parts[1]))
    if topic == TOPIC_STATS:
        _expect_parts(parts, 2, topic)
        header = _header(parts[1])
        fields = {k: v for k, v in header.items() if k not in STATS_KEYS}
        return StatsMessage(topic, header, _str(header, "stream"), _num(header, "t"), fields)
    raise WireError(f"unknown topic {topic!r}")


def _decode_audio(topic: str, header: dict[str, Any], payload: bytes) -> AudioMessage:
    fmt = header.get("format")
    if not isinstance(fmt, str):
        raise WireError(f"header field 'format' must be a string, got {_short(fmt)}")
    width = sample_width(fmt)
    channels = _int(header, "channels", 1, _MAX_CHANNELS)
    n = _int(header, "samples", 0)
    nbytes = memoryview(payload).nbytes
    if nbytes != n * channels * width:
        raise WireError(
            f"{topic}: payload is {nbytes} bytes, header says {n} samples x {channels} ch x {width} B"
        )
    speech = header.get("speech")
    if not isinstance(speech, bool):
        raise WireError(f"header field 'speech' must be a bool, got {_short(speech)}")
    pcm = bytes(payload)
    return AudioMessage(
        topic=topic,
        header=header,
        stream=_str(header, "stream"),
        seq=_int(header, "seq", 0),
        pts=_int(header, "pts", 0),
        t=_num(header, "t"),
        rate=_int(header, "rate", 1, _MAX_RATE),
        channels=channels,
        format=fmt,
        samples=decode_pcm(pcm, channels, fmt),
        pcm=pcm,
        speech=speech,
    )


def _decode_event(topic: str, header: dict[str, Any]) -> EventMessage:
    kind = header.get("type")
    if not isinstance(kind, str) or not kind:
        raise WireError(f"event header field 'type' must be a non-empty string, got {_short(kind)}")
    seq = header.get("seq")
    if seq is not None:
        seq = _int(header, "seq", 0)
    fields = {k: v for k, v in header.items() if k not in EVENT_KEYS}
    return EventMessage(topic, header, _str(header, "stream"), kind, seq, _num(header, "t"), fields)


def _expect_parts(parts: list[bytes] | tuple[bytes, ...], count: int, topic: str) -> None:
    if len(parts) != count:
        raise WireError(f"{topic}: expected {count} message parts, got {len(parts)}")


def _text(part: bytes, what: str) -> str:
    try:
        return bytes(part).decode("utf-8")
    except (UnicodeDecodeError, TypeError) as e:
        raise WireError(f"{what} is not UTF-8 text: {e}") from None


def _header(part: bytes) -> dict[str, Any]:
    try:
        header = json.loads(_text(part, "header"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError; deep nesting recurses
        raise WireError(f"header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise WireError(f"header must be a JSON object, got {type(header).__name__}")
    v = header.get("v")
    if type(v) is not int or v != WIRE_VERSION:  # type() check: JSON true must not pass as 1
        raise WireError(f"unsupported wire version {v!r} (this client speaks v{WIRE_VERSION})")
    return header


def _str(header: dict[str, Any], key: str) -> str:
    value = header.get(key)
    if not isinstance(value, str):
        raise WireError(f"header field {key!r} must be a string, got {_short(value)}")
    return value


def _int(header: dict[str, Any], key: str, lo: int, hi: int | None = None) -> int:
    value = header.get(key)
    if type(value) is not int or value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise WireError(f"header field {key!r} must be an integer {bound}, got {_short(value)}")
    return value


def _num(header: dict[str, Any], key: str) -> float:
    value = header.get(key)
    try:
        # float() of a JSON integer beyond float range (a 401-digit ``t``) raises OverflowError
        number = float(cast(float, value)) if type(value) in (int, float) else math.nan
    except OverflowError:
        number = math.nan
    if not math.isfinite(number):
        raise WireError(f"header field {key!r} must be a finite number, got {_short(value)}")
    return number


def _short(value: Any) -> str:
    """``repr`` of a header value, cut to 40 characters: error messages stay one short line."""
    if type(value) is int and abs(value) > 10**30:
        return f"an integer of {len(str(abs(value)))} digits"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
