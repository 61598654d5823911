"""Wire format v1: round trips, the exact int16 conversion, and malformed input (no sockets here)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from voxd.frame import header_side
from voxd.wire import (
    AUDIO_KEYS,
    EVENT_KEYS,
    STATS_KEYS,
    AudioMessage,
    EventMessage,
    StatsMessage,
    WireError,
    decode,
    decode_pcm,
    encode_audio,
    encode_event,
    encode_pcm,
    encode_stats,
    float_to_s16,
)

FMTS = ["s16le", "f32le"]

# ------------------------------------------------------------------------------------ strategies

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | names
)
finite_t = st.floats(0, 4e9, allow_nan=False)


@st.composite
def audio_arrays(draw: st.DrawFn, lo: float = -1.5, hi: float = 1.5) -> np.ndarray:
    """float32 (channels 1-8, samples 0-2000) with values in [lo, hi] (beyond ±1 to exercise clipping)."""
    shape = draw(st.tuples(st.integers(1, 8), st.integers(0, 2000)))
    elements = st.floats(lo, hi, width=32, allow_nan=False)
    return draw(hnp.arrays(np.float32, shape, elements=elements))


def side_values(reserved: frozenset[str]) -> st.SearchStrategy[dict[str, Any]]:
    scalars = st.booleans() | st.integers(-(2**31), 2**31) | st.floats(-1e6, 1e6, allow_nan=False) | names
    return st.dictionaries(names.filter(lambda k: k not in reserved), scalars, max_size=4)


# ---------------------------------------------------------------------------------- float_to_s16


def test_float_to_s16_rounds_half_to_even_and_clips() -> None:
    x = np.array(
        [[0.0, 0.5, 1.5, 2.5, -0.5, -1.5, 32767, 32767.5, 40000, -32768, -32769, -1e9]], dtype=np.float32
    ) / np.float32(32768)
    expected = [[0, 0, 2, 2, 0, -2, 32767, 32767, 32767, -32768, -32768, -32768]]
    np.testing.assert_array_equal(float_to_s16(x), expected)


def test_float_to_s16_full_scale_and_non_finite() -> None:
    x = np.array([1.0, -1.0, np.inf, -np.inf, np.nan, 3.4e38, -3.4e38], dtype=np.float32)
    out = float_to_s16(x)
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out, [32767, -32768, 32767, -32768, 0, 32767, -32768])


@given(audio_arrays(-4.0, 4.0))
@settings(max_examples=60, deadline=None)
def test_float_to_s16_is_clipped_rint(x: np.ndarray) -> None:
    ref = np.clip(np.rint(x.astype(np.float64) * 32768), -32768, 32767).astype(np.int16)
    out = float_to_s16(x)
    assert out.shape == x.shape
    np.testing.assert_array_equal(out, ref)


# ---------------------------------------------------------------------------------------- PCM


@pytest.mark.parametrize("fmt", FMTS)
def test_pcm_is_interleaved_little_endian(fmt: str) -> None:
    x = np.array([[0.25, 0.5], [-0.25, -0.5]], dtype=np.float32)  # 2 channels, 2 samples
    buf = encode_pcm(x, fmt)
    dtype = "<i2" if fmt == "s16le" else "<f4"
    scale = 32768 if fmt == "s16le" else 1
    np.testing.assert_array_equal(np.frombuffer(buf, dtype), np.array([0.25, -0.25, 0.5, -0.5]) * scale)


@given(audio_arrays(), st.sampled_from(FMTS))
@settings(max_examples=60, deadline=None)
def test_pcm_round_trip(x: np.ndarray, fmt: str) -> None:
    buf = encode_pcm(x, fmt)
    width = 2 if fmt == "s16le" else 4
    assert len(buf) == x.size * width
    y = decode_pcm(buf, x.shape[0], fmt)
    assert y.dtype == np.float32 and y.shape == x.shape and y.flags.c_contiguous and y.flags.writeable
    if fmt == "f32le":
        np.testing.assert_array_equal(y, x)
    else:
        np.testing.assert_array_equal(y * 32768, float_to_s16(x))
        inside = np.abs(x) <= 1
        assert np.all(np.abs(y - x)[inside] <= 1 / 32768)


def test_decode_pcm_rejects_partial_frames() -> None:
    with pytest.raises(WireError, match="whole number"):
        decode_pcm(b"\x00" * 6, 2, "s16le")


# ------------------------------------------------------------------------------------- messages


@given(
    x=audio_arrays(),
    fmt=st.sampled_from(FMTS),
    stream=names,
    seq=st.integers(0, 2**53),
    pts=st.integers(0, 2**53),
    t=finite_t,
    rate=st.integers(1, 192000),
    speech=st.booleans(),
    side=side_values(AUDIO_KEYS),
    tap=st.none() | st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True),
)
@settings(max_examples=80, deadline=None)
def test_audio_round_trip(
    x: np.ndarray,
    fmt: str,
    stream: str,
    seq: int,
    pts: int,
    t: float,
    rate: int,
    speech: bool,
    side: dict[str, Any],
    tap: str | None,
) -> None:
    topic = "audio" if tap is None else f"audio.{tap}"
    parts = encode_audio(
        x, stream=stream, seq=seq, pts=pts, t=t, rate=rate, fmt=fmt, speech=speech, side=side, topic=topic
    )
    assert len(parts) == 3 and parts[0] == topic.encode()
    msg = decode(parts)
    assert isinstance(msg, AudioMessage)
    assert (msg.topic, msg.stream, msg.seq, msg.pts, msg.t, msg.rate) == (topic, stream, seq, pts, t, rate)
    assert (msg.channels, msg.format, msg.speech, msg.n) == (x.shape[0], fmt, speech, x.shape[1])
    assert (msg.gap, msg.restart) == (0, False)
    assert msg.header["v"] == 1 and msg.header["samples"] == x.shape[1]
    assert msg.side == header_side(side)
    assert msg.pcm == parts[2] == encode_pcm(x, fmt)
    if fmt == "f32le":
        np.testing.assert_array_equal(msg.samples, x)
    else:
        np.testing.assert_array_equal(msg.samples * 32768, float_to_s16(x))
        np.testing.assert_array_equal(msg.pcm_array(), float_to_s16(x).T)


def test_audio_header_is_compact_and_explicit_fields_win() -> None:
    x = np.zeros((1, 4), np.float32)
    parts = encode_audio(
        x,
        stream="s",
        seq=3,
        pts=12,
        t=1.5,
        rate=16000,
        fmt="s16le",
        speech=True,
        side={"speech": False, "seq": 99, "doa_deg": np.float64(12.345678), "noise.psd": np.ones(3)},
    )
    assert b" " not in parts[1]
    header = json.loads(parts[1])
    assert header == {
        "v": 1,
        "stream": "s",
        "seq": 3,
        "pts": 12,
        "t": 1.5,
        "rate": 16000,
        "channels": 1,
        "format": "s16le",
        "samples": 4,
        "speech": True,
        "doa_deg": 12.3457,
    }


def test_non_finite_values_travel_as_null() -> None:
    parts = encode_stats(stream="s", t=1.0, rtf=float("nan"), p99=[1.0, float("inf")])
    assert b"NaN" not in parts[1] and b"Infinity" not in parts[1]
    assert json.loads(parts[1])["rtf"] is None


@given(
    kind=names,
    stream=names,
    seq=st.none() | st.integers(0, 2**53),
    t=finite_t,
    fields=st.dictionaries(names.filter(lambda k: k not in EVENT_KEYS), json_scalars, max_size=5),
)
@settings(max_examples=60, deadline=None)
def test_event_round_trip(kind: str, stream: str, seq: int | None, t: float, fields: dict[str, Any]) -> None:
    parts = encode_event(kind, stream=stream, seq=seq, t=t, **fields)
    assert len(parts) == 2 and parts[0] == b"event"
    msg = decode(parts)
    assert isinstance(msg, EventMessage)
    assert (msg.type, msg.stream, msg.seq, msg.t, msg.fields) == (kind, stream, seq, t, fields)


@given(
    stream=names,
    t=finite_t,
    fields=st.dictionaries(names.filter(lambda k: k not in STATS_KEYS), json_scalars, max_size=5),
)
@settings(max_examples=60, deadline=None)
def test_stats_round_trip(stream: str, t: float, fields: dict[str, Any]) -> None:
    msg = decode(encode_stats(stream=stream, t=t, **fields))
    assert isinstance(msg, StatsMessage)
    assert (msg.stream, msg.t, msg.fields) == (stream, t, fields)


def test_event_and_stats_default_to_now() -> None:
    import time

    before = time.time()
    event = decode(encode_event("reload", stream="s", seq=None))
    stats = decode(encode_stats(stream="s", frames=1))
    assert isinstance(event, EventMessage) and isinstance(stats, StatsMessage)
    assert before <= event.t <= time.time() and before <= stats.t <= time.time()


def test_encode_rejects_bad_input() -> None:
    x = np.zeros((1, 4), np.float32)
    kw: dict[str, Any] = dict(stream="s", seq=0, pts=0, t=0.0, rate=16000, speech=False)
    with pytest.raises(WireError, match="unknown sample format"):
        encode_audio(x, fmt="s24le", **kw)
    with pytest.raises(WireError, match="not an audio topic"):
        encode_audio(x, fmt="s16le", topic="event", **kw)
    with pytest.raises(WireError, match="channels"):
        encode_audio(np.zeros(4, np.float32), fmt="s16le", **kw)
    with pytest.raises(WireError, match="reserved"):
        encode_event("x", stream="s", seq=None, v=2)
    with pytest.raises(WireError, match="non-empty"):
        encode_event("", stream="s", seq=None)


# ------------------------------------------------------------------------------------ malformed


def _audio(**change: Any) -> list[bytes]:
    header = {
        "v": 1,
        "stream": "s",
        "seq": 0,
        "pts": 0,
        "t": 1.0,
        "rate": 16000,
        "channels": 1,
        "format": "s16le",
        "samples": 2,
        "speech": False,
        **change,
    }
    header = {k: v for k, v in header.items() if v is not _DROP}
    return [b"audio", json.dumps(header).encode(), b"\x00" * 4]


_DROP = object()


@pytest.mark.parametrize(
    ("parts", "match"),
    [
        ([b"audio"], "2 or 3 message parts"),
        (_audio()[:2], "expected 3 message parts"),
        ([b"event", b'{"v":1,"stream":"s","type":"x","seq":null,"t":1}', b""], "expected 2 message parts"),
        ([b"audio", b"{not json", b""], "not valid JSON"),
        ([b"audio", b"\xff\xfe", b""], "not UTF-8"),
        ([b"\xff", b"{}"], "topic is not UTF-8"),
        ([b"audio", b"[1, 2]", b""], "JSON object"),
        ([b"audio", b"[" * 100_000, b""], "not valid JSON"),
        ([b"video", b'{"v":1}'], "unknown topic"),
        ([b"audiox", b'{"v":1}', b""], "unknown topic"),
        (_audio(v=2), "wire version 2"),
        (_audio(v=True), "wire version True"),
        (_audio(v=_DROP), "wire version None"),
        (_audio(format="s24le"), "unknown sample format"),
        (_audio(format=None), "'format' must be a string"),
        (_audio(samples=3), "payload is 4 bytes"),
        (_audio(channels=0), "'channels'"),
        (_audio(seq=-1), "'seq'"),
        (_audio(seq=1.0), "'seq'"),
        (_audio(pts=_DROP), "'pts'"),
        (_audio(rate=0), "'rate'"),
        (_audio(t="now"), "'t'"),
        (_audio(speech=1), "'speech'"),
        (_audio(stream=7), "'stream'"),
        ([b"event", b'{"v":1,"stream":"s","seq":null,"t":1}'], "'type'"),
        ([b"event", b'{"v":1,"stream":"s","type":"x","seq":"3","t":1}'], "'seq'"),
        ([b"stats", b'{"v":1,"stream":"s"}'], "'t'"),
    ],
)
def test_malformed_messages_raise_wire_error(parts: list[bytes], match: str) -> None:
    with pytest.raises(WireError, match=match) as info:
        decode(parts)
    assert "\n" not in str(info.value)


@given(
    st.lists(st.binary(max_size=64) | st.sampled_from([b"audio", b"event", b"stats", b'{"v":1}']), max_size=4)
)
@settings(max_examples=200, deadline=None)
def test_decode_never_fails_other_than_wire_error(parts: list[bytes]) -> None:
    try:
        msg = decode(parts)
    except WireError:
        return
    assert isinstance(msg, AudioMessage | EventMessage | StatsMessage)


@given(
    st.dictionaries(
        st.sampled_from(sorted(AUDIO_KEYS)),
        st.none() | st.booleans() | st.integers(-2, 3) | st.floats() | st.text(max_size=6),
    ),
    st.binary(max_size=16),
)
@settings(max_examples=200, deadline=None)
def test_decode_fuzzed_audio_headers(header: dict[str, Any], payload: bytes) -> None:
    raw = json.dumps({"v": 1, **header}).encode()  # Python's json writes NaN; decode must cope
    try:
        msg = decode([b"audio", raw, payload])
    except WireError:
        return
    assert isinstance(msg, AudioMessage) and math.isfinite(msg.t)
    assert len(msg.pcm) == msg.n * msg.channels * (2 if msg.format == "s16le" else 4)
