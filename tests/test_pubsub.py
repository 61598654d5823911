"""Publisher → ZeroMQ → Subscriber over real sockets: delivery, gaps, restarts, no back-pressure, listen."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from voxd.client import Subscriber
from voxd.commands.listen import listen
from voxd.errors import EX_DATAERR, EX_UNAVAILABLE, VoxdError
from voxd.publisher import Publisher
from voxd.wire import AudioMessage, EventMessage, StatsMessage, encode_pcm, float_to_s16

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(
        [str(ROOT), str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep),
}
LOOPBACK = "tcp://127.0.0.1:*"  # ZeroMQ picks a free port; Publisher.endpoints says which
RATE = 16000
WAIT_S = 10.0  # generous upper bounds: each wait returns as soon as its condition holds


def make_frames(count: int, channels: int = 1, n: int = 320, seed: int = 0) -> list[np.ndarray]:
    """``count`` float32 frames ``(channels, n)``, a little beyond ±1 so clipping is on the wire too."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1.1, 1.1, (channels, n)).astype(np.float32) for _ in range(count)]


def send(
    pub: Publisher, frames: list[np.ndarray], seqs: list[int] | None = None, topic: str = "audio"
) -> None:
    for i, (x, seq) in enumerate(zip(frames, seqs or range(len(frames)), strict=True)):
        pub.send_audio(
            x,
            seq=seq,
            pts=i * x.shape[1],
            t=time.time(),
            rate=RATE,
            speech=i % 2 == 0,
            side={"level_dbfs": -20.5},
            topic=topic,
        )


def recv_all(sub: Subscriber, idle_ms: int = 300) -> list[Any]:
    """Everything that arrives until the line has been quiet for ``idle_ms``."""
    out = []
    while (msg := sub.recv(timeout_ms=idle_ms)) is not None:
        out.append(msg)
    return out


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start Python subprocesses; any still running at the end of the test is killed."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(code: str, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            env=ENV,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=WAIT_S)


def wait_for(
    pub: Publisher, proc: subprocess.Popen[bytes] | None = None, topics: tuple[str, ...] = ("audio", "event")
) -> None:
    if not pub.wait_for_subscriber(WAIT_S, topics=topics):
        detail = ""
        if proc is not None:
            proc.kill()
            detail = proc.communicate()[1].decode(errors="replace")
        pytest.fail(f"no subscriber for {topics} within {WAIT_S} s {detail}")


# ------------------------------------------------------------------ a real subscriber, another process

SUBSCRIBER = r"""
import json, sys
from voxd.client import Subscriber
from voxd.wire import AudioMessage

endpoint, out = sys.argv[1], sys.argv[2]
pcm, seqs, events, streams = bytearray(), [], [], set()
with Subscriber(endpoint, topics=("audio", "event"), timeout_ms=10000) as sub:
    while (msg := sub.recv()) is not None:  # None: the publisher went quiet; report what we have
        streams.add(msg.stream)
        if isinstance(msg, AudioMessage):
            pcm += msg.pcm
            seqs.append(msg.seq)
        else:
            events.append(msg.type)
            if msg.type == "end_of_stream":
                break
    report = dict(sub.counters, seqs=seqs, events=events, streams=sorted(streams))
with open(out + ".pcm", "wb") as f:
    f.write(pcm)
with open(out + ".json", "w") as f:
    json.dump(report, f)
"""


@pytest.mark.parametrize("fmt", ["s16le", "f32le"])
def test_subscriber_in_another_process_gets_every_frame(fmt: str, tmp_path: Path, spawn: Any) -> None:
    frames = make_frames(100, channels=2)
    with Publisher([LOOPBACK], fmt=fmt) as pub:
        proc = spawn(SUBSCRIBER, pub.endpoints[0], str(tmp_path / "got"))
        wait_for(pub, proc)
        send(pub, frames)
        pub.send_event("end_of_stream", seq=len(frames) - 1)
        _, err = proc.communicate(timeout=WAIT_S)
        assert proc.returncode == 0, err.decode()
        assert pub.counters["audio_frames"] == 100 and pub.counters["events"] == 1
        stream = pub.stream
    report = json.loads((tmp_path / "got.json").read_text())
    assert report["seqs"] == list(range(100))
    assert (report["gaps"], report["missed"], report["restarts"], report["bad"]) == (0, 0, 0, 0)
    assert report["events"] == ["end_of_stream"] and report["streams"] == [stream]
    assert (tmp_path / "got.pcm").read_bytes() == b"".join(encode_pcm(x, fmt) for x in frames)


# ------------------------------------------------------------------------------ gaps, restarts, taps


def test_a_skipped_seq_is_reported_as_a_gap() -> None:
    with Publisher([LOOPBACK]) as pub, Subscriber(pub.endpoints[0], topics=("audio",)) as sub:
        wait_for(pub, topics=("audio",))
        seqs = [0, 1, 2, 5, 6, 10]
        send(pub, make_frames(len(seqs)), seqs)
        got = recv_all(sub)
    assert [m.seq for m in got] == seqs
    assert [m.gap for m in got] == [0, 0, 0, 2, 0, 3]
    assert (sub.gaps, sub.missed, sub.restarts) == (2, 5, 0)
    assert not any(m.restart for m in got)


def test_a_new_publisher_is_a_restart_not_a_gap(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/run/voxd/a"  # the directory does not exist yet: the publisher makes it
    with Subscriber(endpoint, topics=("audio",)) as sub:
        with Publisher([endpoint], stream_id="first") as pub:
            wait_for(pub, topics=("audio",))
            send(pub, make_frames(5), [10, 11, 12, 13, 14])
            first = recv_all(sub, idle_ms=200)
        with Publisher([endpoint]) as pub:  # a daemon restart: fresh stream id, seq starts over
            assert pub.stream != "first"
            # The subscriber reconnects on its own, but like any ZeroMQ socket it only finishes the
            # reconnection while its thread is inside a socket call: as a client's recv loop would be.
            deadline = time.monotonic() + WAIT_S
            while not pub.wait_for_subscriber(0.01, topics=("audio",)) and time.monotonic() < deadline:
                assert sub.recv(timeout_ms=10) is None
            assert pub.wait_for_subscriber(0, topics=("audio",)), "the subscriber did not reconnect"
            send(pub, make_frames(3))
            second = recv_all(sub, idle_ms=200)
    assert [m.seq for m in first] == [10, 11, 12, 13, 14]
    assert [(m.seq, m.restart, m.gap) for m in second] == [(0, True, 0), (1, False, 0), (2, False, 0)]
    assert {m.stream for m in second} == {pub.stream}
    assert (sub.restarts, sub.gaps, sub.missed) == (1, 0, 0)


def test_audio_does_not_deliver_taps_unless_asked() -> None:
    frames = make_frames(4)
    with Publisher([LOOPBACK]) as pub, Subscriber(pub.endpoints[0], topics=("audio",)) as sub:
        wait_for(pub, topics=("audio",))
        send(pub, frames, topic="audio.beam")
        send(pub, frames)
        pub.send_stats(frames=4)
        got = recv_all(sub)
    assert [(m.topic, m.seq) for m in got] == [("audio", i) for i in range(4)]

    with Publisher([LOOPBACK]) as pub, Subscriber(pub.endpoints[0], ("audio", "audio.beam", "stats")) as sub:
        wait_for(pub, topics=("audio", "audio.beam", "stats"))
        for i, x in enumerate(frames):  # interleaved topics, each with its own seq: no false gaps
            send(pub, [x], [i], topic="audio.beam")
            send(pub, [x], [i])
        pub.send_stats(frames=4, rtf=0.25)
        got = recv_all(sub)
    assert [m.topic for m in got] == ["audio.beam", "audio"] * 4 + ["stats"]
    assert isinstance(got[-1], StatsMessage) and got[-1].fields == {"frames": 4, "rtf": 0.25}
    assert isinstance(got[0], AudioMessage) and got[0].side == {"level_dbfs": -20.5}
    assert (sub.gaps, sub.bad) == (0, 0)


def test_malformed_messages_are_counted_and_skipped() -> None:
    with Publisher([LOOPBACK]) as pub, Subscriber(pub.endpoints[0], topics=("audio", "event")) as sub:
        wait_for(pub)
        pub._socket.send_multipart([b"audio", b'{"v":2}', b""])  # a future version: skipped, not fatal
        pub._socket.send_multipart([b"event", b"not json"])
        pub.send_event("speech_start", seq=7, prob=0.9)
        got = recv_all(sub)
    assert len(got) == 1 and isinstance(got[0], EventMessage)
    assert (got[0].type, got[0].seq, got[0].fields) == ("speech_start", 7, {"prob": 0.9})
    assert sub.bad == 2 and "JSON" in (sub.last_error or "")


# ------------------------------------------------------------------------------------ back-pressure


def test_a_subscriber_that_does_not_read_never_blocks_the_publisher() -> None:
    x = make_frames(1, channels=4, n=1600)[0]  # 12.8 kB per frame: far more than socket buffers hold
    count = 10_000
    with Publisher([LOOPBACK], hwm=10) as pub, Subscriber(pub.endpoints[0], ("audio",), hwm=10) as sub:
        wait_for(pub, topics=("audio",))
        start = time.monotonic()
        for seq in range(count):
            pub.send_audio(x, seq=seq, pts=seq * 1600, t=0.0, rate=RATE)
        elapsed = time.monotonic() - start
        received = len(recv_all(sub))  # now read what survived, then one more frame to expose the gap
        pub.send_audio(x, seq=count, pts=count * 1600, t=0.0, rate=RATE)
        last = sub.recv(timeout_ms=int(WAIT_S * 1000))
    assert elapsed < 5.0, f"publisher took {elapsed:.1f} s for {count} frames: it blocked"
    assert pub.counters["audio_frames"] == count + 1
    assert isinstance(last, AudioMessage) and last.seq == count
    assert received < count and sub.gaps >= 1
    assert received + 1 + sub.missed == count + 1  # every frame is either delivered or counted missing


def test_wait_for_subscriber_times_out_and_bind_failure_is_unavailable() -> None:
    with Publisher([LOOPBACK]) as pub:
        start = time.monotonic()
        assert pub.wait_for_subscriber(0.05) is False
        assert time.monotonic() - start < 1.0
        with pytest.raises(VoxdError, match=r"^output endpoint tcp://127\.0\.0\.1:\d+: ") as info:
            Publisher([pub.endpoints[0]])
    assert info.value.exit_status == EX_UNAVAILABLE


# ------------------------------------------------------------------------------------------ listen


def run_listen(**kw: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """``listen(**kw)`` on a thread (this thread keeps the publisher); result or exception in the dict."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["status"] = listen(**kw)
        except BaseException as e:  # handed to the test thread
            result["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


def test_listen_writes_a_wav_and_stops_on_end_of_stream(tmp_path: Path, capsys: Any) -> None:
    frames = make_frames(50)
    wav = tmp_path / "out.wav"
    with Publisher([LOOPBACK]) as pub:
        thread, result = run_listen(endpoint=pub.endpoints[0], out=str(wav), seconds=None)
        wait_for(pub)
        pub.send_event("speech_start", seq=0)
        send(pub, frames)
        pub.send_event("end_of_stream", seq=49)
        thread.join(WAIT_S)
    assert not thread.is_alive() and result == {"status": 0}
    info = sf.info(str(wav))
    assert (info.format, info.subtype, info.samplerate, info.channels) == ("WAV", "PCM_16", RATE, 1)
    data, _ = sf.read(str(wav), dtype="int16", always_2d=True)
    np.testing.assert_array_equal(data, float_to_s16(np.concatenate(frames, axis=1)).T)
    assert capsys.readouterr().err.strip() == (
        "received 50 frames (1.000 s, 1 ch, 16000 Hz), 0 gaps, 0 restarts, "
        "events: speech_start=1 end_of_stream=1"
    )


def test_listen_stops_after_seconds_exactly(tmp_path: Path, capsys: Any) -> None:
    frames = make_frames(40, channels=2)
    wav = tmp_path / "out.wav"
    with Publisher([LOOPBACK], fmt="f32le") as pub:
        thread, result = run_listen(endpoint=pub.endpoints[0], out=str(wav), seconds=0.25, quiet=True)
        wait_for(pub)
        send(pub, frames)  # 0.8 s on offer; listen must take 0.25 s and leave
        thread.join(WAIT_S)
    assert not thread.is_alive() and result == {"status": 0}
    data, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    assert sf.info(str(wav)).subtype == "FLOAT" and rate == RATE
    np.testing.assert_array_equal(data, np.concatenate(frames, axis=1)[:, :4000].T)
    assert capsys.readouterr().err == ""


def test_listen_refuses_a_format_change_and_keeps_what_it_has(tmp_path: Path, capsys: Any) -> None:
    wav = tmp_path / "out.wav"
    mono = make_frames(3)
    with Publisher([LOOPBACK]) as pub:
        thread, result = run_listen(endpoint=pub.endpoints[0], out=str(wav), seconds=None)
        wait_for(pub)
        send(pub, mono)
        send(pub, make_frames(1, channels=2), [3])
        thread.join(WAIT_S)
    error = result.get("error")
    assert isinstance(error, VoxdError) and error.exit_status == EX_DATAERR
    assert "format changed at seq 3 from 1 ch 16000 Hz s16le to 2 ch 16000 Hz s16le" in str(error)
    data, _ = sf.read(str(wav), dtype="int16", always_2d=True)
    np.testing.assert_array_equal(data, float_to_s16(np.concatenate(mono, axis=1)).T)
    assert capsys.readouterr().err.startswith("received 3 frames (0.060 s, 1 ch, 16000 Hz)")


LISTEN = (
    "import sys; from voxd.commands.listen import listen; "
    "sys.exit(listen(sys.argv[1], sys.argv[2] or None, None))"
)


def test_listen_to_stdout_pipes_raw_pcm(spawn: Any) -> None:
    frames = make_frames(20, channels=2)
    with Publisher([LOOPBACK]) as pub:
        proc = spawn(LISTEN, pub.endpoints[0], "")
        wait_for(pub, proc)
        send(pub, frames)
        pub.send_event("end_of_stream", seq=19)
        out, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0, err.decode()
    assert out == b"".join(encode_pcm(x, "s16le") for x in frames)
    assert err.decode().startswith("received 20 frames (0.400 s, 2 ch, 16000 Hz), 0 gaps, 0 restarts")


def test_listen_closes_the_wav_properly_on_sigint(tmp_path: Path, spawn: Any) -> None:
    frames = make_frames(25)
    wav = tmp_path / "out.wav"
    with Publisher([LOOPBACK]) as pub:
        proc = spawn(LISTEN, pub.endpoints[0], str(wav))
        wait_for(pub, proc)
        send(pub, frames)
        deadline = time.monotonic() + WAIT_S  # the data is on disk before the header is final
        while (not wav.exists() or wav.stat().st_size < 25 * 320 * 2) and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0, err.decode()
    data, _ = sf.read(str(wav), dtype="int16", always_2d=True)
    np.testing.assert_array_equal(data, float_to_s16(np.concatenate(frames, axis=1)).T)
    assert err.decode().startswith("received 25 frames (0.500 s, 1 ch, 16000 Hz), 0 gaps, 0 restarts")
