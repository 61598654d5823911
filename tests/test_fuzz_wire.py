"""Fuzzing what a peer can send: ``wire.decode`` and the :class:`~voxd.client.Subscriber` (issue 16, class 6).

The client library must never raise on a peer's bytes, only skip and count them: a consumer that runs
for months cannot be taken down by one malformed header. ``decode`` raises :class:`WireError` and
nothing else; ``Subscriber.recv`` skips whatever does not decode and counts it in ``bad``; and
``voxd listen`` (a real process) keeps writing through it. The peer is a raw ZeroMQ PUB socket: a
foreign or hostile publisher is exactly what a real one can be.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT
from voxd.client import Subscriber
from voxd.wire import AUDIO_KEYS, EVENT_KEYS, AudioMessage, EventMessage, StatsMessage, WireError, decode

# JSON values a hostile or buggy peer may put anywhere in a header: huge integers (a 401-digit one
# overflowed float()), non-finite floats, deep nesting, wrong types.
huge_ints = (st.integers(min_value=-(10**400), max_value=10**400)
             | st.sampled_from([2**63, 2**1024, -(10**400), 10**400]))
hostile_scalars = (st.none() | st.booleans() | huge_ints | st.integers(-3, 3) | st.floats()
                   | st.text(max_size=8))
json_values = hostile_scalars | st.recursive(
    hostile_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
topics = st.sampled_from([b"audio", b"audio.x", b"event", b"stats"] * 4 + [b"audio.", b"x", b"\xff"])


VALID: dict[str, Any] = {"stream": "s", "seq": 1, "pts": 0, "t": 1.5, "rate": 16000, "channels": 1,
                         "format": "s16le", "samples": 1, "speech": False, "type": "reload"}


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    """A JSON header with the real keys, most of them valid, so that decoding gets past its first checks
    and each field's own check is exercised with hostile values; sometimes raw bytes."""
    if draw(st.integers(0, 19)) == 0:
        return draw(st.binary(max_size=64))
    header: dict[str, Any] = {"v": draw(st.sampled_from([1] * 12 + [2, True, 1.0]))}
    for k in sorted((AUDIO_KEYS | EVENT_KEYS) - {"v"}):
        roll = draw(st.integers(0, 9))
        if roll < 7:
            header[k] = VALID[k]
        elif roll < 9:
            header[k] = draw(json_values)
    header.update(draw(st.dictionaries(st.text(max_size=4), json_values, max_size=2)))
    return json.dumps(header).encode()  # Python's json writes NaN/Infinity and any integer: a peer may too


@st.composite
def messages(draw: st.DrawFn) -> list[bytes]:
    """Multipart messages, usually with the part count and payload size the topic's header asks for."""
    topic = draw(topics)
    parts = [topic, draw(headers())]
    if draw(st.integers(0, 9)) == 0:
        return parts + draw(st.lists(st.binary(max_size=8), max_size=2))
    if topic.startswith(b"audio"):
        parts.append(draw(st.sampled_from([b"\0\0", b"\0\0\0\0"]) | st.binary(max_size=8)))
    return parts


@given(messages())
@settings(max_examples=400)
def test_decode_raises_only_wire_error(parts: list[bytes]) -> None:
    try:
        msg = decode(parts)
    except WireError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(msg, AudioMessage | EventMessage | StatsMessage)
    assert np.isfinite(msg.t)


def test_a_401_digit_time_is_a_wire_error_not_an_overflow() -> None:
    header = b'{"v":1,"stream":"s","type":"x","seq":null,"t":' + b"9" * 401 + b"}"
    try:
        decode([b"event", header])
    except WireError as e:
        assert "'t'" in str(e)
    else:
        raise AssertionError("decoded a 401-digit time")


def _good_frame(seq: int) -> list[bytes]:
    header = {"v": 1, "stream": "peer", "seq": seq, "pts": seq * 2, "t": 1.0, "rate": 16000, "channels": 1,
              "format": "s16le", "samples": 2, "speech": False}
    return [b"audio", json.dumps(header).encode(), np.array([seq, -seq], "<i2").tobytes()]


def _connected(pub: zmq.Socket[bytes], sub: Subscriber) -> None:
    """Send probe frames until the subscriber gets one (ZeroMQ's slow joiner), then drain."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pub.send_multipart(_good_frame(0))
        if sub.recv(timeout_ms=50) is not None:
            while sub.recv(timeout_ms=50) is not None:
                pass
            return
    raise AssertionError("the subscriber never connected")


@given(st.lists(messages(), min_size=1, max_size=8))
@settings(max_examples=40)
def test_subscriber_skips_and_counts_what_it_cannot_decode(batch: list[list[bytes]]) -> None:
    """A raw PUB sends random messages then one good frame: recv never raises, the good frame arrives."""
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    try:
        with Subscriber(f"tcp://127.0.0.1:{port}", topics=("audio", "event", "stats")) as sub:
            _connected(pub, sub)
            bad_before = sub.bad
            for parts in batch:
                pub.send_multipart(parts)
            pub.send_multipart(_good_frame(7))
            got: list[Any] = []
            while (msg := sub.recv(timeout_ms=500)) is not None:
                got.append(msg)
                if isinstance(msg, AudioMessage) and msg.stream == "peer" and msg.seq == 7:
                    break
            assert got and isinstance(got[-1], AudioMessage) and got[-1].seq == 7, got
            np.testing.assert_array_equal(got[-1].pcm_array()[:, 0], [7, -7])
            wanted = [p for p in batch if p[0] in (b"audio", b"event", b"stats")]
            assert sub.bad - bad_before == sum(1 for p in wanted if _fails(p))
    finally:
        pub.close(linger=0)


def _fails(parts: list[bytes]) -> bool:
    try:
        decode(parts)
    except WireError:
        return True
    return False


def test_listen_survives_a_malformed_header(tmp_path: Path) -> None:
    """Through the real ``voxd listen``: a header whose ``t`` has 401 digits used to raise OverflowError
    out of ``Subscriber.recv`` and kill it. Now it is skipped and counted, and the audio around it is
    written."""
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    out = tmp_path / "out.wav"
    bad = _good_frame(1)
    bad[1] = bad[1].replace(b'"t": 1.0', b'"t": ' + b"9" * 401)
    assert b"9" * 401 in bad[1]
    proc = subprocess.Popen([sys.executable, "-m", "voxd", "listen", f"tcp://127.0.0.1:{port}", "--out",
                             str(out), "--seconds", "0.0125"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        # until listen has connected, frames are lost (slow joiner): keep the stream going meanwhile,
        # a malformed frame before every good one, until listen has written its 0.0125 s (100 frames)
        seq = 0
        while proc.poll() is None and seq < 20000:
            pub.send_multipart(bad)
            pub.send_multipart(_good_frame(seq))
            seq += 1
            time.sleep(0.002)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        pub.close(linger=0)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "malformed skipped" in err, err
    data, rate = sf.read(out, dtype="int16")
    assert rate == 16000 and len(data) == 200
